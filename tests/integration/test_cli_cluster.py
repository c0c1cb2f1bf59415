"""`snooze cluster up --detach` / `snooze cluster down` as a script uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import get, port_range

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_cluster_up_detached_writes_its_manifest_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    base = port_range(1 + 2 + 2)
    snooze = [sys.executable, "-m", "snooze.cli"]
    up = subprocess.run([*snooze, "cluster", "up", "--detach", "--state-dir", str(state), "--gms", "2", "--lcs", "2",
                         "--base-port", str(base), "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2",
                         "--session-timeout", "2"], capture_output=True, text=True, timeout=120)
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
        pids = [p["pid"] for p in procs] + [manifest["zookeeperPid"]]
        assert all(alive(pid) for pid in pids)
        h = get(manifest["bootstrapUrl"] + "/bootstrap?getCompleteHierarchy")
        assert sum(len(gm["localControllers"]) for gm in h["groupManagerDescriptions"]) == 2, "formed before returning"
    finally:
        down = subprocess.run([*snooze, "cluster", "down", "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "stopped 6 processes" in down.stdout
    assert not [pid for pid in pids if alive(pid)], "no process left behind"
    again = subprocess.run([*snooze, "cluster", "down", "--state-dir", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.startswith("snooze: ")
