"""`snooze cluster up` as `./scripts/run` and scripts use it: detached, in the foreground behind a
pipe that dies first (`./scripts/run | tee log`, then Ctrl-C / a closed terminal / SIGTERM),
after a crash that left a stale state dir, and the CLI finding the cluster from anywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from snooze.dev.localcluster import stop_manifest
from snooze.procs import alive
from tests.support import get, http, port_range, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SNOOZE = [sys.executable, "-m", "snooze.cli"]
FAST = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", "--session-timeout", "2", "--monitoring-interval", "0.5"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """This user's environment, but with a private record of the cluster started last."""
    e = {k: v for k, v in os.environ.items() if k not in ("SNOOZE_URL", "SNOOZE_STATE_DIR")}
    e["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    return e


def recorded_pids(state: Path) -> list[int]:
    manifest = json.loads((state / "cluster.json").read_text())
    return [p["pid"] for p in manifest["processes"]] + [manifest["zookeeperPid"]]


def snooze(env: dict[str, str], *argv: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNOOZE, *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or ROOT)


def run_readme_api_block(url: str) -> subprocess.CompletedProcess[str]:
    """The README's API example, with its host and port replaced by ``url``; any HTTP error stops it."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```sh\n(.*?)```", readme[readme.index("\n## API"):], re.S)
    assert match, "the README has an API example"
    block = match.group(1).replace("http://127.0.0.1:5000", url)
    assert "startVirtualCluster" in block and "migrateVirtualMachine" in block
    script = 'set -euo pipefail\ncurl() { command curl -sS --fail-with-body "$@"; echo; }\n' + block
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)


def test_cluster_up_detached_writes_its_manifest_and_down_leaves_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    base = port_range(1 + 2 + 2 + 1)
    up = snooze(env, "cluster", "up", "--detach", "--state-dir", str(state), "--gms", "2", "--lcs", "2",
                "--base-port", str(base), *FAST)
    manifest_path = state / "cluster.json"
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{base}" in up.stdout and "group leader" in up.stdout, up.stdout
        manifest = json.loads(manifest_path.read_text())
        assert manifest["bootstrapUrl"] == f"http://127.0.0.1:{base}"
        assert manifest["zookeeper"].startswith("127.0.0.1:")
        procs = manifest["processes"]
        assert sorted(p["role"] for p in procs) == ["bootstrap", "groupmanager", "groupmanager", "localcontroller", "localcontroller"]
        assert all({"role", "id", "pid", "port"} <= set(p) for p in procs)
        pids = recorded_pids(state)
        assert all(alive(pid) for pid in pids)
        h = get(manifest["bootstrapUrl"] + "/bootstrap?getCompleteHierarchy")
        assert sum(len(gm["localControllers"]) for gm in h["groupManagerDescriptions"]) == 2, "formed before returning"

        # Its key is its own, in private files only.
        assert (state.stat().st_mode & 0o777) == 0o700 and (manifest_path.stat().st_mode & 0o777) == 0o600
        configs = [Path(p["config"]) for p in procs]
        assert {c.stat().st_mode & 0o777 for c in configs} == {0o600}
        keys = {re.search(r'^key = "([0-9a-f]{64})"$', c.read_text(), re.M).group(1) for c in configs}  # type: ignore[union-attr]
        assert len(keys) == 1 and next(iter(keys)) not in manifest_path.read_text()

        # From any directory, with nothing said, the CLI finds the cluster started last and says so.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        hosts = snooze(env, "hosts", cwd=elsewhere)
        assert hosts.returncode == 0, hosts.stderr
        assert sorted(line.split()[0] for line in hosts.stdout.splitlines()[1:]) == ["lc-1", "lc-2"]
        assert hosts.stderr == (f"snooze: using the cluster in {state} (http://127.0.0.1:{base}), the one you started "
                                "last; choose another with --state-dir or --url\n")
        vms = snooze(env, "vms", "--state-dir", str(state), cwd=elsewhere)
        assert (vms.returncode, vms.stdout, vms.stderr) == (0, "no virtual machines\n", "")
        assert snooze(env, "--state-dir", str(state), "hierarchy", cwd=elsewhere).stdout.startswith("group leader ")

        # The README's CLI lines: sized VMs need no --image.
        submit = snooze(env, "submit", "--vcpus", "1", "--memory-mib", "512", "--count", "2", "--name", "web", cwd=elsewhere)
        assert submit.returncode == 0, submit.stderr
        assert [line.split()[:2] for line in submit.stdout.splitlines()[1:]] == [["web-1", "RUNNING"], ["web-2", "RUNNING"]]

        # The README's API block, followed as written, in order.
        api = run_readme_api_block(f"http://127.0.0.1:{base}")
        assert api.returncode == 0, api.stdout[-2000:] + api.stderr
        assert api.stdout.splitlines().count("true") == 6, api.stdout[-2000:]
    finally:
        down = snooze(env, "cluster", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "stopped 6 processes" in down.stdout
    assert not [pid for pid in pids if alive(pid)], "no process left behind"
    assert not manifest_path.exists(), "the record of a running cluster goes with it"
    gone = snooze(env, "vms")
    assert gone.returncode == 1 and f"the cluster you started last, in {state}, is not running" in gone.stderr
    again = snooze(env, "cluster", "down", "--state-dir", str(tmp_path / "nothing"))
    assert again.returncode == 1 and again.stderr.startswith("snooze: ")


def test_a_stale_state_dir_is_cleaned_up_by_the_next_run(tmp_path: Path, env: dict[str, str]) -> None:
    """Every process of a cluster killed at once (a crash, a reboot): the next `up` starts afresh."""
    state = tmp_path / "state"
    base = port_range(1 + 2 + 1 + 1)
    args = ["cluster", "up", "--detach", "--state-dir", str(state), "--gms", "2", "--lcs", "1", "--base-port", str(base), *FAST]
    try:
        first = snooze(env, *args)
        assert first.returncode == 0, first.stdout + first.stderr
        pids = recorded_pids(state)
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in pids), 20, "every process to be gone")
        second = snooze(env, *args)
        assert second.returncode == 0, second.stdout + second.stderr
        assert second.stdout.startswith(f"cleaned up a stale cluster record in {state} (its processes were gone)\n")
        assert "hierarchy formed" in second.stdout
        assert set(recorded_pids(state)).isdisjoint(pids)
    finally:
        stop_manifest(state)


def test_a_port_clash_is_reported_before_anything_starts(tmp_path: Path, env: dict[str, str]) -> None:
    base = port_range(1 + 2 + 1 + 1)
    with socket.socket() as taken:
        # As the roles bind (and port_range checks): a connection of an earlier test in
        # TIME_WAIT on that port would refuse a plain bind (CI saw EADDRINUSE here).
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", base + 3))
        taken.listen()
        up = snooze(env, "cluster", "up", "--state-dir", str(tmp_path / "s"), "--gms", "2", "--lcs", "1",
                    "--base-port", str(base), timeout=30)
    assert up.returncode == 1
    assert up.stdout == "", "not even 'starting ZooKeeper'"
    assert up.stderr == (f"snooze: port {base + 3} (local controller lc-1) on 127.0.0.1 is in use or invalid; "
                         "choose another --base-port\n")
    assert not (tmp_path / "s" / "zookeeper").exists()


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_stops_everything_even_when_the_output_pipe_died_first(tmp_path: Path, env: dict[str, str],
                                                                        sig: signal.Signals) -> None:
    """`snooze cluster up 2>&1 | tee log`: tee dies first (Ctrl-C reaches the whole terminal group,
    a closed terminal hangs them all up), then the cluster gets its signal and every write fails."""
    state = tmp_path / "state"
    log = tmp_path / "run.log"
    base = port_range(1 + 2 + 1 + 1)
    up = subprocess.Popen([*SNOOZE, "cluster", "up", "--state-dir", str(state), "--gms", "2", "--lcs", "1",
                           "--base-port", str(base), "--no-demo", *FAST],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0, env=env, cwd=ROOT)
    assert up.stdout is not None
    # As in a terminal, whatever the test run inherited (a background job ignores SIGINT).
    tee = subprocess.Popen(["tee", str(log)], stdin=up.stdout, stdout=subprocess.DEVNULL, process_group=up.pid,
                           preexec_fn=_default_signals)
    up.stdout.close()  # tee holds the only reading end: once it dies, every write gets EPIPE
    pids: list[int] = []
    try:
        wait_for(lambda: "running; Ctrl-C stops everything" in log.read_text(), 120, "the cluster to run")
        pids = recorded_pids(state)
        assert len(pids) == 5 and all(alive(pid) for pid in pids)
        tee.send_signal(signal.SIGINT)
        tee.wait(10)
        os.killpg(up.pid, sig)  # the whole group, as the terminal does (tee is already gone)
        assert up.wait(60) == 128 + sig, "stopped by the signal, not by a traceback"
        assert not [pid for pid in pids if alive(pid)], "ZooKeeper and every role stopped"
        assert not (state / "cluster.json").exists()
        assert log.read_text().rstrip().endswith("running; Ctrl-C stops everything"), "nothing written after tee died"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if tee.poll() is None:
            tee.kill()
            tee.wait()
        stop_manifest(state)


def test_a_signal_during_start_up_stops_what_was_started_with_no_reader_at_all(tmp_path: Path,
                                                                              env: dict[str, str]) -> None:
    """Its output pipe has no reader from the start (every write fails), and the signal comes
    while the cluster is starting: it starts regardless, then stops everything it started."""
    state = tmp_path / "state"
    base = port_range(1 + 2 + 1 + 1)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        up = subprocess.Popen([*SNOOZE, "cluster", "up", "--state-dir", str(state), "--gms", "2", "--lcs", "1",
                               "--base-port", str(base), "--no-demo", *FAST],
                              stdout=write_end, stderr=write_end, start_new_session=True, env=env, cwd=ROOT)
    finally:
        os.close(write_end)
    pids: list[int] = []

    def first_role_started() -> bool:
        nonlocal pids
        try:
            manifest = json.loads((state / "cluster.json").read_text())
        except (OSError, ValueError):
            return False
        pids = [p["pid"] for p in manifest.get("processes", []) if p.get("pid")] + [manifest["zookeeperPid"]]
        return len(pids) >= 2

    try:
        # ZooKeeper runs and a role has started; the hierarchy has not formed yet.
        wait_for(first_role_started, 60, "a role to be started", interval=0.02)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 128 + signal.SIGINT
        assert not [pid for pid in pids if alive(pid)]
        assert not (state / "cluster.json").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        stop_manifest(state)


def test_set_passes_an_option_to_every_role_and_refuses_bad_ones(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    base = port_range(1 + 2 + 1 + 1)
    common = ["cluster", "up", "--detach", "--no-demo", "--state-dir", str(state), "--gms", "2", "--lcs", "1",
              "--base-port", str(base), *FAST]
    for bad, says in ((["--set", "node.port=1"], "the local cluster sets it"),
                      (["--set", "nope.x=1"], "unknown section"),
                      (["--set", "groupmanager.idle_time=soon"], "idle_time"),
                      (["--set", "groupmanager"], "SECTION.OPTION=VALUE")):
        refused = snooze(env, *common, *bad)
        assert refused.returncode == 1 and says in refused.stderr, (bad, refused.stderr)
        assert not (state / "cluster.json").exists(), "nothing started"
    try:
        up = snooze(env, *common, "--set", "groupmanager.virtual_machine_subnet=10.64.0.0/16", "--set", "monitoring.history=5")
        assert up.returncode == 0, up.stdout + up.stderr
        gm = (state / "config" / "gm-1.toml").read_text()
        assert 'virtual_machine_subnet = "10.64.0.0/16"' in gm and "history = 5" in gm
        assert "virtual_machine_subnet" not in (state / "config" / "bootstrap-1.toml").read_text()  # no such section there
        url = json.loads((state / "cluster.json").read_text())["bootstrapUrl"] + "/bootstrap"
        task = http("POST", url + "?startVirtualCluster", json.dumps({"virtualMachineTemplates": [
            {"name": "wide-1", "vcpus": 1, "memory": 262144}]}))[1]
        done = wait_for(lambda: http("POST", url + "?getVirtualClusterResponse", task)[1] or None, 30, "the VM")
        assert done["virtualMachineMetaData"][0]["ipAddress"].startswith("10.64."), done
    finally:
        stop_manifest(state)
