"""The virtual-cluster store against a real ZooKeeper: a submission is recorded wholly or not at
all (one transaction, or an intent record settled by the next leader), retention forgets what is
finished, and ids that break the id rule never reach ZooKeeper.

A "crash" here is a leader that stops calling the store between two steps of a recording (after
the intent record, after some chunks, before the flip), exactly what a kill -9 leaves behind; the
next leader bumps the epoch and settles."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from snooze.codes import ErrorCode, VMStatus
from snooze.coordination import Coordinator
from snooze.coordination.store import (
    DONE,
    PENDING,
    RECORDING,
    AlreadyExists,
    Changed,
    Op,
    StaleEpoch,
    Store,
    TooLarge,
    subnet_key,
)
from snooze.records import VMRecord

pytestmark = pytest.mark.integration

SUBNET = "10.9.0.0/24"




def submission(task_id: str, names: list[str], request_id: str | None = None, first_ip: int = 2,
               pad: int = 0) -> tuple[dict[str, Any], list[VMRecord], list[dict[str, Any]]]:
    task = {"taskId": task_id, "vmIds": names, "requestId": request_id, "fingerprint": "f", "submittedAt": 1.0, "epoch": 1}
    vms, specs = [], []
    for i, name in enumerate(names):
        ip = f"10.9.0.{first_ip + i}"
        vms.append(VMRecord.from_json({"virtualMachineId": name, "taskId": task_id, "status": "PENDING", "ipAddress": ip,
                                       "submittedAt": 1.0}))
        specs.append({"id": name, "requested": [1, 1024, 0, 0], "xml": f"<domain><name>{name}</name></domain>" + " " * pad,
                      "ip": ip})
    return task, vms, specs


def tree(c: Coordinator) -> dict[str, Any]:
    """Every znode the store keeps, with its data (JSON decoded where it is JSON)."""
    out: dict[str, Any] = {}
    client = c.client
    for folder in ("tasks", "requests", "vms", "vmspecs", f"ipam/{subnet_key(SUBNET)}"):
        path = c.path(*folder.split("/"))
        if not client.exists(path):
            continue
        for name in client.get_children(path):
            data, _ = client.get(f"{path}/{name}")
            try:
                out[f"{folder}/{name}"] = json.loads(data)
            except ValueError:
                out[f"{folder}/{name}"] = data.decode()
    return out


async def test_a_small_submission_is_one_transaction_and_complete(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    store = Store(coord)
    task, vms, specs = submission("t-small", [f"s{i}" for i in range(10)], request_id="req-small")
    plan = store.plan_submission(task, vms, specs, SUBNET)
    assert plan.single
    written = await store.create_submission(task, vms, specs, SUBNET, epoch)
    assert written["state"] == PENDING and written["recording"] == "single"
    t = tree(coord)
    assert t["tasks/t-small"]["state"] == PENDING
    assert t["requests/req-small"] == "t-small"
    for i in range(10):
        assert t[f"vms/s{i}"]["taskId"] == "t-small" and f"vmspecs/s{i}" in t
        assert t[f"ipam/{subnet_key(SUBNET)}/10.9.0.{2 + i}"] == f"s{i}"
    assert await store.task_for_request("req-small") == "t-small"


async def test_a_large_submission_is_an_intent_record_then_chunks_then_pending(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1500)
    task, vms, specs = submission("t-big", [f"b{i}" for i in range(10)], pad=300)
    plan = store.plan_submission(task, vms, specs, SUBNET)
    assert not plan.single and plan.task["state"] == RECORDING
    assert len(plan.chunks(1500)) >= 3
    for chunk in plan.chunks(1500):  # a VM's address, record and spec never straddle two chunks
        vm_paths = [op.path for op in chunk if "/vms/" in op.path]
        assert len([op for op in chunk if "/vmspecs/" in op.path]) == len(vm_paths)
    written = await store.create_submission(task, vms, specs, SUBNET, epoch)
    assert written["state"] == PENDING and written["recording"] == "chunked"
    t = tree(coord)
    assert t["tasks/t-big"]["state"] == PENDING
    assert all(f"vms/b{i}" in t and f"vmspecs/b{i}" in t for i in range(10))


@pytest.mark.parametrize("chunks_written", [0, 1, 3])
async def test_a_leader_dead_mid_recording_is_rolled_back_by_the_next(coord: Coordinator, chunks_written: int) -> None:
    old_epoch = await coord.bump_epoch()
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1200)
    # Another task's VM and address, which the rollback must not touch.
    other_task, other_vms, other_specs = submission("t-other", ["keep-me"], first_ip=200)
    await store.create_submission(other_task, other_vms, other_specs, SUBNET, old_epoch)
    names = [f"g{i}" for i in range(10)]
    task, vms, specs = submission("t-ghost", names, request_id="req-ghost", pad=300)
    plan = store.plan_submission(task, vms, specs, SUBNET)
    await store.begin_recording(plan, old_epoch)
    chunks = plan.chunks(1200)
    assert len(chunks) > chunks_written
    for chunk in chunks[:chunks_written]:
        await store.write_chunk(chunk, old_epoch)
    # -- the leader is killed here; a new one is elected --
    new_epoch = await coord.bump_epoch()
    with pytest.raises(StaleEpoch):
        await store.write_chunk(chunks[chunks_written], old_epoch)  # a deposed leader writes nothing
    assert (await store.get_task("t-ghost"))["state"] == RECORDING  # type: ignore[index]
    assert await store.settle_recording("t-ghost", new_epoch) is None
    t = tree(coord)
    leftovers = [k for k, v in t.items() if k.startswith(("vms/g", "vmspecs/g")) or (k.startswith("ipam/") and v.startswith("g"))]
    assert leftovers == [], leftovers
    assert "tasks/t-ghost" not in t and "requests/req-ghost" not in t
    assert t["vms/keep-me"]["taskId"] == "t-other" and t[f"ipam/{subnet_key(SUBNET)}/10.9.0.200"] == "keep-me"
    # and the client's retry records the same names afresh
    written = await store.create_submission(task, vms, specs, SUBNET, new_epoch)
    assert written["state"] == PENDING and len([k for k in tree(coord) if k.startswith("vms/g")]) == 10


async def test_a_leader_dead_after_every_chunk_is_completed_by_the_next(coord: Coordinator) -> None:
    old_epoch = await coord.bump_epoch()
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1200)
    task, vms, specs = submission("t-almost", [f"a{i}" for i in range(10)], pad=300)
    plan = store.plan_submission(task, vms, specs, SUBNET)
    await store.begin_recording(plan, old_epoch)
    for chunk in plan.chunks(1200):
        await store.write_chunk(chunk, old_epoch)
    new_epoch = await coord.bump_epoch()
    settled = await store.settle_recording("t-almost", new_epoch)
    assert settled is not None and settled["state"] == PENDING
    assert (await store.get_task("t-almost"))["state"] == PENDING  # type: ignore[index]
    assert len(await store.get_vms(f"a{i}" for i in range(10))) == 10
    # settling a task that is not RECORDING changes nothing
    assert (await store.settle_recording("t-almost", new_epoch))["state"] == PENDING  # type: ignore[index]
    assert await store.settle_recording("no-such-task", new_epoch) is None


async def test_a_failed_chunk_rolls_back_what_was_written_before_the_error(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1200)
    other_task, other_vms, other_specs = submission("t-first", ["clash"], first_ip=100)
    await store.create_submission(other_task, other_vms, other_specs, SUBNET, epoch)
    names = [f"r{i}" for i in range(9)] + ["clash"]  # the last chunk hits an existing name
    task, vms, specs = submission("t-second", names, request_id="req-second", pad=300)
    with pytest.raises(AlreadyExists):
        await store.create_submission(task, vms, specs, SUBNET, epoch)
    t = tree(coord)
    assert not [k for k in t if k.startswith("vms/r") or k.startswith("vmspecs/r")], t.keys()
    assert "tasks/t-second" not in t and "requests/req-second" not in t
    assert [v for k, v in t.items() if k.startswith("ipam/")] == ["clash"]
    assert t["vms/clash"]["taskId"] == "t-first"


async def test_one_vm_too_large_for_any_transaction_is_refused_before_writing(coord: Coordinator) -> None:
    await coord.bump_epoch()
    store = Store(coord, single_tx_bytes=3000, chunk_bytes=1500)
    task, vms, specs = submission("t-huge", ["fine", "huge"])
    specs[1]["xml"] += " " * 5000
    with pytest.raises(TooLarge) as info:
        store.plan_submission(task, vms, specs, SUBNET)
    assert info.value.index == 1


async def test_retention_forgets_finished_tasks_failed_vms_and_ghosts_only(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    store = Store(coord)
    key = subnet_key(SUBNET)
    started = time.time()
    old, vms, specs = submission("t-old", ["ok", "failed"], request_id="req-old")
    await store.create_submission(old, vms, specs, SUBNET, epoch)
    vms[0].dispatch_to("gm-1")
    vms[0].record_result(VMStatus.RUNNING, None, None, "gm-1", None, "lc-1", None, [])
    vms[1].fail(ErrorCode.NOT_ENOUGH_CAPACITY, "no room")
    await store.update_vms(vms, epoch)
    await store.set_task(dict(await store.get_task("t-old") or {}, state=DONE, finishedAt=started - 100), epoch)
    young, yvms, yspecs = submission("t-young", ["young-failed"], first_ip=50)
    await store.create_submission(young, yvms, yspecs, SUBNET, epoch)
    yvms[0].fail(ErrorCode.NOT_ENOUGH_CAPACITY, "no room")
    await store.update_vms(yvms, epoch)
    await store.set_task(dict(await store.get_task("t-young") or {}, state=DONE, finishedAt=started + 30), epoch)
    rec, rvms, rspecs = submission("t-rec", ["in-flight", "in-flight-2"], first_ip=60)
    plan = Store(coord, single_tx_bytes=1000).plan_submission(rec, rvms, rspecs, SUBNET)
    assert not plan.single
    await store.begin_recording(plan, epoch)
    # a ghost left by an older version: a PENDING VM and its address, no task
    coord.client.create(coord.path("vms", "ghost"), json.dumps({"virtualMachineId": "ghost", "taskId": "t-lost",
                                                              "status": PENDING, "ipAddress": "10.9.0.70"}).encode())
    coord.client.create(coord.path("ipam", key, "10.9.0.70"), b"ghost")
    now = started + 60

    gone = await store.expire(retention=50.0, now=now, epoch=epoch, subnet=SUBNET)
    t = tree(coord)
    assert gone == {"tasks": 1, "vms": 2}, gone
    assert "tasks/t-old" not in t and "requests/req-old" not in t
    assert "vms/failed" not in t and "vmspecs/failed" not in t and f"ipam/{key}/10.9.0.3" not in t
    assert "vms/ghost" not in t and f"ipam/{key}/10.9.0.70" not in t
    assert t["vms/ok"]["status"] == "RUNNING" and f"ipam/{key}/10.9.0.2" in t, "a running VM outlives its task"
    assert "tasks/t-young" in t and "vms/young-failed" in t, "within the retention: still answerable"
    assert t["tasks/t-rec"]["state"] == RECORDING, "an unsettled recording is not the sweep's to expire"
    # the freed name can be submitted again
    again, avms, aspecs = submission("t-again", ["failed"], first_ip=3)
    assert (await store.create_submission(again, avms, aspecs, SUBNET, epoch))["state"] == PENDING


async def test_errors_are_recognised_by_class_not_by_name(coord: Coordinator) -> None:
    epoch = await coord.bump_epoch()
    store = Store(coord)
    coord.client.ensure_path(coord.path("vms", "x"))
    with pytest.raises(AlreadyExists):
        await coord.call(store._tx, [Op("create", coord.path("vms", "x"))], epoch)
    with pytest.raises(Changed):
        await coord.call(store._tx, [Op("set", coord.path("vms", "x"), b"{}", version=7)], epoch)
    with pytest.raises(Changed):
        await coord.call(store._tx, [Op("delete", coord.path("vms", "nope"))], epoch)
    with pytest.raises(StaleEpoch):
        await coord.call(store._tx, [Op("set", coord.path("vms", "x"), b"{}")], epoch - 1)


BAD_IDS = ["", ".", "..", "a/b", "a\n", "\ud800", "x" * 64, "-lead", "a b", None, 3]


async def test_ids_that_break_the_rule_never_reach_zookeeper(coord: Coordinator) -> None:
    await coord.bump_epoch()
    store = Store(coord)
    for bad in BAD_IDS:
        assert await store.get_vm(bad) is None  # type: ignore[arg-type]
        assert await store.get_task(bad) is None  # type: ignore[arg-type]
        assert await store.get_spec(bad) is None  # type: ignore[arg-type]
        assert await store.destination(bad) is None  # type: ignore[arg-type]
        assert await store.woken_by(bad) is None  # type: ignore[arg-type]
        assert await store.task_for_request(bad) is None  # type: ignore[arg-type]
        assert await store.settle_recording(bad, 1) is None  # type: ignore[arg-type]
        await store.delete_vm(bad, SUBNET)  # type: ignore[arg-type]
        await store.clear_wakeup(bad)  # type: ignore[arg-type]
    assert await store.get_vms(["..", "\ud800", "ok-but-absent"]) == {}
    with pytest.raises(ValueError):
        await store.mark_wakeup("..", "gm-1")
    assert coord.connected and await coord.call(coord.client.exists, coord.path("epoch")) is not None


async def test_many_ids_are_read_from_the_folders_listing_the_few_present_read_whole(coord: Coordinator) -> None:
    """A big submission checks its names: past LIST_FIRST ids, the listing says which exist and
    only those are read (the answer is the same as reading each)."""
    epoch = await coord.bump_epoch()
    store = Store(coord)
    task, vms, specs = submission("t-few", ["p3", "p70", "p199"])
    await store.create_submission(task, vms, specs, SUBNET, epoch)
    asked = [f"p{i}" for i in range(200)] + ["..", "p70"]
    fetched: list[str] = []
    fetch = coord.fetch

    def counting(paths: Any, window: int = 1000) -> dict[str, tuple[bytes, int]]:
        paths = list(paths)
        fetched.extend(paths)
        return fetch(paths, window)

    coord.fetch = counting  # type: ignore[method-assign]
    try:
        found = await store.get_vms(asked)
        specs_found = await store.get_specs(asked)
        few = await store.get_vms(["p3", "p4"])  # under LIST_FIRST: read directly
    finally:
        del coord.fetch
    assert {k: (v.task_id, v.ip) for k, v in found.items()} == {
        "p3": ("t-few", "10.9.0.2"), "p70": ("t-few", "10.9.0.3"), "p199": ("t-few", "10.9.0.4")}
    assert set(specs_found) == {"p3", "p70", "p199"} and set(few) == {"p3"}
    assert len(fetched) == 4 + 4 + 2, "only the present ones of a long list are read (p70, asked twice, twice)"
