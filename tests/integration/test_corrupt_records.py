"""A VM record no leader can read (garbage bytes, or the shape an older version wrote) must not
take any leader down: on a real cluster with unfinished submissions whose records include such
a VM, the leader is killed twice; each new leader resumes the submissions and stays up, the
unreadable VM is reported ERROR with the reason, and every other VM of every task starts.

Before the role scope (issue 9) a submission's resume ran as a root task: the first leader to
read an older-format record crashed, and so did the next one, around the whole cluster."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from snooze.coordination import Coordinator
from snooze.coordination.store import Store
from snooze.dev.localcluster import LocalCluster
from snooze.procs import running
from snooze.records import VMRecord
from tests.support import leader_id, response, wait_for

pytestmark = pytest.mark.integration

ROOT = "/snooze"
SUBNET = "192.168.122.0/24"
MEMORY = 131072




def plant(c: LocalCluster, tasks: dict[str, list[str]], corrupt: dict[str, bytes], first_ip: int) -> None:
    """Record ``tasks`` (task id -> VM names) as a leader that died right after recording them
    would leave them (PENDING, nothing dispatched), then overwrite the records of ``corrupt``."""
    assert c.zk is not None
    address = c.zk.address

    async def go() -> None:
        coord = Coordinator(address, root=ROOT, session_timeout=4.0)
        await coord.start(wait=15)
        try:
            _data, stat = await coord.call(coord.client.get, coord.path("epoch"))
            store = Store(coord)
            ip = first_ip
            for task_id, names in tasks.items():
                task = {"taskId": task_id, "vmIds": names, "requestId": None, "fingerprint": "planted",
                        "submittedAt": time.time(), "epoch": 0}
                vms, specs = [], []
                for name in names:
                    addr = f"192.168.122.{ip}"
                    ip += 1
                    vms.append(VMRecord.pending(name, task_id, (1.0, float(MEMORY), 0.0, 0.0), addr, None))
                    specs.append({"id": name, "requested": [1.0, float(MEMORY), 0.0, 0.0], "imageId": "debian.qcow2",
                                  "hostId": None, "ip": addr, "mac": None,
                                  "xml": f'<domain type="test"><name>{name}</name><memory>{MEMORY}</memory>'
                                         "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"})
                await store.create_submission(task, vms, specs, SUBNET, stat.version)
            for name, data in corrupt.items():
                await coord.call(coord.client.set, coord.path("vms", name), data)
        finally:
            await coord.stop()

    asyncio.run(go())


def assert_leader_stays_up(c: LocalCluster, gm_id: str) -> None:
    spec = c.process(gm_id)
    assert running(spec.get("pid"), spec["config"]), f"{gm_id} died after resuming the submissions"
    assert leader_id(c) == gm_id, f"{gm_id} no longer leads"


def fail_over(c: LocalCluster) -> str:
    old = leader_id(c)
    c.kill(old)
    new = wait_for(lambda: (lid := leader_id(c)) != old and lid, 30, "a new leader")
    c.restart(old)
    return str(new)


def test_an_unreadable_vm_record_crashes_no_leader(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2, lc_cpus=16, lc_memory_gib=16)
    # An older version's record: another field set, no "status"; and bytes that are not JSON.
    older = {"virtualMachineId": "old-1", "taskId": "task-old", "state": "PENDING", "requested": [1, MEMORY]}
    rounds = [
        ({"task-old": ["old-0", "old-1"], "task-fine-a": ["fine-a0", "fine-a1"]},
         {"old-1": json.dumps(older).encode()}, 200),
        ({"task-junk": ["junk-0", "junk-1"], "task-fine-b": ["fine-b0"]},
         {"junk-1": b"\x00{not json", "junk-0": b'["a", "list"]'}, 220),
    ]
    for tasks, corrupt, first_ip in rounds:
        plant(c, tasks, corrupt, first_ip)
        leader = fail_over(c)
        for task_id, names in tasks.items():
            metas = {m["virtualMachineId"]: m for m in response(c, task_id, timeout=90)["virtualMachineMetaData"]}
            assert set(metas) == set(names), (task_id, sorted(metas))
            for name, meta in metas.items():
                if name in corrupt:
                    assert meta["status"] == "ERROR" and meta["errorCode"], meta
                    assert "record" in str(meta["message"]), meta
                else:
                    assert meta["status"] == "RUNNING", meta
        time.sleep(1.0)  # a crash would follow the resume within moments
        assert_leader_stays_up(c, leader)
