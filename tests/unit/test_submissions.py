"""``Submissions`` through a group leader's scope, against a real ZooKeeper: a submission is
recorded, dispatched to a group manager and answered; a dispatch that fails on something
unexpected fails its VMs with the reason and never the leader; a new leader resuming a
submission whose records include unreadable ones reports those and starts the rest.

The group managers are fake peers (they start whatever they are sent); the leader's scope,
its table of group managers and the store are the real ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from groupmanager.leader.members import GroupManagerRecord, GroupManagers
from groupmanager.leader.submissions import Submissions
from snooze.codes import ErrorCode, TaskState
from snooze.coordination import Coordinator
from snooze.coordination.store import Store, subnet_key
from snooze.models import GroupManagerDescription, ListenSettings, NetworkAddress
from tests.peers import Network, Node, node, settings

pytestmark = pytest.mark.integration  # a real ZooKeeper

SUBNET = "10.7.0.0/24"
GIB = 1024 * 1024




class Leader:
    """A group leader of ``epoch``: its scope, its table of group managers, its submissions."""

    def __init__(self, coord: Coordinator, net: Network, epoch: int) -> None:
        s = settings(virtual_machine_subnet=SUBNET)
        s.heartbeat.timeout = 0.2  # the failover grace of a resume: timeout + 1 s
        self.net = net
        self.node: Node = node("gm-leader", 7000, net, settings=s, coord=coord, epoch=epoch)
        self.members = GroupManagers(timeout=60.0)
        self.submissions = Submissions(self.node.scope, self.members, epoch)
        self.started: list[str] = []

    def add_gm(self, gm_id: str, port: int, summary: dict[str, Any] | None = None) -> GroupManagerRecord:
        desc = GroupManagerDescription(gm_id, ListenSettings(NetworkAddress("127.0.0.1", port)))
        rec = GroupManagerRecord(desc, summary if summary is not None else {
            "activeCapacity": [16, 16 * GIB, 0, 0], "passiveCapacity": [0, 0, 0, 0],
            "requestedCapacity": [0, 0, 0, 0], "numberOfLocalControllers": 0})
        self.members.records[gm_id] = rec
        self.net.serve(port, "gm.startVirtualMachines", self._start)
        return rec

    def _start(self, body: dict[str, Any]) -> dict[str, Any]:
        self.started += [vm["id"] for vm in body["vms"]]
        return {"results": [{"id": vm["id"], "status": "RUNNING", "localControllerId": "lc-1",
                             "localControllerAddress": {"address": "127.0.0.1", "port": 7100}} for vm in body["vms"]]}

    async def submit(self, *names: str) -> str:
        body = {"virtualMachineTemplates": [{"name": n, "vcpus": 1, "memory": 131072, "imageId": "debian.qcow2"}
                                            for n in names]}
        return await self.submissions.submit(body)

    async def finished(self, task_id: str) -> dict[str, Any]:
        task = self.node.scope.task(f"dispatch-{task_id}")
        if task is not None:
            await task
        response = await self.submissions.response(task_id)
        assert response is not None, f"{task_id} is not answered"
        return response


def by_id(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["virtualMachineId"]: m for m in response["virtualMachineMetaData"]}


async def addresses(coord: Coordinator) -> dict[str, str]:
    path = coord.path("ipam", subnet_key(SUBNET))
    if await coord.call(coord.client.exists, path) is None:
        return {}
    names = await coord.call(coord.client.get_children, path)
    return {ip: (await coord.call(coord.client.get, f"{path}/{ip}"))[0].decode() for ip in names}


async def test_a_submission_is_recorded_dispatched_and_answered(coord: Coordinator) -> None:
    leader = Leader(coord, Network(), await coord.bump_epoch())
    leader.add_gm("gm-1", 7001)
    task_id = await leader.submit("a", "b")
    metas = by_id(await leader.finished(task_id))
    assert {k: m["status"] for k, m in metas.items()} == {"a": "RUNNING", "b": "RUNNING"}
    assert {m["virtualMachineLocation"]["groupManagerId"] for m in metas.values()} == {"gm-1"}
    assert sorted(leader.started) == ["a", "b"]
    assert sorted((await addresses(coord)).values()) == ["a", "b"]


async def test_a_dispatch_failing_unexpectedly_fails_its_vms_with_the_reason_not_the_leader(coord: Coordinator) -> None:
    leader = Leader(coord, Network(), await coord.bump_epoch())
    # A group manager whose summary this version cannot read (a newer peer, a bug).
    gm = leader.add_gm("gm-1", 7001, {"activeCapacity": "lots", "numberOfLocalControllers": 0})
    task_id = await leader.submit("x", "y")
    response = await leader.finished(task_id)
    assert response["errorCode"] == "NO_VIRTUAL_MACHINE_STARTED"
    for meta in by_id(response).values():
        assert (meta["status"], meta["errorCode"]) == ("ERROR", ErrorCode.DISPATCH_FAILED)
        assert "ValueError" in meta["message"], meta["message"]
        assert meta["ipAddress"] is None, "never sent anywhere: its address went back to the pool"
    assert await addresses(coord) == {}
    task = await Store(coord).get_task(task_id)
    assert task is not None and task["state"] == TaskState.DONE and "ValueError" in task["error"]
    assert leader.node.scope.failures == 1 and not leader.node.scope.closed
    # The leader goes on: the next submission, with a readable summary, starts.
    gm.summary = {"activeCapacity": [16, 16 * GIB, 0, 0], "numberOfLocalControllers": 0}
    again = await leader.submit("z")
    assert by_id(await leader.finished(again))["z"]["status"] == "RUNNING"


async def test_resume_reports_unreadable_records_and_starts_the_rest(coord: Coordinator) -> None:
    net = Network()
    old = Leader(coord, net, await coord.bump_epoch())  # no group manager yet: its dispatch waits
    task_id = await old.submit("ok-1", "garbage", "older", "ok-2")
    await old.node.scope.close()  # the leader dies before dispatching anything
    store = Store(coord)
    task = await store.get_task(task_id)
    assert task is not None and task["state"] == TaskState.PENDING
    await coord.call(coord.client.set, coord.path("vms", "garbage"), b"\x00{not json")
    older = {"virtualMachineId": "older", "taskId": task_id, "state": "PENDING", "requested": [1, 131072]}
    await coord.call(coord.client.set, coord.path("vms", "older"), json.dumps(older).encode())

    new = Leader(coord, net, await coord.bump_epoch())
    new.add_gm("gm-1", 7001)
    await new.submissions.resume()
    metas = by_id(await new.finished(task_id))
    assert {k: m["status"] for k, m in metas.items()} == {
        "ok-1": "RUNNING", "ok-2": "RUNNING", "garbage": "ERROR", "older": "ERROR"}
    assert "not JSON" in metas["garbage"]["message"] and "no status" in metas["older"]["message"]
    assert {metas[v]["errorCode"] for v in ("garbage", "older")} == {ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE}
    assert sorted(new.started) == ["ok-1", "ok-2"], "an unreadable VM is never started"
    assert sorted((await addresses(coord)).values()) == ["ok-1", "ok-2"], "their addresses went back to the pool"
    assert new.node.scope.failures == 0
