"""Every write of a VM record is version-checked, on a real ZooKeeper: two writers (a group
leader and a group manager, each with its own ZooKeeper session) that read the same record and
then both write it lose neither's update. The one who writes second finds the version changed,
reads the record again, applies its changes again to the fresh copy, and writes that.

The writers are made to race on purpose (both read, then both write, every round), so each
round has a conflict: without the version check the second write would silently undo the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from snooze.codes import ErrorCode, VMStatus
from snooze.coordination import Coordinator
from snooze.coordination.store import StaleEpoch, Store, subnet_key
from snooze.dev.zookeeper import ZooKeeperServer
from snooze.models import NetworkAddress
from snooze.records import VMRecord

pytestmark = pytest.mark.integration

ROOT = "/versions-test"
SUBNET = "10.11.0.0/24"
LC1 = NetworkAddress("127.0.0.1", 5101)
LC2 = NetworkAddress("127.0.0.1", 5102)


@pytest.fixture
async def sessions(zookeeper: ZooKeeperServer) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
    """Two ZooKeeper sessions: the group leader's and a group manager's."""
    leader = Coordinator(zookeeper.address, root=ROOT, session_timeout=4.0)
    manager = Coordinator(zookeeper.address, root=ROOT, session_timeout=4.0)
    await leader.start(wait=15)
    await manager.start(wait=15)
    try:
        yield leader, manager
    finally:
        await manager.stop()
        await leader.stop()


async def submit(store: Store, epoch: int, name: str, ip: str) -> VMRecord:
    rec = VMRecord.pending(name, "t-1", (1.0, 131072.0, 0.0, 0.0), ip, None)
    task = {"taskId": "t-1", "vmIds": [name], "requestId": None, "fingerprint": "f", "submittedAt": 1.0, "epoch": epoch}
    await store.create_submission(task, [rec], [{"id": name, "requested": [1, 131072, 0, 0], "xml": "<domain/>"}],
                                  SUBNET, epoch)
    assert rec.version == 0 and not rec.dirty
    return rec


async def raw(coord: Coordinator, name: str) -> tuple[dict[str, Any], int]:
    import json

    data, stat = await coord.call(coord.client.get, coord.path("vms", name))
    return json.loads(data), stat.version


async def test_a_leader_and_a_manager_writing_the_same_record_lose_neither_update(
        sessions: tuple[Coordinator, Coordinator]) -> None:
    leader_coord, manager_coord = sessions
    epoch = await leader_coord.bump_epoch()
    leader, manager = Store(leader_coord), Store(manager_coord)
    rec = await submit(leader, epoch, "vm", "10.11.0.2")
    rec.dispatch_to("gm-1")
    await leader.update_vms([rec], epoch)

    # Both read version 1; the manager moves the VM first, then the leader records its start.
    as_leader, as_manager = await leader.get_vm("vm"), await manager.get_vm("vm")
    assert as_leader is not None and as_manager is not None and as_leader.version == as_manager.version == 1
    as_manager.move("lc-2", LC2, "gm-1", None, "uuid-1", {"from": "lc-1", "to": "lc-2"})
    await manager.update_vms([as_manager], None)
    as_leader.record_result(VMStatus.RUNNING, None, "started", "gm-1", None, "lc-1", LC1, ["kvm -> test"])
    await leader.update_vms([as_leader], epoch)

    stored, version = await raw(leader_coord, "vm")
    assert version == 3 and as_leader.version == 3 and not as_leader.dirty
    assert stored["status"] == "RUNNING" and stored["message"] == "started", "the leader's update"
    assert stored["localControllerId"] == "lc-2" and stored["lastMigration"] == {"from": "lc-1", "to": "lc-2"}, \
        "the manager's update, not overwritten by the leader's older location"
    assert stored["uuid"] == "uuid-1" and stored["adaptations"] == ["kvm -> test"]
    assert as_leader.lc_id == "lc-2", "the leader's copy is what was written"


async def test_two_writers_racing_every_round_lose_no_update(sessions: tuple[Coordinator, Coordinator]) -> None:
    leader_coord, manager_coord = sessions
    epoch = await leader_coord.bump_epoch()
    leader, manager = Store(leader_coord), Store(manager_coord)
    rec = await submit(leader, epoch, "busy", "10.11.0.3")
    rec.dispatch_to("gm-1")
    rec.record_result(VMStatus.RUNNING, None, None, "gm-1", None, "lc-1", LC1, [])
    await leader.update_vms([rec], epoch)
    rounds = 12
    both_read = asyncio.Barrier(2)

    async def restarter() -> None:  # restarts the VM in place: each one counts
        for i in range(rounds):
            mine = await leader.get_vm("busy")
            assert mine is not None
            await both_read.wait()  # the other has read the same version: one of us will conflict
            mine.restart("lc-1", VMStatus.RUNNING, f"uuid-{i}", "lc-1", LC1, "gm-1", LC1, [], f"restart {i}", float(i))
            await leader.update_vms([mine], epoch)

    async def mover() -> None:  # moves it back onto the same host: the last move is kept
        for i in range(rounds):
            mine = await manager.get_vm("busy")
            assert mine is not None
            await both_read.wait()
            mine.move("lc-1", LC1, "gm-1", LC1, f"uuid-m{i}", {"round": i})
            await manager.update_vms([mine], None)

    await asyncio.gather(restarter(), mover())
    stored, version = await raw(leader_coord, "busy")
    assert stored["restarts"] == rounds, "a restart was lost: a stale copy overwrote it"
    assert stored["lastMigration"] == {"round": rounds - 1}, "a move was lost"
    assert version == 1 + 2 * rounds, "every write of both writers went in"


async def test_a_released_address_goes_with_the_record_and_a_deleted_record_stays_deleted(
        sessions: tuple[Coordinator, Coordinator]) -> None:
    leader_coord, manager_coord = sessions
    epoch = await leader_coord.bump_epoch()
    leader, manager = Store(leader_coord), Store(manager_coord)
    rec = await submit(leader, epoch, "doomed", "10.11.0.4")
    rec.dispatch_to("gm-1")
    rec.record_result(VMStatus.RUNNING, None, None, "gm-1", None, "lc-1", LC1, [])
    await leader.update_vms([rec], epoch)
    ipam = leader_coord.path("ipam", subnet_key(SUBNET), "10.11.0.4")
    assert await leader_coord.call(leader_coord.client.exists, ipam) is not None

    # The manager marks it lost (its host came back without it) from a copy the leader made stale.
    stale = await manager.get_vm("doomed")
    assert stale is not None
    rec.adaptations.clear()
    rec.claim("t-other")  # no-op (it has a task), but a change: the leader writes a new version
    await leader.update_vms([rec], epoch)
    stale.lose("lc-1", "lc-1 re-joined without it", 5.0)
    await manager.update_vms([stale], None, subnet=SUBNET)
    stored, _version = await raw(leader_coord, "doomed")
    assert (stored["status"], stored["errorCode"], stored["ipAddress"]) == ("ERROR", ErrorCode.VIRTUAL_MACHINE_LOST, None)
    assert await leader_coord.call(leader_coord.client.exists, ipam) is None, "its address went back to the pool"

    # A writer whose record was deleted meanwhile (destroyed) does not bring it back.
    late = await leader.get_vm("doomed")
    assert late is not None
    await manager.delete_vm("doomed", SUBNET)
    late.fail(ErrorCode.DISPATCH_FAILED, "too late", only=(VMStatus.ERROR,))
    await leader.update_vms([late], epoch)
    assert await leader_coord.call(leader_coord.client.exists, leader_coord.path("vms", "doomed")) is None
    assert not late.dirty


async def test_a_deposed_leaders_write_is_refused_even_when_its_version_is_right(
        sessions: tuple[Coordinator, Coordinator]) -> None:
    leader_coord, _manager = sessions
    epoch = await leader_coord.bump_epoch()
    store = Store(leader_coord)
    rec = await submit(store, epoch, "fenced", "10.11.0.5")
    await leader_coord.bump_epoch()  # a new leader was elected
    rec.dispatch_to("gm-1")
    with pytest.raises(StaleEpoch):
        await store.update_vms([rec], epoch)
    stored, version = await raw(leader_coord, "fenced")
    assert (stored["status"], version) == ("PENDING", 0)
