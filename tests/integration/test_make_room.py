"""``make_room_before_waking`` on real processes (simulated IPMI BMCs, libvirt's test driver):
a VM that fits on no active host is placed after one migration between the active hosts,
and the sleeping host stays asleep; without the option, the same submission wakes it."""

from __future__ import annotations

from typing import Any

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import gm_logs, lc_statuses, locations, wait_for
from tests.support import run_virtual_cluster as run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = 262144  # KiB


def fragment(c: LocalCluster) -> tuple[str, str, str]:
    """Two active hosts of 4 vcpus with 1 and 2 vcpus free (3 free, on neither), one asleep."""
    wait_for(lambda: sorted(lc_statuses(c).values()) == ["ACTIVE", "ACTIVE", "PASSIVE"], 30, "two hosts kept on, one asleep")
    st = lc_statuses(c)
    a, b = sorted(lc for lc, s in st.items() if s == "ACTIVE")
    [asleep] = [lc for lc, s in st.items() if s == "PASSIVE"]
    vms = [{"name": "big-a", "vcpus": 2, "memory": SMALL, "hostId": a},
           {"name": "small-a", "vcpus": 1, "memory": SMALL // 2, "hostId": a},
           {"name": "big-b", "vcpus": 2, "memory": SMALL, "hostId": b}]
    placed = run(c, vms)["virtualMachineMetaData"]
    assert all(m["status"] == "RUNNING" for m in placed), placed
    return a, b, asleep


@pytest.mark.parametrize("make_room", [True, False], ids=["make-room", "wake"])
def test_a_vm_that_fits_on_no_active_host_gets_room_made_instead_of_a_wake_up(cluster_factory: Any,
                                                                             make_room: bool) -> None:
    c = cluster_factory(gms=2, lcs=3, energy=True, idle_time=1.0, reserved_nodes=2, lc_cpus=4,
                        extra={"groupmanager.make_room_before_waking": make_room})
    a, b, asleep = fragment(c)
    [new] = run(c, [{"name": "new", "vcpus": 3, "memory": SMALL}])["virtualMachineMetaData"]
    assert new["status"] == "RUNNING", new
    where = new["virtualMachineLocation"]["localControllerId"]
    logs = gm_logs(c)
    if not make_room:
        assert where == asleep and f"woke {asleep} in" in logs
        return
    # big-a (2 vcpus) is the one VM whose leaving makes room for 3 vcpus, and it fits on b.
    assert "make room: big-a from " + a + " to " + b + " makes room for" in logs, logs[-3000:]
    assert where == a, new
    assert f"woke {asleep}" not in logs
    assert lc_statuses(c)[asleep] == "PASSIVE"
    # Every VM is where the moves put it, and RUNNING (the leader's records follow the move).
    assert locations(c, ["big-a", "small-a", "big-b", "new"]) == {"big-a": b, "small-a": a, "big-b": b, "new": a}
