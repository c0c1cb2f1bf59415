"""The local cluster's own bookkeeping, without starting it: its per-cluster key and private
files, stale state dirs, which PIDs it may signal, port checks, log separators, and
``snooze cluster up --help``."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snooze import config as cfg
from snooze.cli import build_parser
from snooze.dev.localcluster import ClusterError, ClusterOptions, LocalCluster, stop_manifest
from snooze.dev.zookeeper import ZooKeeperServer, free_port
from snooze.procs import alive, open_log
from tests.support import port_range, wait_for


def planned(state: Path, **kw: object) -> LocalCluster:
    """A cluster prepared and planned (configs written) but not started."""
    cluster = LocalCluster(state, ClusterOptions(base_port=port_range(4), gms=2, lcs=1, **kw))  # type: ignore[arg-type]
    cluster.prepare()
    cluster.zk = ZooKeeperServer(state / "zookeeper", free_port())  # never started: plan() needs its address only
    cluster.processes = cluster.plan()
    cluster.write_manifest()
    return cluster


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_each_cluster_has_its_own_key_in_private_files(tmp_path: Path) -> None:
    a, b = planned(tmp_path / "a"), planned(tmp_path / "b")
    assert re.fullmatch(r"[0-9a-f]{64}", a.options.key), "256 random bits"
    assert a.options.key != b.options.key
    assert a.options.bmc_password != b.options.bmc_password
    assert a.options.key != cfg.Settings().cluster.key, "never the well-known default"
    for cluster in (a, b):
        assert mode(cluster.state_dir) == 0o700 and mode(cluster.state_dir / "config") == 0o700
        for spec in cluster.processes:
            config = Path(spec["config"])
            assert mode(config) == 0o600, config
            assert cfg.load(config, spec["role"]).cluster.key == cluster.options.key, "the roles get it"
        manifest = cluster.manifest_path.read_text()
        assert mode(cluster.manifest_path) == 0o600
        assert cluster.options.key not in manifest and cluster.options.bmc_password not in manifest
        assert "key" not in json.loads(manifest)["options"]


def test_files_left_wider_by_an_earlier_version_are_made_private(tmp_path: Path) -> None:
    state = tmp_path / "old"
    (state / "config").mkdir(parents=True)
    os.chmod(state, 0o755)
    old = state / "config" / "gm-1.toml"
    old.write_text('[cluster]\nkey = "snooze-local-cluster-key"\n')
    os.chmod(old, 0o644)
    cluster = planned(state)
    assert mode(state) == 0o700 and mode(old) == 0o600
    assert "snooze-local-cluster-key" not in old.read_text()
    assert cluster.options.key in old.read_text()


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A live process whose command line carries a marker, like one of our roles and its config."""
    marker = str(tmp_path / "config" / "gm-9.toml")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        yield proc, marker
    finally:
        proc.kill()
        proc.wait()


def write_manifest(state: Path, processes: list[dict[str, object]], **extra: object) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "cluster.json"
    path.write_text(json.dumps({"bootstrapUrl": "http://127.0.0.1:1", "processes": processes, **extra}))
    return path


def test_a_stale_state_dir_is_cleaned_up(tmp_path: Path) -> None:
    """Recorded processes gone: one a zombie nobody reaps (kill(pid, 0) still succeeds), one PID
    now used by another program (this test's own process). Both count as gone."""
    state = tmp_path / "stale"
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(state / "config/gm-1.toml")])
    zombie.kill()
    try:
        wait_for(lambda: not alive(zombie.pid), 10, "the killed process to become a zombie")
        os.kill(zombie.pid, 0)  # still there, as a zombie: nobody reaped it
        manifest = write_manifest(state, [
            {"role": "groupmanager", "id": "gm-1", "pid": zombie.pid, "config": str(state / "config/gm-1.toml")},
            {"role": "bootstrap", "id": "bootstrap-1", "pid": os.getpid(), "config": str(state / "config/b.toml")},
        ], zookeeperPid=os.getppid(), zookeeperDataDir=str(state / "zookeeper"))
        (state / "config").mkdir()
        (state / "config" / "gm-1.toml").write_text('key = "old"')
        cluster = LocalCluster(state, ClusterOptions(base_port=port_range(8)))
        assert cluster.running_processes() == []
        assert cluster.prepare() is True
        assert not manifest.exists() and not (state / "config").exists()
        assert cluster.prepare() is False, "nothing stale any more"
    finally:
        zombie.wait()


def test_a_running_cluster_is_neither_cleaned_nor_overwritten(tmp_path: Path,
                                                              sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, marker = sleeper
    state = tmp_path
    manifest = write_manifest(state, [{"role": "groupmanager", "id": "gm-9", "pid": proc.pid, "config": marker}])
    cluster = LocalCluster(state, ClusterOptions(base_port=port_range(8)))
    with pytest.raises(ClusterError, match=rf"already running from {re.escape(str(state))} \(gm-9 \(pid {proc.pid}\)\)"):
        cluster.prepare()
    assert manifest.exists() and proc.poll() is None


def test_down_signals_only_the_processes_it_started(tmp_path: Path, sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, marker = sleeper
    # A PID whose command line is not the recorded one (reused by another program): left alone.
    write_manifest(tmp_path / "a", [{"role": "groupmanager", "id": "gm-1", "pid": proc.pid,
                                     "config": str(tmp_path / "a" / "config" / "gm-1.toml")}])
    assert stop_manifest(tmp_path / "a") == 0
    assert proc.poll() is None
    assert not (tmp_path / "a" / "cluster.json").exists(), "nothing of it runs: the record goes"
    # Its own recorded process, in its own process group as the cluster starts them: stopped.
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker], start_new_session=True)
    write_manifest(tmp_path / "b", [{"role": "groupmanager", "id": "gm-9", "pid": own.pid, "config": marker}])
    assert stop_manifest(tmp_path / "b") == 1
    assert own.wait(5) is not None and not alive(own.pid)
    assert proc.poll() is None


def test_a_port_clash_is_reported_before_anything_starts(tmp_path: Path) -> None:
    base = port_range(4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 2))
        s.listen()
        cluster = LocalCluster(tmp_path / "s", ClusterOptions(base_port=base, gms=2, lcs=1))
        with pytest.raises(ClusterError, match=rf"port {base + 2} \(group manager gm-2\) on 127.0.0.1 is in use"):
            cluster.prepare()
        cluster = LocalCluster(tmp_path / "s", ClusterOptions(base_port=base + 10, gms=2, lcs=1, zk_port=base + 2))
        with pytest.raises(ClusterError, match=rf"port {base + 2} \(ZooKeeper\).*--zk-port"):
            cluster.prepare()
    assert not (tmp_path / "s" / "zookeeper").exists() and not (tmp_path / "s" / "cluster.json").exists()


def test_successive_runs_are_separated_in_the_logs(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "gm-1.log"
    with open_log(log, "groupmanager gm-1 starting") as f:
        f.write(b"first run\n")
    with open_log(log, "groupmanager gm-1 starting") as f:
        f.write(b"second run\n")
    lines = log.read_text().splitlines()
    separators = [i for i, line in enumerate(lines) if line.startswith("===== ")]
    assert len(separators) == 2 and lines[separators[1] + 1] == "second run"
    assert re.fullmatch(r"===== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d  groupmanager gm-1 starting =====",
                        lines[separators[1]])


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_cluster_up_help_gives_every_option_a_meaning_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    up = _subparser(build_parser(), "cluster", "up")
    with pytest.raises(SystemExit):
        up.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = [a for a in up._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 17
    formatter = up._get_formatter()
    for action in options:
        assert action.help and len(action.help) > 10, action.dest
        shown = " ".join(formatter._expand_help(action).split())
        assert shown in text, action.dest
        assert "default" in shown, f"{action.option_strings[-1]}: {shown!r}"
