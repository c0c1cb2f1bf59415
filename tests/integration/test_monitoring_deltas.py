"""A local controller at rest tells its group manager "unchanged" in a heartbeat instead of
sending the same monitoring report again, and a change still reaches the manager at once, whole
(``localcontroller.monitoring.ReportDeltas``; real group managers and local controllers)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import count, get, http, metrics, start_vm, wait_for

pytestmark = pytest.mark.integration

INTERVAL = 0.2
REPORTS = "snooze_monitoring_reports_total"


def managed(c: LocalCluster, lc_id: str) -> tuple[int, dict[str, Any]]:
    """The port of ``lc_id``'s group manager, and the host as that manager shows it."""
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    for gm in h["groupManagerDescriptions"]:
        for lc in gm.get("localControllers") or []:
            if lc["id"] == lc_id:
                port = next(p["port"] for p in c.processes if p["id"] == gm["id"])
                return port, lc
    raise AssertionError(f"{lc_id} is not in the hierarchy: {h}")


def test_a_host_at_rest_says_unchanged_and_a_change_reaches_its_manager_at_once(cluster_factory: Any) -> None:
    # A whole report at most every 50 intervals (10 s): a change that waited for one would be late.
    c: LocalCluster = cluster_factory(gms=2, lcs=1, extra={"monitoring.interval": INTERVAL,
                                                           "monitoring.full_report_every": 50})
    port, _ = wait_for(lambda: managed(c, "lc-1"), 30, "lc-1 managed")
    before = metrics(port)
    time.sleep(3.0)  # 15 intervals at rest
    after = metrics(port)
    whole = count(after, REPORTS, form="whole") - count(before, REPORTS, form="whole")
    unchanged = count(after, REPORTS, form="unchanged") - count(before, REPORTS, form="unchanged")
    assert unchanged >= 10 and whole <= 2, (whole, unchanged)
    assert count(after, REPORTS, form="unmatched") == 0

    # A VM starts: the host's usage (monitoring's, not the start's bookkeeping) follows within
    # a few intervals; it leaves: back to nothing as quickly.
    start_vm(c, "md-1")
    shown = wait_for(lambda: (lambda lc: lc if lc["usedCapacity"][:2] == [1.0, 262144.0] else None)(managed(c, "lc-1")[1]),
                     3, "md-1's usage shown by lc-1's group manager")
    assert "md-1" in shown["assignedVirtualMachines"]
    assert http("POST", c.bootstrap_url + "/bootstrap?destroyVirtualMachine", "md-1") == (200, True)
    wait_for(lambda: managed(c, "lc-1")[1]["usedCapacity"][:2] == [0.0, 0.0], 3, "lc-1's usage back to nothing")


def test_a_host_at_rest_sends_its_manager_one_heartbeat_datagram_per_interval(cluster_factory: Any) -> None:
    # Heartbeats and monitoring at the same interval: every report (an unchanged one is a
    # heartbeat) says the host lives, so no plain heartbeat is sent on top of them.
    c: LocalCluster = cluster_factory(gms=2, lcs=1, heartbeat_interval=INTERVAL,
                                      extra={"monitoring.interval": INTERVAL, "monitoring.full_report_every": 50})
    port, _ = wait_for(lambda: managed(c, "lc-1"), 30, "lc-1 managed")
    before = metrics(port)
    time.sleep(3.0)  # 15 intervals at rest
    after = metrics(port)
    beats = count(after, "snooze_heartbeats_received_total", kind="lc.heartbeat") - \
        count(before, "snooze_heartbeats_received_total", kind="lc.heartbeat")
    unchanged = count(after, REPORTS, form="unchanged") - count(before, REPORTS, form="unchanged")
    # Two datagrams an interval (about 30) before; now about 15, nearly all of them reports
    # (the heartbeat timeout is 2 s: plain heartbeats would go after 0.3 s of silence).
    assert 10 <= beats <= 20 and beats - unchanged <= 4, (beats, unchanged)
    assert managed(c, "lc-1")[1]["id"] == "lc-1"  # still alive at its manager
