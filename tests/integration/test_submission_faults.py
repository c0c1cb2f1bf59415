"""Faults during a submission must not lose or strand anything (issue 8), on a real local
cluster: the leader killed (kill -9) at random moments of a 10-VM submission, a client's retry
recognised (with and without a requestId), a dead leader's half-recorded submission settled, and
finished submissions forgotten after the retention so ZooKeeper does not grow without bound."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from snooze.coordination import Coordinator
from snooze.coordination.store import PENDING, RECORDING, Store
from snooze.dev.localcluster import LocalCluster
from snooze.records import VMRecord
from tests.support import get, http, leader_id, response, wait_for

pytestmark = pytest.mark.integration

ROOT = "/snooze"
SUBNET = "192.168.122.0/24"


def small(name: str, vcpus: int = 1, memory: int = 131072) -> dict[str, Any]:
    return {"vcpus": vcpus, "memory": memory, "name": name, "imageId": "debian.qcow2"}




def submit_until_accepted(c: LocalCluster, body: dict[str, Any], deadline: float = 90) -> tuple[str, list[Any]]:
    """Submit like a careful client: retry on 5xx and dropped connections, never on 4xx."""
    attempts: list[Any] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            status, answer = http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster", json.dumps(body), timeout=70)
        except OSError as exc:
            attempts.append(repr(exc))
            time.sleep(0.3)
            continue
        attempts.append(status)
        if status == 200:
            return str(answer), attempts
        assert status >= 500, f"a retry was refused: {status} {answer} (attempts {attempts})"
        time.sleep(0.3)
    raise AssertionError(f"never accepted: {attempts}")


def domains_everywhere(c: LocalCluster) -> list[str]:
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return [vm for gm in h["groupManagerDescriptions"] for lc in gm["localControllers"] for vm in lc["assignedVirtualMachines"]]


@pytest.fixture
def zk_reader(request: pytest.FixtureRequest) -> Iterator[Any]:
    clients: list[KazooClient] = []

    def connect(c: LocalCluster) -> KazooClient:
        assert c.zk is not None
        client = KazooClient(hosts=c.zk.address)
        client.start(timeout=15)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            client.stop()
            client.close()


def records(zk: KazooClient) -> dict[str, dict[str, Any]]:
    """folder -> name -> data of what the store keeps (ipam data is the VM id)."""
    out: dict[str, dict[str, Any]] = {}
    ipam = f"{ROOT}/ipam/{SUBNET.replace('/', '_')}"
    for folder, path in (("tasks", f"{ROOT}/tasks"), ("requests", f"{ROOT}/requests"), ("vms", f"{ROOT}/vms"),
                         ("vmspecs", f"{ROOT}/vmspecs"), ("ipam", ipam)):
        out[folder] = {}
        if not zk.exists(path):
            continue
        for name in zk.get_children(path):
            data, _ = zk.get(f"{path}/{name}")
            out[folder][name] = data.decode() if folder in ("ipam", "requests") else json.loads(data)
    return out


def assert_nothing_stranded(zk: KazooClient) -> dict[str, dict[str, Any]]:
    r = records(zk)
    for ip, vm_id in r["ipam"].items():
        assert vm_id in r["vms"], f"address {ip} is held by {vm_id}, which does not exist"
        assert r["vms"][vm_id].get("ipAddress") == ip, f"address {ip} is held by {vm_id}, which has {r['vms'][vm_id].get('ipAddress')}"
    for vm_id, rec in r["vms"].items():
        task = r["tasks"].get(rec.get("taskId"))
        if rec.get("status") == PENDING:
            assert task is not None, f"{vm_id} is PENDING without a task"
        assert vm_id in r["vmspecs"], f"{vm_id} has no spec"
    for task_id, task in r["tasks"].items():
        assert task["state"] != RECORDING, f"{task_id} is still RECORDING"
    for key, task_id in r["requests"].items():
        assert task_id in r["tasks"], f"request {key} names a task that does not exist"
    return r


@pytest.mark.parametrize("recording", ["single", "chunked"])
def test_leader_killed_at_random_moments_of_a_submission_loses_and_strands_nothing(
        cluster_factory: Any, zk_reader: Any, recording: str) -> None:
    # transaction_bytes 4096 makes a 10-VM submission an intent record plus about ten chunks.
    extra = {"groupmanager.transaction_bytes": 4096} if recording == "chunked" else {}
    c = cluster_factory(gms=3, lcs=2, lc_cpus=64, lc_memory_gib=64, extra=extra)
    zk = zk_reader(c)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    all_names: list[str] = []
    for round_ in range(3):
        names = [f"k{recording[0]}{round_}-{i}" for i in range(10)]
        all_names += names
        body: dict[str, Any] = {"virtualMachineTemplates": [small(n) for n in names]}
        if round_ != 1:  # round 1 retries without an idempotency key: same names and templates
            body["requestId"] = f"req-{recording}-{round_}-{seed}"
        victim = leader_id(c)
        delay = rng.uniform(0.0, 0.3 if recording == "single" else 0.1)
        outcome: dict[str, Any] = {}

        def client(body: dict[str, Any] = body, outcome: dict[str, Any] = outcome) -> None:
            try:
                outcome["task"], outcome["attempts"] = submit_until_accepted(c, body)
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        t = threading.Thread(target=client)
        t.start()
        time.sleep(delay)
        c.kill(victim)
        t.join(120)
        where = f"round {round_}, kill after {delay:.3f}s (seed {seed})"
        assert "error" not in outcome, f"{where}: {outcome.get('error')}"
        wait_for(lambda victim=victim: leader_id(c) != victim, 30, "a new leader")
        c.restart(victim)
        resp = response(c, outcome["task"], timeout=90)
        metas = {m["virtualMachineId"]: m for m in resp["virtualMachineMetaData"]}
        assert set(metas) == set(names), f"{where}: {sorted(metas)}"
        not_running = {k: (m["status"], m["errorCode"]) for k, m in metas.items() if m["status"] != "RUNNING"}
        assert not not_running, f"{where}: {not_running} (attempts {outcome['attempts']})"
        r = assert_nothing_stranded(zk)
        owners = {r["vms"][n]["taskId"] for n in names}
        assert owners == {outcome["task"]}, f"{where}: recorded more than once: {owners}"
        assert r["tasks"][outcome["task"]]["recording"] == recording

    def all_seen() -> list[str] | None:
        seen = domains_everywhere(c)
        return seen if set(all_names) <= set(seen) else None

    seen = wait_for(all_seen, 30, "every VM visible in the hierarchy")
    for n in all_names:
        assert seen.count(n) == 1, f"{n} runs {seen.count(n)} times (seed {seed})"
    r = assert_nothing_stranded(zk)
    assert len(set(r["ipam"])) == len(all_names) == len(r["ipam"])


def test_a_retry_is_answered_with_the_same_task_never_refused_as_a_duplicate(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=1)
    b = c.bootstrap_url + "/bootstrap?startVirtualCluster"
    keyed = {"virtualMachineTemplates": [small("idem-1"), small("idem-2")], "requestId": "client-42-attempt"}
    status, first = http("POST", b, json.dumps(keyed))
    assert status == 200, first
    for _ in range(2):  # while it runs and after
        assert http("POST", b, json.dumps(keyed)) == (200, first)
        response(c, first)
    # no key: the same names and templates are the same submission
    plain = {"virtualMachineTemplates": [small("plain-1")]}
    status, task = http("POST", b, json.dumps(plain))
    assert status == 200
    response(c, task)
    assert http("POST", b, json.dumps(plain)) == (200, task)
    # but other templates under the same names, or the same key, are not a retry
    code, err = http("POST", b, json.dumps({"virtualMachineTemplates": [small("plain-1", vcpus=2)]}))
    assert code == 409 and err["error"]["code"] == "VIRTUAL_MACHINE_EXISTS", err
    code, err = http("POST", b, json.dumps({"virtualMachineTemplates": [small("other")], "requestId": "client-42-attempt"}))
    assert code == 409 and err["error"]["code"] == "REQUEST_ID_REUSED" and err["error"]["field"] == "requestId", err
    # a keyless request none of whose VMs started is tried afresh when sent again; with a key it
    # is the same request, answered with the same outcome
    hopeless = {"virtualMachineTemplates": [small("hopeless", vcpus=64)]}
    status, failed = http("POST", b, json.dumps(hopeless))
    assert status == 200 and response(c, failed)["errorCode"] == "NO_VIRTUAL_MACHINE_STARTED"
    status, fresh = http("POST", b, json.dumps(hopeless))
    assert status == 200 and fresh != failed
    response(c, fresh)
    keyed_hopeless = {"virtualMachineTemplates": [small("hopeless-k", vcpus=64)], "requestId": "hopeless-1"}
    status, failed = http("POST", b, json.dumps(keyed_hopeless))
    assert status == 200
    response(c, failed)
    assert http("POST", b, json.dumps(keyed_hopeless)) == (200, failed)
    for bad in ("a/b", "..", "a\n", 7, "x" * 64):
        code, err = http("POST", b, json.dumps({"virtualMachineTemplates": [small("bad-key")], "requestId": bad}))
        assert code == 400 and err["error"]["field"] == "requestId", (bad, err)
    assert http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", "bad-key")[0] == 404


def _plant(c: LocalCluster, names: list[str], request_id: str, chunks: int | None, first_ip: int) -> tuple[str, int]:
    """Write what a leader killed mid-recording leaves: an intent record and ``chunks`` chunks
    (all of them when None), with the current epoch. Returns (task id, number of chunks)."""
    assert c.zk is not None

    async def go() -> tuple[str, int]:
        coord = Coordinator(c.zk.address if c.zk else "", root=ROOT, session_timeout=4.0)
        await coord.start(wait=15)
        try:
            data, stat = await coord.call(coord.client.get, coord.path("epoch"))
            store = Store(coord, single_tx_bytes=3000, chunk_bytes=1500)
            task_id = f"planted-{request_id}"
            task = {"taskId": task_id, "vmIds": names, "requestId": request_id, "fingerprint": "from-an-older-attempt",
                    "submittedAt": time.time(), "epoch": int(data)}
            vms, specs = [], []
            for i, name in enumerate(names):
                ip = f"192.168.122.{first_ip + i}"
                vms.append(VMRecord.pending(name, task_id, (1.0, 131072.0, 0.0, 0.0), ip, None))
                specs.append({"id": name, "requested": [1.0, 131072.0, 0.0, 0.0], "imageId": "debian.qcow2", "hostId": None,
                              "ip": ip, "mac": None,
                              "xml": f'<domain type="test"><name>{name}</name><memory>131072</memory><vcpu>1</vcpu>'
                                     f'<os><type>hvm</type></os>{" " * 600}</domain>'})
            plan = store.plan_submission(task, vms, specs, SUBNET)
            assert not plan.single
            await store.begin_recording(plan, stat.version)
            all_chunks = plan.chunks(1500)
            for chunk in all_chunks[: len(all_chunks) if chunks is None else chunks]:
                await store.write_chunk(chunk, stat.version)
            return task_id, len(all_chunks)
        finally:
            await coord.stop()

    return asyncio.run(go())


def test_a_half_recorded_submission_is_rolled_back_and_the_retry_recorded_afresh(cluster_factory: Any, zk_reader: Any) -> None:
    c = cluster_factory(gms=2, lcs=2, lc_cpus=32)
    zk = zk_reader(c)
    names = [f"half-{i}" for i in range(10)]
    planted, total = _plant(c, names, "req-half", chunks=3, first_ip=150)
    assert total > 3
    before = records(zk)
    assert before["tasks"][planted]["state"] == RECORDING and len([n for n in before["vms"] if n.startswith("half-")]) >= 3
    # The client, who never got an answer, retries with its key.
    body = {"virtualMachineTemplates": [small(n) for n in names], "requestId": "req-half"}
    task, attempts = submit_until_accepted(c, body, deadline=30)
    assert attempts == [200] and task != planted
    metas = response(c, task)["virtualMachineMetaData"]
    assert sorted(m["virtualMachineId"] for m in metas) == names and all(m["status"] == "RUNNING" for m in metas)
    r = assert_nothing_stranded(zk)
    assert planted not in r["tasks"] and r["requests"]["req-half"] == task
    assert not [ip for ip in r["ipam"] if int(ip.rsplit(".", 1)[1]) >= 150], "the dead recording's addresses were freed"


def test_a_wholly_written_recording_is_completed_by_the_next_leader(cluster_factory: Any, zk_reader: Any) -> None:
    c = cluster_factory(gms=3, lcs=2, lc_cpus=32)
    zk = zk_reader(c)
    names = [f"whole-{i}" for i in range(6)]
    old = leader_id(c)
    planted, _ = _plant(c, names, "req-whole", chunks=None, first_ip=120)
    c.kill(old)  # it dies right after writing the last chunk, before flipping the task to PENDING
    wait_for(lambda: leader_id(c) != old, 30, "a new leader")
    metas = response(c, planted, timeout=60)["virtualMachineMetaData"]
    assert sorted(m["virtualMachineId"] for m in metas) == names and all(m["status"] == "RUNNING" for m in metas), metas
    assert_nothing_stranded(zk)
    assert sorted(v for v in domains_everywhere(c) if v.startswith("whole-")) == names


def test_finished_submissions_and_failed_vms_are_forgotten_after_the_retention(cluster_factory: Any, zk_reader: Any) -> None:
    c = cluster_factory(gms=2, lcs=1, extra={"groupmanager.task_retention": 2.0})
    zk = zk_reader(c)
    b = c.bootstrap_url + "/bootstrap"
    body = {"virtualMachineTemplates": [small("kept"), small("too-big", vcpus=64)], "requestId": "ret-1"}
    status, task = http("POST", b + "?startVirtualCluster", json.dumps(body))
    assert status == 200
    resp = response(c, task)  # answered while within the retention
    by_id = {m["virtualMachineId"]: m for m in resp["virtualMachineMetaData"]}
    assert by_id["kept"]["status"] == "RUNNING" and by_id["too-big"]["errorCode"] == "NOT_ENOUGH_CAPACITY"

    def forgotten() -> bool:
        code, _ = http("POST", b + "?getVirtualClusterResponse", task)
        return code == 404

    wait_for(forgotten, 30, "the finished task to expire")
    r = records(zk)
    assert task not in r["tasks"] and "ret-1" not in r["requests"]
    assert "too-big" not in r["vms"] and "too-big" not in r["vmspecs"]
    assert r["vms"]["kept"]["status"] == "RUNNING", "a running VM's record outlives its task"
    assert http("POST", b + "?getVirtualMachineMetaData", "kept")[1]["status"] == "RUNNING"
    # the failed VM's name, and a destroyed VM's name, can be used again
    assert http("POST", b + "?destroyVirtualMachine", "kept") == (200, True)
    status, again = http("POST", b + "?startVirtualCluster", json.dumps({"virtualMachineTemplates": [small("too-big"), small("kept")]}))
    assert status == 200, again
    assert all(m["status"] == "RUNNING" for m in response(c, again)["virtualMachineMetaData"])
    # and submit/destroy cycles leave ZooKeeper as small as it was
    for i in range(8):
        status, t = http("POST", b + "?startVirtualCluster", json.dumps({"virtualMachineTemplates": [small(f"cycle-{i}")]}))
        assert status == 200
        response(c, t)
        assert http("POST", b + "?destroyVirtualMachine", f"cycle-{i}") == (200, True)
    wait_for(lambda: not records(zk)["tasks"], 30, "every finished task forgotten")
    r = assert_nothing_stranded(zk)
    assert sorted(r["vms"]) == ["kept", "too-big"] and sorted(r["ipam"].values()) == ["kept", "too-big"]


def test_a_ghost_left_by_an_older_version_does_not_block_its_name(cluster_factory: Any, zk_reader: Any) -> None:
    # What the issue saw: VMs PENDING for ever, holding addresses, with no task to dispatch them.
    c = cluster_factory(gms=2, lcs=1)
    zk = zk_reader(c)
    ipam = f"{ROOT}/ipam/{SUBNET.replace('/', '_')}"
    zk.ensure_path(ipam)
    zk.create(f"{ROOT}/vms/ghost-1", json.dumps({"virtualMachineId": "ghost-1", "taskId": "lost-task", "status": PENDING,
                                                 "ipAddress": "192.168.122.200"}).encode(), makepath=True)
    zk.create(f"{ipam}/192.168.122.200", b"ghost-1")
    status, task = http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": [small("ghost-1")]}))
    assert status == 200, task
    [meta] = response(c, task)["virtualMachineMetaData"]
    assert meta["status"] == "RUNNING" and meta["ipAddress"] != "192.168.122.200"
    r = assert_nothing_stranded(zk)
    assert "192.168.122.200" not in r["ipam"]
