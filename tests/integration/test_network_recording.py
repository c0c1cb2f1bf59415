"""A submission's addresses in the network model's pools, recorded by the virtual-cluster store
against a real ZooKeeper: each VM's address is reserved in the same transaction as its records
(one, or each chunk of a recording too large for one), a lost race with a reservation made
through the API writes nothing, and a recording a dead leader left half-written gives its
addresses back when the next leader settles it."""

from __future__ import annotations

from typing import Any

import pytest

from snooze.codes import TaskState
from snooze.coordination import Coordinator
from snooze.coordination.store import AlreadyExists, Changed, Store
from snooze.network.ipam import CHUNK_BITS, Ipam
from snooze.network.model import Network, Subnet
from snooze.network.store import NetworkStore
from snooze.network.vms import Reservations, reserve_in_order
from snooze.records import VMRecord

pytestmark = pytest.mark.integration

CIDR = "10.60.0.0/22"  # blue1: four chunks of the pool
DEFAULT_CIDR = "10.9.0.0/24"  # the task's default subnet (no VM here uses it)


def setup(coord: Coordinator, taken: int) -> Ipam:
    """Subnet blue1 with ``taken`` addresses reserved through the API first (api0, api1 …)."""
    net = NetworkStore(coord.client, coord.root)
    net.ensure()
    net.create(Network("blue"))
    net.create(Subnet.from_json({"id": "blue1", "network": "blue", "cidr": CIDR}))
    ipam = Ipam(coord.client, coord.root)
    if taken:
        ipam.reserve_many("blue1", [f"api{i}" for i in range(taken)])
    return ipam


def submission(ipam: Ipam, task_id: str, names: list[str],
               pad: int = 300) -> tuple[dict[str, Any], list[VMRecord], list[dict[str, Any]], Reservations]:
    reservations = Reservations(ipam)
    plan = reserve_in_order(ipam, "blue1", names)
    assert plan is not None and len(plan.addresses) == len(names)
    reservations.by_subnet["blue1"] = plan
    task = {"taskId": task_id, "vmIds": names, "fingerprint": "f", "submittedAt": 1.0, "epoch": 1}
    vms, specs = [], []
    for name in names:
        ip = str(plan.addresses[name])
        vms.append(VMRecord.pending(name, task_id, (1.0, 1024.0, 0.0, 0.0), ip, None, "blue1", subnet_id="blue1"))
        specs.append({"id": name, "requested": [1, 1024, 0, 0], "xml": f"<domain><name>{name}</name></domain>" + " " * pad,
                      "ip": ip})
    return task, vms, specs, reservations


def sound(ipam: Ipam) -> None:
    audit = ipam.audit("blue1")
    assert not any(audit.values()), audit


async def test_each_chunk_reserves_its_vms_addresses_across_pool_chunks(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    ipam = await coord.call(setup, coord, CHUNK_BITS - 4)  # the first pool chunk has 3 free bits left
    names = [f"c{i}" for i in range(10)]
    task, vms, specs, reservations = await coord.call(submission, ipam, "t-chunks", names)
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1200)
    plan = store.plan_submission(task, vms, specs, DEFAULT_CIDR, reservations)
    assert not plan.single
    chunks = plan.chunks(1200)
    assert len(chunks) >= 3
    for chunk in chunks:  # a VM's address is reserved in the transaction that records it
        recorded = {op.path.rsplit("/", 1)[1] for op in chunk if "/vms/" in op.path}
        reserved = {op.data.decode() for op in chunk if "/addresses/" in op.path and op.kind == "create"}
        assert recorded == reserved, (recorded, reserved)
    written = await store.create_submission(task, vms, specs, DEFAULT_CIDR, epoch, reservations)
    assert written["state"] == TaskState.PENDING and written["recording"] == "chunked"
    held = await coord.call(ipam.addresses, "blue1")
    assert {g: ip for ip, g in held.items() if not g.startswith("api")} == {v.vm_id: v.ip for v in vms}
    assert len(held) == CHUNK_BITS - 4 + 10
    await coord.call(sound, ipam)


async def test_a_lost_race_with_the_api_writes_nothing(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    ipam = await coord.call(setup, coord, 0)
    task, vms, specs, reservations = await coord.call(submission, ipam, "t-race", ["r0", "r1"], 0)
    # The API reserves an address between the plan and its transaction.
    sneaky = await coord.call(Ipam(coord.client, coord.root).reserve, "blue1", "api-sneaky")
    store = Store(coord)
    with pytest.raises((AlreadyExists, Changed)):
        await store.create_submission(task, vms, specs, DEFAULT_CIDR, epoch, reservations)
    assert await store.get_task("t-race") is None
    assert await coord.call(ipam.addresses, "blue1") == {str(sneaky): "api-sneaky"}
    await coord.call(sound, ipam)


@pytest.mark.parametrize("chunks_written", [1, 3])
async def test_a_dead_leaders_recording_gives_its_addresses_back(coord: Coordinator, chunks_written: int) -> None:
    old_epoch = await coord.bump_epoch()
    ipam = await coord.call(setup, coord, CHUNK_BITS - 4)
    task, vms, specs, reservations = await coord.call(submission, ipam, "t-ghost", [f"g{i}" for i in range(10)])
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1200)
    plan = store.plan_submission(task, vms, specs, DEFAULT_CIDR, reservations)
    await store.begin_recording(plan, old_epoch)
    chunks = plan.chunks(1200)
    for chunk in chunks[:chunks_written]:
        await store.write_chunk(chunk, old_epoch)
    assert any(not g.startswith("api") for g in (await coord.call(ipam.addresses, "blue1")).values())
    # -- the leader is killed here; the next one settles the recording --
    new_epoch = await coord.bump_epoch()
    assert await store.settle_recording("t-ghost", new_epoch) is None
    held = await coord.call(ipam.addresses, "blue1")
    assert sorted(held.values()) == sorted(f"api{i}" for i in range(CHUNK_BITS - 4)), "only the API's are left"
    await coord.call(sound, ipam)
