"""Several cluster keys: the envelope accepted under any key a process accepts and signed with
one; the keyring that names keys by fingerprint only; the options; and SIGHUP's reload, which
takes the new keys and nothing else, and keeps the old keys when the config is bad."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from snooze import config as cfg
from snooze.heartbeat import HeartbeatEndpoint
from snooze.http import InternalEndpoint, new_app
from snooze.protocol import BadSignature, Keyring, decode, encode, fingerprint
from snooze.rpc import RpcClient
from snooze.service import Service

OLD, NEW, OTHER = b"old-key-0123456789", b"new-key-9876543210", b"someone-else"


def test_decode_accepts_a_message_signed_with_any_accepted_key() -> None:
    accepted = (NEW, OLD)
    for key in accepted:
        env = decode(accepted, encode(key, "gm.heartbeat", "gm-1", 3, {"n": 1}))
        assert (env.kind, env.sender, env.epoch, env.body) == ("gm.heartbeat", "gm-1", 3, {"n": 1})
    with pytest.raises(BadSignature):
        decode(accepted, encode(OTHER, "gm.heartbeat", "gm-1", 3))
    with pytest.raises(BadSignature):
        decode((), encode(OLD, "k", "s", 1))  # no key accepted: nothing is authentic
    assert decode(OLD, encode(OLD, "k", "s", 1)).kind == "k", "one key, as before"
    assert decode([OLD], encode(OLD, "k", "s", 1)).kind == "k"


def test_a_keyring_signs_with_one_key_and_accepts_it_first_then_the_others_once() -> None:
    ring = Keyring(OLD, [NEW, OLD, NEW, b""])
    assert ring.signing == OLD and ring.accepted == (OLD, NEW)
    assert decode(ring.accepted, encode(ring.signing, "k", "s", 1)).kind == "k"
    assert ring.describe() == {"signing": fingerprint(OLD), "accepted": [fingerprint(OLD), fingerprint(NEW)]}
    assert fingerprint(OLD) == hashlib.sha256(OLD).hexdigest()[:8]
    with pytest.raises(ValueError):
        Keyring(b"")


def test_replacing_keys_says_what_changed_by_fingerprint_only() -> None:
    ring = Keyring(OLD)
    assert ring.replace(OLD, [NEW]) == [f"also accepting {fingerprint(NEW)}"]
    assert ring.replace(NEW, [OLD]) == [f"signing with key {fingerprint(NEW)} (was {fingerprint(OLD)})"]
    assert ring.replace(NEW) == [f"no longer accepting {fingerprint(OLD)}"]
    assert ring.replace(NEW) == []
    assert OLD.decode() not in repr(ring) and NEW.decode() not in repr(ring)


def test_the_endpoints_and_the_rpc_client_share_a_process_keyring() -> None:
    ring = Keyring(OLD)
    internal = InternalEndpoint(new_app(), ring, "me", lambda: 0)
    heartbeat = HeartbeatEndpoint(ring, "me")
    rpc = RpcClient(ring, "me")
    ring.replace(NEW, [OLD])
    assert internal.keys.signing == heartbeat.keys.signing == rpc.keys.signing == NEW
    assert HeartbeatEndpoint(OLD, "me").keys.accepted == (OLD,), "a bare key is a keyring of one"


def test_accept_keys_and_key_file_options(tmp_path: Path) -> None:
    assert cfg.Settings().cluster.accept_keys == [] and cfg.Settings().cluster.key_file == ""
    assert cfg.from_dict({"cluster": {"accept_keys": ["a", "b"]}}).cluster.accept_keys == ["a", "b"]
    with pytest.raises(cfg.ConfigError, match=r"\[cluster\] accept_keys"):
        cfg.from_dict({"cluster": {"accept_keys": ["a", ""]}})
    with pytest.raises(cfg.ConfigError, match=r"\[cluster\] key must not be empty"):
        cfg.from_dict({"cluster": {"key": ""}})
    keys = tmp_path / "cluster-keys.toml"
    keys.write_text('key = "from-the-file"\naccept_keys = ["the-next-one"]\n')
    config = tmp_path / "gm.toml"
    config.write_text(f'[cluster]\nkey = "in-the-config"\nkey_file = "{keys}"\n')
    s = cfg.load(config, "groupmanager", {"cluster.key": "from-the-environment"})
    assert (s.cluster.key, s.cluster.accept_keys) == ("from-the-file", ["the-next-one"])
    keys.write_text('key = "unterminated\n')
    with pytest.raises(cfg.ConfigError, match=r"\[cluster\] key_file") as bad:
        cfg.load(config, "groupmanager")
    assert "unterminated" not in str(bad.value), "a key file's error never quotes it"
    keys.write_text('key = "k"\nzookeeper = "x"\n')
    with pytest.raises(cfg.ConfigError, match="nothing else"):
        cfg.load(config, "groupmanager")
    keys.unlink()
    with pytest.raises(cfg.ConfigError, match="cannot read it"):
        cfg.load(config, "groupmanager")


class _GroupManager(Service):
    role = "groupmanager"


def _config(path: Path, key: str, accept: list[str], **node: object) -> None:
    s = cfg.from_dict({"cluster": {"key": key, "accept_keys": accept}, "node": {"port": 5099, **node}})
    path.write_text(cfg.render_toml(s, "groupmanager", comments=False))


def test_sighup_reload_takes_the_keys_and_only_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "gm.toml"
    _config(config, OLD.decode(), [])
    service = _GroupManager(cfg.load(config, "groupmanager"))
    service.config_file = str(config)
    caplog.set_level(logging.INFO, logger="snooze.service")

    _config(config, OLD.decode(), [NEW.decode()], http_idle_timeout=99.0)
    assert service.reload()
    assert service.keys.signing == OLD and service.keys.accepted == (OLD, NEW)
    assert service.rpc.keys is service.keys and service.heartbeat.keys is service.keys
    assert service.internal.keys is service.keys
    assert service.health()[1]["keys"] == {"signing": fingerprint(OLD), "accepted": [fingerprint(OLD), fingerprint(NEW)]}
    assert service.settings.node.http_idle_timeout == 60.0, "only the keys are taken"
    text = caplog.text
    assert f"also accepting {fingerprint(NEW)}" in text and "node.http_idle_timeout" in text
    assert OLD.decode() not in text and NEW.decode() not in text

    caplog.clear()
    config.write_text(config.read_text().replace("[cluster]", "[cluster]\nbogus = 1"))
    assert not service.reload()
    assert service.keys.accepted == (OLD, NEW), "a bad config leaves the keys as they were"
    assert "stay as they were" in caplog.text and OLD.decode() not in caplog.text

    _config(config, NEW.decode(), [])
    assert service.reload() and service.keys.accepted == (NEW,)
    assert service.settings.cluster.key == NEW.decode()


def test_reload_without_a_config_file_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    service = _GroupManager(cfg.from_dict({"cluster": {"key": OLD.decode()}, "node": {"port": 5099}}))
    assert not service.reload()
    assert service.keys.accepted == (OLD,) and "without --config" in caplog.text
