"""Issue 16's small version, real components: 200 local controllers in 2 processes
(``--lcs-per-process 100``), 5 group managers, a 3-server ZooKeeper ensemble. The hierarchy
forms; it survives the loss of the ensemble's leader (during a submission) and then of the
group leader; after each step every LC is assigned exactly once, every VM runs on exactly one
LC, none is lost, and no address is given twice."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import get, http, response, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LCS, PER_PROCESS, GMS = 200, 100, 5
# Slower than the suite's usual 0.5 s: 200 hosts heartbeating and reporting on a shared 2-core
# machine beside the CI run; failure detection stays a few seconds.
TIMING: dict[str, Any] = {"heartbeat_interval": 1.0, "heartbeat_timeout": 4.0, "session_timeout": 4.0,
                          "monitoring_interval": 2.0}


T = TypeVar("T")


def until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """``wait_for`` of a predicate that answers None until it holds: its value, not None."""
    got = wait_for(predicate, timeout, what)
    assert got is not None
    return got


def small(name: str) -> dict[str, Any]:
    return {"vcpus": 1, "memory": 262144, "name": name, "imageId": "debian.qcow2"}


def submit(c: LocalCluster, names: list[str]) -> str:
    status, task = http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": [small(n) for n in names]}), timeout=30)
    assert status == 200, task
    return str(task)


def assignments(c: LocalCluster) -> Counter[str]:
    """How many times each local controller appears under a group manager in the hierarchy."""
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return Counter(lc["id"] for gm in h["groupManagerDescriptions"] for lc in gm.get("localControllers") or [])


def every_lc_assigned_once(c: LocalCluster) -> Counter[str] | None:
    counts = assignments(c)
    return counts if set(counts) == {f"lc-{i}" for i in range(1, LCS + 1)} and max(counts.values()) == 1 else None


def domains(c: LocalCluster) -> Counter[str]:
    """Each VM name with the number of local controllers that report it running."""
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return Counter(vm for gm in h["groupManagerDescriptions"] for lc in gm.get("localControllers") or []
                   for vm in lc.get("assignedVirtualMachines") or [])


def check_invariants(c: LocalCluster, names: list[str]) -> None:
    """Every LC assigned once; every VM RUNNING in its record and on exactly one LC; no address twice."""
    counts = until(lambda: every_lc_assigned_once(c), 60, f"all {LCS} local controllers assigned exactly once")
    assert sum(counts.values()) == LCS

    def all_seen() -> tuple[Counter[str]] | None:
        seen = domains(c)
        return (seen,) if set(names) <= set(seen) else None  # a tuple: an empty Counter is falsy

    [seen] = until(all_seen, 60, "every VM reported by a local controller")
    twice = {n: k for n, k in seen.items() if k != 1}
    assert not twice, f"VMs on more than one local controller: {twice}"
    page = get(c.bootstrap_url + f"/bootstrap?getVirtualMachineDescriptions&limit={len(names) + 50}&v=2")
    records = {v["virtualMachineId"]: v for v in page["virtualMachines"]}
    assert set(names) <= set(records), f"lost: {sorted(set(names) - set(records))}"
    not_running = {n: records[n]["status"] for n in names if records[n]["status"] != "RUNNING"}
    assert not not_running, not_running
    addresses = Counter(v.get("ipAddress") for v in records.values() if v.get("ipAddress"))
    assert len(addresses) == len(names) and max(addresses.values(), default=1) == 1, \
        f"addresses given twice: {[a for a, k in addresses.items() if k > 1]}"


def all_running(resp: dict[str, Any], names: list[str]) -> None:
    metas = {m["virtualMachineId"]: m for m in resp["virtualMachineMetaData"]}
    assert set(metas) == set(names), "no VM missing from the response"
    failed = {k: (m["status"], m.get("errorCode")) for k, m in metas.items() if m["status"] != "RUNNING"}
    assert not failed, failed


def test_two_hundred_hosts_on_an_ensemble_survive_losing_its_leader_and_the_group_leader(cluster_factory: Any) -> None:
    t0 = time.monotonic()
    c = cluster_factory(gms=GMS, lcs=LCS, lcs_per_process=PER_PROCESS, zookeeper_ensemble=3, **TIMING)
    formed = time.monotonic() - t0
    assert c.ensemble is not None and len(c.groups()) == LCS // PER_PROCESS
    manifest = json.loads(c.manifest_path.read_text())
    assert len(manifest["zookeeperServers"]) == 3 and manifest["zookeeper"].count(",") == 2
    check_invariants(c, [])

    first = [f"s1-{i}" for i in range(60)]
    all_running(response(c, submit(c, first), timeout=60), first)
    check_invariants(c, first)

    # The ensemble's leader, killed while a submission is under way: nothing lost, nothing twice.
    # The group leader's session is SUSPENDED until its client moves to another server; it
    # refuses new work meanwhile (503, retry), and resumes what it had accepted.
    zk_leader = c.ensemble.leader()
    assert zk_leader is not None
    second = [f"s2-{i}" for i in range(60)]
    task = submit(c, second)
    t_zk = time.monotonic()
    c.ensemble.kill(zk_leader)
    wait_for(lambda: (lambda i: i is not None and i != zk_leader)(c.ensemble.leader()), 30, "a new ensemble leader")
    wait_for(lambda: http("GET", c.bootstrap_url + "/bootstrap?getGroupLeaderDescription", timeout=5)[0] == 200, 30,
             "the group leader answering again")
    zk_pause = time.monotonic() - t_zk
    # The client sends the same submission again, as one does after a lost answer: it is the
    # same task (nothing submitted twice), and a dispatch ZooKeeper interrupted goes on. Without
    # the retry a leader whose session lived on leaves it PENDING (see docs/scale.md).
    again = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(
        http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster",
             json.dumps({"virtualMachineTemplates": [small(n) for n in second]}), timeout=30)), 30, "the retry accepted")
    assert str(again) == task, "a retry is answered with the task it repeats"
    all_running(response(c, task, timeout=90), second)
    check_invariants(c, first + second)

    # The group leader, killed: a new one leads, its former hosts re-home, the VMs stay put.
    old = get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")
    t_gl = time.monotonic()
    c.kill(old["id"])
    new: dict[str, Any] = until(lambda: (lambda d: d if d["id"] != old["id"] and d["epoch"] > old["epoch"] else None)(
        get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")), 60, "a new group leader")
    answered = time.monotonic() - t_gl
    wait_for(lambda: every_lc_assigned_once(c), 60, "every local controller re-homed")
    rehomed = time.monotonic() - t_gl
    third = [f"s3-{i}" for i in range(30)]
    all_running(response(c, submit(c, third), timeout=60), third)
    check_invariants(c, first + second + third)
    print(f"\n{LCS} LCs ({PER_PROCESS} per process), {GMS} GMs, 3 ZooKeeper servers: formed in {formed:.1f}s; "
          f"ZooKeeper leader killed, a new one after {zk_pause:.1f}s; group leader {old['id']} killed, "
          f"{new['id']} answered after {answered:.1f}s, all re-homed after {rehomed:.1f}s")
