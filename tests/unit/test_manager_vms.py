"""``VirtualMachines.start`` through a manager role's scope: a batch is placed on this group
manager's local controllers, reserved while it is on its way, ordered, and recorded where it
runs; a local controller's own capacity refusal sends the VM elsewhere; sleeping capacity is
woken; every reservation is gone afterwards. Only the local controllers are fake peers."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from groupmanager.manager.energy import EnergySaver
from groupmanager.manager.hosts import Hosts, LocalControllerRecord
from groupmanager.manager.vms import VirtualMachines
from groupmanager.thresholds import thresholds_from
from snooze.models import LocalControllerDescription, NetworkAddress, Status
from tests.peers import Network, node

GIB = 1024 * 1024  # KiB


class Group:
    def __init__(self) -> None:
        self.net = Network()
        self.node = node("gm-1", 7001, self.net)
        scope = self.node.scope
        self.hosts = Hosts(thresholds_from(scope.settings.groupmanager))
        self.energy = EnergySaver(scope, self.hosts)
        self.vms = VirtualMachines(scope, self.hosts, self.energy, summary=lambda: {"numberOfLocalControllers": 2})
        self.vms.register()
        self.refuse: set[str] = set()  # local controllers that refuse every start for capacity
        self.ports: dict[int, str] = {}

    def add_lc(self, lc_id: str, *, cpus: float = 4, status: Status = Status.ACTIVE,
               wakeup: dict[str, Any] | None = None) -> LocalControllerRecord:
        port = 20000 + len(self.hosts.lcs)
        desc = LocalControllerDescription(lc_id, NetworkAddress("127.0.0.1", port), (cpus, 4.0 * GIB, 0.0, 0.0),
                                          status=status, wakeup_settings=wakeup or {"driver": "NONE"})
        rec = LocalControllerRecord(desc, history=deque(maxlen=10))
        self.hosts.lcs[lc_id] = rec
        self.ports[port] = lc_id
        self.net.serve(port, "lc.startVirtualMachines", lambda body: self._start(lc_id, body))
        return rec

    def _start(self, lc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        # While the order is on its way, its capacity is held for it on this host.
        for vm in body["vms"]:
            assert self.hosts.reservations.snapshot()[lc_id][vm["id"]] == tuple(vm["requested"])
        if lc_id in self.refuse:
            return {"results": [{"id": vm["id"], "status": "ERROR", "errorCode": "NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY",
                                 "message": f"cpu: {vm['requested'][0]:g} needed, 0 free on {lc_id}"}
                                for vm in body["vms"]]}
        return {"results": [{"id": vm["id"], "status": "RUNNING", "uuid": f"uuid-{vm['id']}", "adaptations": []}
                            for vm in body["vms"]]}

    def asked(self) -> list[tuple[str, list[str]]]:
        return [(self.ports[port], [vm["id"] for vm in body["vms"]])
                for port, body in self.net.kinds("lc.startVirtualMachines")]


def vm(name: str, cpus: float = 1, memory: float = GIB, **extra: Any) -> dict[str, Any]:
    return {"id": name, "requested": [cpus, memory, 0, 0], "xml": f"<domain><name>{name}</name></domain>", **extra}


async def test_a_batch_is_placed_ordered_and_recorded_and_holds_nothing_afterwards() -> None:
    g = Group()
    g.add_lc("lc-1")
    g.add_lc("lc-2")
    reply = await g.node.ask("gm.startVirtualMachines", {"vms": [vm("a"), vm("b"), vm("c", cpus=2)]})
    results = {r["id"]: r for r in reply["results"]}
    assert reply["summary"] == {"numberOfLocalControllers": 2}, "the leader's view comes back with the results"
    assert {r["status"] for r in results.values()} == {"RUNNING"}
    for name, res in results.items():
        where = res["localControllerId"]
        assert res["localControllerAddress"] == g.hosts.lcs[where].description.control_data_address.to_json()
        assert g.vms.domain_of(where, name) == {"name": name, "uuid": f"uuid-{name}", "state": "RUNNING",
                                                "vcpus": 2.0 if name == "c" else 1.0,
                                                "memory": float(GIB)}
    assert sum(len(names) for _lc, names in g.asked()) == 3, "each VM ordered once"
    assert g.hosts.reservations.snapshot() == {}
    assert g.hosts.requested_on("lc-1")[0] + g.hosts.requested_on("lc-2")[0] == 4.0


async def test_a_local_controller_refusing_for_capacity_sends_its_vm_elsewhere_once() -> None:
    g = Group()
    g.add_lc("lc-1")
    g.add_lc("lc-2")
    g.refuse.add("lc-1")  # its hypervisor has less room than its group manager thinks
    results = {r["id"]: r for r in await g.vms.start([vm("a", cpus=3), vm("b", cpus=3)])}
    # One VM per host fits; the one sent to lc-1 is refused there and retried without lc-1,
    # where the other one already takes the room.
    assert sorted(r["status"] for r in results.values()) == ["ERROR", "RUNNING"]
    [ok] = [r for r in results.values() if r["status"] == "RUNNING"]
    [refused] = [r for r in results.values() if r["status"] == "ERROR"]
    assert ok["localControllerId"] == "lc-2"
    assert refused["errorCode"] == "NOT_ENOUGH_CAPACITY" and refused["rejections"], refused
    assert [lc for lc, _names in g.asked()].count("lc-1") == 1, "a host that refused is not asked again"
    assert g.hosts.reservations.snapshot() == {}


async def test_a_host_that_answered_counts_its_vms_once_while_another_host_is_still_starting() -> None:
    # A VM is counted as reserved until its host answers, then as running: never as both.
    # (Counted twice, lc-1 looked full to a concurrent batch while lc-2 was still starting.)
    g = Group()
    g.add_lc("lc-1")
    g.add_lc("lc-2")
    slow = asyncio.Event()
    answered = asyncio.Event()

    async def late(body: dict[str, Any]) -> dict[str, Any]:
        await slow.wait()
        return {"results": [{"id": v["id"], "status": "RUNNING", "uuid": f"uuid-{v['id']}"} for v in body["vms"]]}

    def quick(body: dict[str, Any]) -> dict[str, Any]:
        answered.set()
        return g._start("lc-1", body)

    g.net.serve(20001, "lc.startVirtualMachines", late)
    g.net.serve(20000, "lc.startVirtualMachines", quick)
    first = asyncio.create_task(g.vms.start([vm("a", cpus=2), vm("b", cpus=2)]))
    await answered.wait()
    await asyncio.sleep(0)
    assert g.hosts.taken_on("lc-1")[0] == 2.0, "lc-1's VM: running, no longer also reserved"
    # lc-1 has room for 2 more vcpus: a concurrent batch gets it.
    [res] = await g.vms.start([vm("c", cpus=2)])
    assert (res["status"], res["localControllerId"]) == ("RUNNING", "lc-1")
    slow.set()
    assert {r["status"] for r in await first} == {"RUNNING"}
    assert g.hosts.reservations.snapshot() == {}


async def test_sleeping_capacity_is_woken_when_the_awake_hosts_are_full() -> None:
    g = Group()
    g.add_lc("lc-1", cpus=1)
    g.add_lc("lc-2", status=Status.PASSIVE)
    woken: list[str] = []

    class Waker:
        async def wake(self, lc_ids: list[str]) -> dict[str, str | None]:
            for lc_id in lc_ids:
                woken.append(lc_id)
                g.hosts.lcs[lc_id].description.status = Status.ACTIVE  # it re-joined
            return dict.fromkeys(lc_ids)

    g.vms.waker = Waker()
    [res] = await g.vms.start([vm("big", cpus=2)])
    assert woken == ["lc-2"] and (res["status"], res["localControllerId"]) == ("RUNNING", "lc-2")
    assert g.hosts.reservations.snapshot() == {}


async def test_a_host_that_cannot_be_woken_fails_its_vms_with_the_reason() -> None:
    g = Group()
    g.add_lc("lc-1", cpus=1)
    g.add_lc("lc-2", status=Status.PASSIVE)  # wake-up driver NONE
    [res] = await g.vms.start([vm("big", cpus=2)])
    assert res["status"] == "ERROR" and res["errorCode"] == "LOCAL_CONTROLLER_WAKEUP_FAILED"
    assert "waking lc-2 failed: host has no wake-up driver" in res["message"]
    assert g.hosts.lcs["lc-2"].description.status == Status.PASSIVE, "still asleep, still wakeable"
    assert g.asked() == [] and g.hosts.reservations.snapshot() == {}


async def test_a_malformed_vm_fails_alone() -> None:
    g = Group()
    g.add_lc("lc-1")
    results = {r["id"]: r for r in await g.vms.start([vm("good"), {"id": "bad", "requested": [1, "lots", 0, 0]}])}
    assert results["good"]["status"] == "RUNNING"
    assert results["bad"]["errorCode"] == "BAD_SPECIFICATION" and "requested" in results["bad"]["message"]


async def test_a_vm_whose_only_host_refused_it_for_a_while_says_why_not_that_capacity_was_short() -> None:
    g = Group()
    g.add_lc("lc-1")
    g.add_lc("lc-2", cpus=1)  # too small for the VM: placement never picks it
    g.net.serve(20000, "lc.startVirtualMachines", lambda body: {"results": [
        {"id": v["id"], "status": "ERROR", "errorCode": "IMAGE_REPOSITORY_UNAVAILABLE",
         "message": "the image repository did not answer"} for v in body["vms"]]})
    [res] = await g.vms.start([vm("a", cpus=3)])
    assert res["status"] == "ERROR"
    assert res["errorCode"] == "IMAGE_REPOSITORY_UNAVAILABLE", res
    assert "the image repository did not answer (on lc-1)" in res["message"], res["message"]
    assert "no other host" in res["message"] and res["rejections"], "and why the other hosts could not take it"
    assert g.hosts.reservations.snapshot() == {}
