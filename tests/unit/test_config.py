"""Configuration loading, validation, and the example files in configs/."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from snooze import config as cfg

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_original() -> None:
    s = cfg.load(None, "groupmanager")
    assert (s.heartbeat.interval, s.heartbeat.timeout, s.cluster.session_timeout) == (3.0, 10.0, 10.0)
    assert s.node.port == 5001
    assert cfg.load(None, "bootstrap").node.port == 5000


def test_unknown_option_section_and_wrong_type_are_errors(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="unknown option 'bogus'"):
        cfg.from_dict({"node": {"bogus": 1}})
    with pytest.raises(cfg.ConfigError, match=r"unknown section \[nope\]"):
        cfg.from_dict({"nope": {}})
    with pytest.raises(cfg.ConfigError, match=r"\[node\] port: expected int"):
        cfg.from_dict({"node": {"port": "5000"}})
    with pytest.raises(cfg.ConfigError, match="interval < timeout"):
        cfg.from_dict({"heartbeat": {"interval": 5, "timeout": 2}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(cfg.ConfigError, match="bad.toml"):
        cfg.load(bad, "bootstrap")
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "missing.toml", "bootstrap")


def test_ids_are_stable_across_restarts_and_distinct_per_port() -> None:
    a = cfg.from_dict({"node": {"port": 5010}})
    b = cfg.from_dict({"node": {"port": 5010}})
    c = cfg.from_dict({"node": {"port": 5011}})
    assert a.node_id("localcontroller") == b.node_id("localcontroller") != c.node_id("localcontroller")
    assert a.node_id("localcontroller") != a.node_id("groupmanager")
    assert cfg.from_dict({"node": {"id": "lc-7"}}).node_id("localcontroller") == "lc-7"


def test_default_ids_differ_between_machines_that_share_a_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    s = cfg.from_dict({"node": {"port": 5010, "hostname": "node"}})
    monkeypatch.setattr(cfg, "machine_identity", lambda: "4c4c4544004a3510804ab4c04f4e4e32")
    first = s.node_id("localcontroller")
    monkeypatch.setattr(cfg, "machine_identity", lambda: "0f7c5e4ae0a94a4b9c1b2b8d3f0f5e11")
    assert s.node_id("localcontroller") != first
    monkeypatch.setattr(cfg, "machine_identity", lambda: "4c4c4544004a3510804ab4c04f4e4e32")
    assert s.node_id("localcontroller") == first


def test_machine_identity_is_the_machine_id_else_the_host_name(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.write_text("")
    assert cfg.machine_identity((missing, empty, machine_id)) == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert cfg.machine_identity((missing, empty)) == socket.gethostname()


@pytest.mark.parametrize("role", ["bootstrap", "groupmanager", "localcontroller"])
def test_configs_directory_documents_every_option_with_its_default(role: str) -> None:
    text = (ROOT / "configs" / f"{role}.toml").read_text()
    assert text == cfg.example_config(role), "regenerate with: snooze-<role> --print-example-config"
    # and it loads back to the defaults
    loaded = cfg.load(ROOT / "configs" / f"{role}.toml", role)
    assert cfg.to_dict(loaded, role) == cfg.to_dict(cfg.load(None, role), role)


def test_table_keys_with_dots_survive_a_round_trip(tmp_path: Path) -> None:
    # "m1.small" must stay one key: bare, TOML would read it as the table m1 with a key small.
    path = tmp_path / "bootstrap.toml"
    path.write_text(cfg.example_config("bootstrap"))
    assert set(cfg.load(path, "bootstrap").ec2.instance_types) == {"m1.small", "m1.medium", "m1.large"}
