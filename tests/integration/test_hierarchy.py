"""The self-organising hierarchy with real processes and a real ZooKeeper: formation, the
bootstrap's answers, and self-healing after kill -9 of each kind of process."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from snooze.codes import ErrorCode
from snooze.dev.localcluster import LocalCluster, assigned_lcs
from tests.support import count, get, http, metrics, wait_for

pytestmark = pytest.mark.integration


def hierarchy(c: LocalCluster) -> dict[str, Any]:
    return get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")


def leader(c: LocalCluster) -> dict[str, Any]:
    return get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")


def lc_ids(c: LocalCluster) -> set[str]:
    return {p["id"] for p in c.processes if p["role"] == "localcontroller"}


def gm_of(h: dict[str, Any]) -> dict[str, str]:
    return {lc["id"]: gm["id"] for gm in h["groupManagerDescriptions"] for lc in gm.get("localControllers", [])}


def test_cluster_forms_and_bootstrap_answers_in_the_original_shapes(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=4)
    gl = leader(c)
    assert gl["id"] in {"gm-1", "gm-2", "gm-3"}
    assert gl["epoch"] >= 1
    assert gl["listenSettings"]["controlDataAddress"]["address"] == "127.0.0.1"

    h = hierarchy(c)
    gm_ids = [gm["id"] for gm in h["groupManagerDescriptions"]]
    assert sorted(gm_ids) == sorted({"gm-1", "gm-2", "gm-3"} - {gl["id"]}), "the leader is not also a manager"
    assert assigned_lcs(h) == lc_ids(c)

    lcs = get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]
    assert {lc["id"] for lc in lcs} == lc_ids(c)
    for lc in lcs:
        assert set(lc) >= {"id", "controlDataAddress", "status", "hypervisorSettings", "totalCapacity",
                           "wakeupSettings", "hostname", "assignedVirtualMachines"}
        assert lc["status"] == "ACTIVE"
        assert lc["totalCapacity"][:2] == [8.0, 16 * 1024 * 1024.0], "8 vcpus, 16 GiB in KiB"
        assert len(lc["totalCapacity"]) == 4
        assert lc["hypervisorSettings"]["migration"]["method"] == "live"
        assert lc["controlDataAddress"]["port"] == c.process(lc["id"])["port"]


def test_round_robin_assignment_spreads_local_controllers(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=4)
    counts: dict[str, int] = {}
    for gm in gm_of(hierarchy(c)).values():
        counts[gm] = counts.get(gm, 0) + 1
    assert sorted(counts.values()) == [2, 2]


def test_kill_leader_elects_a_new_one_and_everything_rejoins(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=4, domains_per_lc=1)
    old = leader(c)
    c.kill(old["id"])

    new = wait_for(lambda: (lambda g: g if g["id"] != old["id"] else None)(leader(c)), 15, "a new leader at the bootstrap")
    assert new["epoch"] > old["epoch"], "a new term has a higher epoch"

    def healed() -> dict[str, Any] | None:
        h = hierarchy(c)
        gms = {gm["id"] for gm in h["groupManagerDescriptions"]}
        ok = assigned_lcs(h) == lc_ids(c) and new["id"] not in gms and old["id"] not in gms
        return h if ok else None

    h = wait_for(healed, 20, "every LC re-homed under the remaining group manager")
    remaining = {"gm-1", "gm-2", "gm-3"} - {old["id"], new["id"]}
    assert {gm["id"] for gm in h["groupManagerDescriptions"]} == remaining
    for gm in h["groupManagerDescriptions"]:
        for lc in gm["localControllers"]:
            assert lc["assignedVirtualMachines"] == [f"{lc['id']}-vm-1"], "domains survive the failover"


def test_kill_group_manager_rehomes_its_local_controllers_with_domains(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=4, domains_per_lc=1)
    before = gm_of(hierarchy(c))
    victim = sorted(set(before.values()))[0]
    orphans = {lc for lc, gm in before.items() if gm == victim}
    assert orphans
    c.kill(victim)

    def rehomed() -> dict[str, Any] | None:
        h = hierarchy(c)
        now = gm_of(h)
        return h if set(now) == lc_ids(c) and victim not in now.values() else None

    h = wait_for(rehomed, 20, f"LCs of {victim} re-homed")
    vms = {lc["id"]: lc["assignedVirtualMachines"] for gm in h["groupManagerDescriptions"] for lc in gm["localControllers"]}
    for lc in orphans:
        assert vms[lc] == [f"{lc}-vm-1"], "running domains are intact after re-homing"


def test_kill_local_controller_is_dropped_then_rejoins_with_same_id(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=3)
    c.kill("lc-2")
    wait_for(lambda: "lc-2" not in assigned_lcs(hierarchy(c)), 15, "lc-2 dropped by its group manager")
    assert assigned_lcs(hierarchy(c)) == {"lc-1", "lc-3"}
    c.restart("lc-2")
    wait_for(lambda: assigned_lcs(hierarchy(c)) == {"lc-1", "lc-2", "lc-3"}, 15, "lc-2 re-joined")


@pytest.mark.slow
def test_zookeeper_restart_recovers_without_restarting_snooze(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=3)
    pids = {p["id"]: p["pid"] for p in c.processes}
    c.restart_zookeeper(down_for=1.0)
    wait_for(lambda: leader(c)["id"], 20, "a leader after the ZooKeeper restart")
    wait_for(lambda: assigned_lcs(hierarchy(c)) == lc_ids(c), 20, "the whole hierarchy after the restart")
    assert {p["id"]: p["pid"] for p in c.processes} == pids, "no Snooze process was restarted"
    # Agreement works again: a new local controller is assigned and joins.
    c.add_process("localcontroller", "lc-new")
    wait_for(lambda: "lc-new" in assigned_lcs(hierarchy(c)), 20, "a new LC joins after recovery")


@pytest.mark.slow
def test_zookeeper_down_longer_than_sessions_recovers(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2)
    old = leader(c)
    c.restart_zookeeper(down_for=5.0)  # longer than the 2 s session timeout
    wait_for(lambda: assigned_lcs(hierarchy(c)) == lc_ids(c), 30, "the hierarchy after sessions expired")
    assert leader(c)["epoch"] >= old["epoch"]


def test_orders_from_an_older_epoch_are_refused(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=1)
    old = leader(c)
    c.kill(old["id"])
    new = wait_for(lambda: (lambda g: g if g["epoch"] > old["epoch"] else None)(leader(c)), 15, "new epoch")
    lc = c.process("lc-1")
    wait_for(lambda: "lc-1" in assigned_lcs(hierarchy(c)), 15, "lc-1 re-homed")
    # A host learns a new epoch from the new leader's heartbeats (or a re-join order, or its
    # join's answer), within a heartbeat interval of the leader taking office: it does not
    # watch the leader's znode (docs/architecture.md, "Fencing").
    wait_for(lambda: count(metrics(lc["port"]), "snooze_leader_epoch") == new["epoch"], 15, "lc-1 to see the new epoch")

    import asyncio

    from snooze.models import NetworkAddress
    from snooze.rpc import RpcClient, RpcError

    async def order(epoch: int) -> Any:
        client = RpcClient(c.options.key.encode(), "deposed-leader")
        try:
            return await client.call(NetworkAddress("127.0.0.1", lc["port"]), "lc.rejoin", {}, epoch=epoch)
        finally:
            await client.close()

    with pytest.raises(RpcError) as refused:
        asyncio.run(order(old["epoch"]))
    assert refused.value.code is ErrorCode.STALE_EPOCH and refused.value.status == 409
    assert asyncio.run(order(new["epoch"])) == {"ok": True}


def test_bad_requests_get_json_errors_and_garbage_datagrams_are_dropped(cluster_factory: Any) -> None:
    import socket

    c = cluster_factory(gms=2, lcs=1)
    status, body = http("GET", c.bootstrap_url + "/bootstrap?noSuchMethod")
    assert status == 404 and body["error"]["code"] == "UNKNOWN_METHOD" and body["error"]["field"] == "method"
    status, body = http("POST", c.bootstrap_url + "/bootstrap?getGroupLeaderDescription", "{}")
    assert status == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"
    status, body = http("POST", c.bootstrap_url + "/snooze/internal", b"\x00garbage")
    assert status == 400 and "error" in body
    forged = b"SZ" + b"\x00" * 32 + b"\x96\x01\xa1x\xa1y\x00\x00\xc0"
    status, body = http("POST", c.bootstrap_url + "/snooze/internal", forged)
    assert status == 401 and body["error"]["code"] == "BAD_HMAC"

    lc_port = c.process("lc-1")["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for payload in (b"", b"garbage", forged, b"SZ" + b"\xff" * 100):
            s.sendto(payload, ("127.0.0.1", lc_port))
    stats = wait_for(
        lambda: (lambda st: st if sum(st["heartbeatsDropped"].values()) >= 3 else None)(
            get(f"http://127.0.0.1:{lc_port}/localcontroller?getStatistics")
        ),
        5, "garbage datagrams counted",
    )
    assert stats["heartbeatsDropped"].get("bad_hmac", 0) >= 1
    # ... and the local controller is still in the hierarchy
    assert "lc-1" in assigned_lcs(hierarchy(c))


def test_sigterm_stops_a_process_cleanly_and_it_leaves_the_hierarchy(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2)
    c.kill("lc-1", signal.SIGTERM)
    wait_for(lambda: assigned_lcs(hierarchy(c)) == {"lc-2"}, 10, "lc-1 gone after SIGTERM")


def test_zeroconf_lets_a_local_controller_and_a_bootstrap_find_the_cluster(cluster_factory: Any) -> None:
    # Group managers advertise the cluster on loopback only; the newcomers have no ZooKeeper address.
    c = cluster_factory(gms=2, lcs=1, extra={"cluster.discovery": "zeroconf", "cluster.name": "zc-test"})
    blind = {"cluster.zookeeper": "", "cluster.discovery": "zeroconf", "cluster.name": "zc-test",
             "cluster.zeroconf_interfaces": ["127.0.0.1"]}
    c.add_process("localcontroller", "lc-zeroconf", blind)
    wait_for(lambda: "lc-zeroconf" in assigned_lcs(hierarchy(c)), 30, "the zeroconf LC joined")
    b = c.add_process("bootstrap", "bootstrap-zeroconf", blind)
    gl = wait_for(lambda: get(f"http://127.0.0.1:{b['port']}/bootstrap?getGroupLeaderDescription"), 30,
                  "the zeroconf bootstrap knows the leader")
    assert gl["id"] == leader(c)["id"]
