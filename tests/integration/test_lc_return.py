"""A local controller that stalled past the heartbeat timeout (its process stopped, as a
starved or paused host) goes back to the group manager that had it, directly: that manager
dropped it as silent and takes it back (when it hears it again, or on its join "returning");
the leader is not asked and no host moves. Before, the
host excluded its manager as dead and asked the leader for another one (at 2,000 simulated
hosts, 1,563 moved at once after a stall: docs/scale.md). A returning join from a host a manager
never had is refused: where a new host goes is the leader's choice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from snooze.codes import ErrorCode
from snooze.dev.localcluster import LocalCluster
from snooze.rpc import RpcError
from tests.support import get, order, wait_for

pytestmark = pytest.mark.integration


def managers(c: LocalCluster) -> dict[str, str]:
    """Each local controller's group manager, from the hierarchy."""
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return {lc["id"]: gm["id"] for gm in h["groupManagerDescriptions"] for lc in gm.get("localControllers") or []}


def log_of(c: LocalCluster, node_id: str) -> str:
    return Path(c.process(node_id)["log"]).read_text(errors="replace")


def test_a_host_that_stalled_past_the_timeout_goes_back_to_its_group_manager(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2)  # a leader and two managers: asking the leader would move it
    want = {p["id"] for p in c.processes if p["role"] == "localcontroller"}
    before = wait_for(lambda: (m := managers(c)) and set(m) == want and m, 30, "both hosts assigned")
    lc, gm = "lc-1", before["lc-1"]
    assert log_of(c, lc).count("joined group manager") == 1
    pid = c.process(lc)["pid"]
    os.killpg(pid, signal.SIGSTOP)
    try:
        # Twice the heartbeat timeout (2 s in these tests): its manager drops it as silent.
        wait_for(lambda: f"local controller {lc} is silent; dropped" in log_of(c, gm), 15, f"{gm} to drop {lc}")
        time.sleep(2.5)  # and on the host's side, its manager's heartbeats are older than the timeout
    finally:
        os.killpg(pid, signal.SIGCONT)
    # Heard again (its next heartbeat or report), or its join "returning": either way taken back.
    wait_for(lambda: f"local controller {lc} came back" in log_of(c, gm) or
             f"local controller {lc} is heard again; taken back" in log_of(c, gm), 15, f"{lc} back with {gm}")
    after = wait_for(lambda: (m := managers(c)) and set(m) == want and m, 15, "both hosts assigned again")
    assert after == before, "no host moved"
    time.sleep(3 * 2.0)  # a few timeouts: it stays, heard both ways
    assert managers(c) == before
    assert f"group manager {gm} silent for" not in log_of(c, lc), "it never excluded its manager"
    assert log_of(c, lc).count("joined group manager") == 1, "nor joined through the leader again"


def test_a_returning_join_from_a_host_the_manager_never_had_is_refused(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=1)
    wait_for(lambda: set(managers(c)) == {"lc-1"}, 30, "the host assigned")
    gm = managers(c)["lc-1"]
    stranger = {"id": "lc-stranger", "controlDataAddress": {"address": "127.0.0.1", "port": 9}, "status": "ACTIVE",
                "totalCapacity": [8.0, 16777216.0, 0.0, 0.0]}
    with pytest.raises(RpcError) as err:
        order(c, c.process(gm)["port"], "lc.join", {"localController": stranger, "domains": [], "returning": True})
    assert err.value.code is ErrorCode.NOT_JOINED
    assert "ask the group leader" in str(err.value)
    assert set(managers(c)) == {"lc-1"}, "the stranger was not taken"
    # One of its own hosts is taken back that way (as after a stall of the host).
    own = next(lc for lc in get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]
               if lc["id"] == "lc-1")
    answer = order(c, c.process(gm)["port"], "lc.join", {"localController": own, "domains": [], "returning": True})
    assert answer["groupManagerId"] == gm
    assert "local controller lc-1 came back with 0 domains" in log_of(c, gm)
