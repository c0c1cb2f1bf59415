"""The local cluster's own bookkeeping, without starting it: its per-cluster key and private
files, stale state dirs, which PIDs it may signal, port checks, log separators,
``snooze cluster up --help``, and what a ``--netns`` cluster plans (namespaces, addresses,
configs) and refuses."""

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
from snooze.dev.ports import free_port
from snooze.dev.zookeeper import ZooKeeperServer
from snooze.procs import alive, open_log
from tests.support import port_range, wait_for


def planned(state: Path, **kw: object) -> LocalCluster:
    """A cluster prepared and planned (configs written) but not started."""
    options = {"gms": 2, "lcs": 1, **kw}
    cluster = LocalCluster(state, ClusterOptions(base_port=port_range(4), **options))  # type: ignore[arg-type]
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
        running(proc, marker)
        yield proc, marker
    finally:
        proc.kill()
        proc.wait()


def running(proc: subprocess.Popen[bytes], marker: str) -> None:
    """Wait until ``proc`` runs its command: just after the fork its command line is still
    the parent's (a loaded machine shows it for a while), and nothing would recognise it."""
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    wait_for(lambda: marker in cmdline.read_bytes().decode(errors="replace"), 10, f"process {proc.pid} running")


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
    running(own, marker)
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


def planned_netns(state: Path, **kw: object) -> LocalCluster:
    """A ``--netns`` cluster planned (configs written, namespaces named) but nothing made."""
    cluster = LocalCluster(state, ClusterOptions(base_port=port_range(1), gms=2, lcs=2, netns=True, **kw))  # type: ignore[arg-type]
    state.mkdir(mode=0o700)
    assert cluster.fabric is not None
    zk = cluster.fabric.plan_host("zookeeper")
    cluster.zk = ZooKeeperServer(state / "zookeeper", 2181, host=zk.address, netns=zk.netns)
    cluster.processes = cluster.plan()
    return cluster


def test_a_netns_cluster_gives_each_process_its_own_namespace_and_address(tmp_path: Path) -> None:
    cluster = planned_netns(tmp_path / "a", multicast=True)
    fabric = cluster.fabric
    assert fabric is not None and cluster.zk is not None
    subnet = fabric.subnet.removesuffix("0/24")
    assert re.fullmatch(r"10\.213\.\d{1,3}\.0/24", fabric.subnet) and fabric.address == subnet + "1"
    assert cluster.zk.address == f"{fabric.hosts['zookeeper'].address}:2181" and cluster.zk.netns == fabric.hosts["zookeeper"].netns
    names = [fabric.netns, cluster.zk.netns] + [p["netns"] for p in cluster.processes]
    addresses = [fabric.address, cluster.zk.host] + [p["address"] for p in cluster.processes]
    assert len(set(names)) == len(names) and all(n.startswith(fabric.prefix + "-") for n in names)
    assert len(set(addresses)) == len(addresses) and all(a.startswith(subnet) for a in addresses)
    group = cluster.multicast_group
    assert group.startswith(f"239.213.{fabric.octet}.1:")
    assert int(group.rpartition(":")[2]) not in {p["port"] for p in cluster.processes}, "not a port a role's UDP socket holds"
    for spec in cluster.processes:
        settings = cfg.load(Path(spec["config"]), spec["role"])
        assert settings.node.listen_address == settings.node.advertise_address == spec["address"]
        assert settings.cluster.zookeeper == cluster.zk.address
        assert settings.heartbeat.multicast_group == group and settings.heartbeat.multicast_interface == spec["address"]
        assert cluster.command(spec)[:4] == ["ip", "netns", "exec", spec["netns"]], "ip execs: the PID is the role's"
    # Only the bootstrap's forwarder listens in the root namespace.
    assert cluster.ports() == [(cluster.options.base_port, "the bootstrap's forwarder")]
    manifest = cluster.manifest()
    assert set(manifest["fabric"]["links"]) == {"zookeeper", *(p["id"] for p in cluster.processes)}
    assert all(len(link) <= 15 for link in manifest["fabric"]["links"].values()), "interface names"
    assert manifest["namespaces"] == [] and manifest["zookeeperNetns"] == cluster.zk.netns, "nothing made yet"
    # Another state dir, other names: two clusters (or tests) never share a namespace.
    other = planned_netns(tmp_path / "b")
    assert other.fabric is not None and other.fabric.prefix != fabric.prefix
    assert other.multicast_group == "", "multicast only when asked for"


def test_without_netns_the_record_is_as_before(tmp_path: Path) -> None:
    cluster = planned(tmp_path / "plain")
    manifest = cluster.manifest()
    assert not {"fabric", "namespaces", "forwarder", "zookeeperNetns"} & set(manifest)
    assert all(not {"netns", "address"} & set(p) for p in manifest["processes"])
    assert manifest["zookeeper"].startswith("127.0.0.1:")
    assert all(cfg.load(Path(p["config"]), p["role"]).node.advertise_address == "" for p in cluster.processes)
    assert all(cluster.command(p)[0] == sys.executable for p in cluster.processes)


def test_what_netns_cannot_do_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="multicast heartbeats need --netns"):
        LocalCluster(tmp_path / "m", ClusterOptions(base_port=port_range(8), multicast=True)).prepare()
    with pytest.raises(ClusterError, match="--energy is not supported with --netns"):
        LocalCluster(tmp_path / "e", ClusterOptions(base_port=port_range(8), netns=True, energy=True)).prepare()
    assert not (tmp_path / "m" / "cluster.json").exists() and not (tmp_path / "e" / "cluster.json").exists()


def test_netns_without_root_is_refused_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="--netns: network namespaces need root"):
        LocalCluster(tmp_path / "u", ClusterOptions(base_port=port_range(8), netns=True)).prepare()
    assert not (tmp_path / "u" / "cluster.json").exists()


def test_each_local_controller_gets_a_cni_agent_port_and_a_ready_network_configuration(tmp_path: Path) -> None:
    cluster = planned(tmp_path / "c", lcs=2, ec2=True)
    base = cluster.options.base_port
    lcs = {p["id"]: p for p in json.loads(cluster.manifest_path.read_text())["processes"] if p["role"] == "localcontroller"}
    # bootstrap, 2 GMs, 2 LCs, the EC2 API: then one agent port per local controller.
    assert cluster.ec2_port == base + 5
    for i, name in ((1, "lc-1"), (2, "lc-2")):
        port = base + 5 + i
        spec = lcs[name]
        assert spec["cniAgent"] == f"http://127.0.0.1:{port}"
        settings = cfg.load(Path(spec["config"]), "localcontroller").localcontroller
        assert settings.cni_agent_port == port
        conflist = json.loads(Path(spec["cniConfig"]).read_text())
        [plugin] = conflist["plugins"]
        assert plugin["type"] == "snooze-cni" and plugin["snooze"]["agent"] == spec["cniAgent"]
        assert plugin["snooze"]["recordDir"] == settings.cni_record_directory, "the agent replays the plugin's records"
        assert (port, f"{name}'s CNI agent") in cluster.ports(), "checked free before anything starts"
    assert len({p["cniConfig"] for p in lcs.values()}) == 2


def test_no_cni_agents_when_asked_or_with_many_local_controllers_per_process(tmp_path: Path) -> None:
    for name, kw in (("off", {"cni": False}), ("many", {"lcs": 4, "lcs_per_process": 2, "ec2": False})):
        cluster = planned(tmp_path / name, **kw)
        specs = [p for p in cluster.processes if p["role"] == "localcontroller"]
        assert specs and not any("cniAgent" in p for p in specs)
        assert all(cfg.load(Path(p["config"]), "localcontroller").localcontroller.cni_agent_port == 0 for p in specs)
        assert not any("CNI" in what for _port, what in cluster.ports())


def test_a_role_that_dies_while_the_cluster_forms_is_said_to_have_exited_or_been_killed(tmp_path: Path) -> None:
    # CI once saw only "bootstrap-1 exited during start-up" after a clean log: how it ended
    # (its exit status, or the signal that killed it) is the first clue.
    import signal as signals

    cluster = LocalCluster(tmp_path / "state", ClusterOptions(base_port=port_range(4)))
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed.send_signal(signals.SIGKILL)
        exited.wait(10)
        killed.wait(10)
        cluster._children.update({p.pid: p for p in (exited, killed, running)})
        assert cluster._how_it_ended(exited.pid) == "exited with 3"
        assert cluster._how_it_ended(killed.pid) == "was killed by SIGKILL"
        assert cluster._how_it_ended(running.pid) == "exited"  # not (yet) reaped: nothing more to say
        assert cluster._how_it_ended(1) == "exited"  # not ours
    finally:
        running.kill()
        running.wait(10)
