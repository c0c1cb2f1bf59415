"""A host woken while it is still shutting down, on real processes (simulated IPMI BMCs): its
group manager waits until the BMC reports it off, then powers it on, instead of sending a
"power on" that a host still on ignores and finding it off only at the next check."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import gm_logs, http, lc_statuses, wait_for
from tests.support import run_virtual_cluster as run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_host_woken_while_shutting_down_is_powered_on_once_off(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2, energy=True, idle_time=1.0, reserved_nodes=1, lc_cpus=4)
    wait_for(lambda: sorted(lc_statuses(c).values()) == ["ACTIVE", "PASSIVE"], 30, "one host kept on, one powered down")

    # Each host holds one such VM: the second wakes the sleeping host.
    big = {"vcpus": 3, "memory": 262144}
    first = run(c, [{"name": "a", **big}, {"name": "b", **big}])["virtualMachineMetaData"]
    assert all(m["status"] == "RUNNING" for m in first), first
    where = {m["virtualMachineId"]: m["virtualMachineLocation"]["localControllerId"] for m in first}
    assert len(set(where.values())) == 2

    # Free one host; the energy saver powers it down after idle_time. The moment it is listed
    # PASSIVE its local controller is still stopping (it answers the order, then stops).
    assert http("POST", c.bootstrap_url + "/bootstrap?destroyVirtualMachine", "b") == (200, True)
    host = where["b"]
    wait_for(lambda: lc_statuses(c).get(host) == "PASSIVE", 20, f"{host} powered down", interval=0.02)
    t0 = time.monotonic()
    again = run(c, [{"name": "c", **big}])["virtualMachineMetaData"]
    took = time.monotonic() - t0
    assert again[0]["status"] == "RUNNING", again
    assert again[0]["virtualMachineLocation"]["localControllerId"] == host, "only the sleeping host had room"
    logs = gm_logs(c)
    assert f"waited for {host} to finish shutting down before powering it on" in logs, "the wake-up waited for off"
    assert f"woke {host} in" in logs
    assert took < 30, took
    assert lc_statuses(c) == {lc: "ACTIVE" for lc in set(where.values())}
