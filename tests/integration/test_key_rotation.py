"""HMAC rotation without a lost heartbeat: a running cluster's key replaced in three phases
(``snooze cluster rotate-key``, SIGHUP to every process) while heartbeats and internal calls
flow, with nothing refused on the way, no failure detected, and the old key refused after.

Each phase is held for a few heartbeat intervals once every process has confirmed it, so that
heartbeats cross the cluster in each of the intermediate states (two keys accepted, some
processes signing with each).
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snooze.codes import ErrorCode, EventKind
from snooze.dev.keyrotation import rotate_key
from snooze.dev.localcluster import LocalCluster, assigned_lcs
from snooze.heartbeat import HeartbeatEndpoint
from snooze.models import NetworkAddress
from snooze.protocol import fingerprint
from snooze.protocol.messages import DescribeLocalController
from snooze.rpc import RpcClient, RpcError
from tests.support import count, get, http, metrics, wait_for

pytestmark = pytest.mark.integration

INTERVAL = 0.5  # tests.support.FAST's heartbeat interval
BAD_SIGNATURE = ErrorCode.BAD_HMAC.lower()  # the reason a refused signature is counted under
REPO = Path(__file__).resolve().parents[2]


def leader(c: LocalCluster) -> tuple[str, int]:
    gl = get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")
    return str(gl["id"]), int(gl["epoch"])


def placement(c: LocalCluster) -> dict[str, str]:
    """Local controller -> its group manager."""
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return {lc["id"]: gm["id"] for gm in h.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", [])}


def test_hmac_rotation_without_a_lost_heartbeat(cluster_factory: Any) -> None:
    c: LocalCluster = cluster_factory(gms=3, lcs=3)
    old = c.options.key
    first_leader = leader(c)
    first_placement = placement(c)
    assert set(first_placement) == {"lc-1", "lc-2", "lc-3"}
    before = {p["id"]: metrics(p["port"]) for p in c.processes}

    # Internal calls keep flowing through the whole rotation: every getCompleteHierarchy is the
    # bootstrap asking the leader, which asks every group manager.
    failures: list[Any] = []
    answered = [0]
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            status, body = http("GET", c.bootstrap_url + "/bootstrap?getCompleteHierarchy", timeout=5)
            if status != 200 or assigned_lcs(body) != set(first_placement):
                failures.append((status, body))
            answered[0] += 1
            time.sleep(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        time.sleep(4 * INTERVAL)  # hold this state for a few heartbeats

    started = time.time()  # events are written in batches: the formation's may land later, with their own time
    try:
        new = rotate_key(c.state_dir, timeout=30, say=say)
    finally:
        done.set()
        thread.join(10)
    c.options.key = new  # what the cluster now signs with (restarts and probes use it)
    assert [line.split(":")[0] for line in said[1:]] == ["phase 1/3", "phase 2/3", "phase 3/3"], said
    assert fingerprint(old.encode()) in said[0] and fingerprint(new.encode()) in said[0]
    assert old not in "".join(said) and new not in "".join(said), "keys are named by fingerprint only"

    # Nothing was refused, nothing was declared failed, nobody moved.
    assert not failures, failures[:3]
    assert answered[0] > 20
    for p in c.processes:
        now = metrics(p["port"])
        assert count(now, "snooze_heartbeats_dropped_total", reason=BAD_SIGNATURE) == 0, p["id"]
        assert count(now, "snooze_internal_rejected_total", reason=BAD_SIGNATURE) == 0, p["id"]
        heard = count(now, "snooze_heartbeats_received_total") - count(before[p["id"]], "snooze_heartbeats_received_total")
        assert heard >= 8, f"{p['id']} heard {heard} heartbeats during the rotation"  # they did flow
        keys = get(f"http://127.0.0.1:{p['port']}/health")["keys"]
        assert keys == {"signing": fingerprint(new.encode()), "accepted": [fingerprint(new.encode())]}, p["id"]
        assert count(now, "snooze_cluster_keys", fingerprint=fingerprint(new.encode()), use="signing") == 1
        mode = stat.S_IMODE(os.stat(p["config"]).st_mode)
        assert mode == 0o600, f"{p['config']} is {oct(mode)}"
        assert new in Path(p["config"]).read_text() and old not in Path(p["config"]).read_text()
    assert leader(c) == first_leader
    assert placement(c) == first_placement
    time.sleep(1.0)  # the last batch of events written
    events = [ev for ev in get(c.bootstrap_url + "/events?format=json&after=-1&limit=10000")["events"]
              if ev["time"] >= started]
    unexpected = {EventKind.GROUP_LEADER_ELECTED, EventKind.GROUP_MANAGER_FAILED, EventKind.LOCAL_CONTROLLER_FAILED,
                  EventKind.LOCAL_CONTROLLER_ASSIGNED, EventKind.LOCAL_CONTROLLER_JOINED, EventKind.GROUP_MANAGER_JOINED}
    assert not [ev for ev in events if ev["kind"] in unexpected], events

    # After phase 3 the old key is refused, over HTTP and UDP; the new one is accepted.
    lc = c.process("lc-1")

    async def probe() -> None:
        address = NetworkAddress("127.0.0.1", lc["port"])
        stale = RpcClient(old.encode(), "operator")
        fresh = RpcClient(new.encode(), "operator")
        try:
            with pytest.raises(RpcError) as refused:
                await stale.call(address, DescribeLocalController.KIND, {})
            assert refused.value.code == ErrorCode.BAD_HMAC
            assert isinstance(await fresh.call(address, DescribeLocalController.KIND, {}), dict)
        finally:
            await stale.close()
            await fresh.close()
        sender = HeartbeatEndpoint(old.encode(), "operator")
        await sender.start("127.0.0.1", 0)
        try:
            sender.send("gm.heartbeat", 0, {}, [address])
        finally:
            await asyncio.sleep(0.2)
            sender.close()

    asyncio.run(probe())
    wait_for(lambda: count(metrics(lc["port"]), "snooze_heartbeats_dropped_total", reason=BAD_SIGNATURE) == 1, 10,
             "the old key's heartbeat dropped as a bad signature")
    assert count(metrics(lc["port"]), "snooze_internal_rejected_total", reason=BAD_SIGNATURE) == 1


def test_rotate_key_command_and_a_bad_reload(cluster_factory: Any) -> None:
    """The command itself, run as a user would; and a config that cannot be read on SIGHUP
    leaves a process's keys as they were."""
    c: LocalCluster = cluster_factory(gms=2, lcs=1)
    out = subprocess.run([sys.executable, "-m", "snooze.cli", "cluster", "rotate-key", "--state-dir", str(c.state_dir)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "phase 3/3" in out.stdout and c.options.key not in out.stdout + out.stderr
    lc = c.process("lc-1")
    keys = get(f"http://127.0.0.1:{lc['port']}/health")["keys"]
    assert keys["accepted"] == [keys["signing"]] and keys["signing"] != fingerprint(c.options.key.encode())

    config = Path(lc["config"])
    good = config.read_text()
    config.write_text(good.replace("[cluster]", "[cluster]\nno_such_option = 1"))
    try:
        os.kill(lc["pid"], signal.SIGHUP)
        wait_for(lambda: "SIGHUP" in Path(lc["log"]).read_text() and "stay as they were" in Path(lc["log"]).read_text(),
                 10, "the bad reload logged")
        assert get(f"http://127.0.0.1:{lc['port']}/health")["keys"] == keys
        assert set(placement(c)) == {"lc-1"}
    finally:
        config.write_text(good)
        os.chmod(config, 0o600)
