"""A local controller killed (kill -9) and restarted without its domains, in a real local
cluster: libvirt's test driver forgets every domain it ran, as a crashed host may have.

When it re-joins, its hypervisor is the truth: the VMs its records placed there become ERROR
with VIRTUAL_MACHINE_LOST and the reason (or, when the operator enabled it, run again from
their stored spec), their capacity and addresses are released, listing and metadata agree,
and domains on the host that no record accounts for are reported as orphans.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import get, http, wait_for

pytestmark = pytest.mark.integration

LOST = [f"lost-{i}" for i in range(6)]


def submit(c: LocalCluster, templates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    b = c.bootstrap_url + "/bootstrap"
    status, task = http("POST", b + "?startVirtualCluster", json.dumps({"virtualMachineTemplates": templates}))
    assert status == 200, task
    resp = wait_for(lambda: http("POST", b + "?getVirtualClusterResponse", task)[1] or None, 30, "the VMs to start")
    metas: list[dict[str, Any]] = resp["virtualMachineMetaData"]
    assert all(m["status"] == "RUNNING" for m in metas), metas
    return metas


def vm(name: str, host: str) -> dict[str, Any]:
    return {"vcpus": 1, "memory": 262144, "name": name, "imageId": "debian.qcow2", "hostId": host}


def meta(c: LocalCluster, name: str) -> dict[str, Any]:
    status, body = http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", name)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def listing(c: LocalCluster) -> dict[str, dict[str, Any]]:
    body = get(c.bootstrap_url + "/bootstrap?getVirtualMachineDescriptions&start=0&limit=100")
    return {m["virtualMachineId"]: m for m in body["virtualMachines"]}


def manager(c: LocalCluster) -> dict[str, Any]:
    """The description of the one group manager that manages hosts (the other one leads)."""
    gms = get(c.bootstrap_url + "/bootstrap?getGroupManagerDescriptions")
    [gm] = [g for g in gms if g.get("localControllers")]
    return gm  # type: ignore[no-any-return]


def host(c: LocalCluster, lc_id: str) -> dict[str, Any]:
    [lc] = [lc for lc in manager(c)["localControllers"] if lc["id"] == lc_id]
    return lc  # type: ignore[no-any-return]


def restart_without_domains(c: LocalCluster, lc_id: str) -> None:
    old_pid = c.process(lc_id)["pid"]
    c.kill(lc_id)
    c.restart(lc_id)
    assert c.process(lc_id)["pid"] != old_pid


def test_vms_lost_with_their_host_become_errors_and_release_what_they_held(cluster_factory: Any) -> None:
    # One domain on each host that no VM record accounts for: an orphan from the start.
    c = cluster_factory(gms=2, lcs=2, domains_per_lc=1)
    wait_for(lambda: manager(c)["summaryInformation"]["orphanVirtualMachines"] == {"lc-1": ["lc-1-vm-1"], "lc-2": ["lc-2-vm-1"]},
             20, "the preset domains reported as orphans")
    assert host(c, "lc-1")["orphanVirtualMachines"] == ["lc-1-vm-1"]
    assert host(c, "lc-1")["virtualMachineMetaData"]["lc-1-vm-1"]["orphan"] is True

    metas = submit(c, [vm(n, "lc-1") for n in LOST] + [vm("keeper", "lc-2")])
    ips = {m["virtualMachineId"]: m["ipAddress"] for m in metas}
    assert all(ips.values())
    wait_for(lambda: manager(c)["summaryInformation"]["requestedCapacity"][0] >= 9, 10, "7 VMs + 2 orphans counted")

    restart_without_domains(c, "lc-1")

    def all_lost() -> bool:
        return all(meta(c, n)["status"] == "ERROR" for n in LOST)

    wait_for(all_lost, 30, "the VMs lost with lc-1 marked ERROR")
    for name in LOST:
        m = meta(c, name)
        assert m["errorCode"] == "VIRTUAL_MACHINE_LOST", m
        assert "lc-1 re-joined without it" in m["message"] and "released" in m["message"], m["message"]
        assert m["ipAddress"] is None and m["macAddress"] is None, "its address went back to the pool"
    # The listing says the same as the metadata; the VM on the other host is untouched.
    listed = listing(c)
    assert {n: listed[n]["status"] for n in LOST} == dict.fromkeys(LOST, "ERROR")
    assert listed["keeper"]["status"] == meta(c, "keeper")["status"] == "RUNNING"
    # Nothing is counted or held for them any more; the host's preset domain is an orphan again.
    summary = wait_for(lambda: (lambda s: s if s["requestedCapacity"][0] == 3 else None)(manager(c)["summaryInformation"]),
                       10, "only keeper and the two orphans counted")
    assert summary["reservedCapacity"] == [0.0, 0.0, 0.0, 0.0]
    assert summary["orphanVirtualMachines"] == {"lc-1": ["lc-1-vm-1"], "lc-2": ["lc-2-vm-1"]}
    assert host(c, "lc-1")["assignedVirtualMachines"] == ["lc-1-vm-1"]

    # The addresses are free again: a new submission gets them.
    again = submit(c, [vm(f"new-{i}", "lc-1") for i in range(6)])
    assert {m["ipAddress"] for m in again} == {ips[n] for n in LOST}
    # A lost VM can still be destroyed, which forgets it.
    assert http("POST", c.bootstrap_url + "/bootstrap?destroyVirtualMachine", "lost-0") == (200, True)
    assert http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", "lost-0")[0] == 404


def test_lost_vms_are_restarted_from_their_specs_when_the_operator_enables_it(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2, extra={"groupmanager.restart_lost_vms": True})
    names = ["phoenix-1", "phoenix-2", "phoenix-3"]
    before = {m["virtualMachineId"]: m for m in submit(c, [vm(n, "lc-1") for n in names])}

    restart_without_domains(c, "lc-1")

    def all_back() -> bool:
        return all(meta(c, n).get("message", "") and "restarted from its stored spec" in meta(c, n)["message"] for n in names)

    wait_for(all_back, 30, "the lost VMs started again")
    for name in names:
        m = meta(c, name)
        assert m["status"] == "RUNNING" and m["errorCode"] is None, m
        assert m["virtualMachineLocation"]["localControllerId"] == "lc-1", "pinned to lc-1, which is back"
        assert m["ipAddress"] == before[name]["ipAddress"], "it keeps its address"
    assert sorted(wait_for(lambda: host(c, "lc-1")["assignedVirtualMachines"] if
                           len(host(c, "lc-1")["assignedVirtualMachines"]) == 3 else None, 10, "lc-1 runs them")) == names
    listed = listing(c)
    assert all(listed[n]["status"] == "RUNNING" for n in names)
