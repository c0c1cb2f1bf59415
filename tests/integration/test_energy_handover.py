"""Sleeping hosts outlive their group manager, and local controllers are kept balanced across
group managers: on the energy local cluster (every host under a simulated IPMI BMC), with real
processes killed and added (docs/energy-handover.md)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import get, leader_id, wait_for
from tests.support import run_virtual_cluster as run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")


def until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """``wait_for``, typed for predicates that answer None until they answer."""
    value = wait_for(predicate, timeout, what, interval)
    assert value is not None
    return value


def chassis(port: int, password: str) -> str:
    out = subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", "admin", "-P", password,
                          "chassis", "power", "status"], capture_output=True, text=True, timeout=20)
    return out.stdout.strip()


def lcs(c: LocalCluster) -> dict[str, dict[str, Any]]:
    return {lc["id"]: lc for lc in get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]}




def test_sleeping_hosts_of_a_killed_group_manager_are_adopted_and_woken_by_another(cluster_factory: Any) -> None:
    # A leader and two group managers; four hosts, two per manager, one of each kept on.
    c = cluster_factory(gms=3, lcs=4, energy=True, idle_time=1.0, reserved_nodes=1)
    bmc = {p["id"]: p["bmcPort"] for p in c.processes if p.get("bmcPort")}
    asleep = until(lambda: (lambda s: s if Counter(lc["status"] for lc in s.values()) == {"ACTIVE": 2, "PASSIVE": 2}
                               else None)(lcs(c)), 30, "two idle hosts powered down, one per group manager kept on")
    victim = next(lc["groupManagerId"] for lc in asleep.values() if lc["status"] == "PASSIVE")
    assert victim != leader_id(c)
    orphaned = sorted(k for k, lc in asleep.items() if lc["status"] == "PASSIVE" and lc["groupManagerId"] == victim)
    assert orphaned
    for lc_id in orphaned:
        port = bmc[lc_id]
        wait_for(lambda: chassis(port, c.options.bmc_password) == "Chassis Power is off", 10,  # noqa: B023
                 f"{lc_id}'s BMC: power off")

    t0 = time.monotonic()
    c.kill(victim)

    def adopted() -> dict[str, dict[str, Any]] | None:
        now = lcs(c)
        ok = all(k in now and now[k]["status"] == "PASSIVE" and now[k]["groupManagerId"] not in (victim, None)
                 for k in orphaned)
        return now if ok else None

    now = until(adopted, 20, f"{victim}'s sleeping hosts {orphaned} listed PASSIVE under another group manager",
                   interval=0.05)
    elapsed = time.monotonic() - t0
    bound = c.options.heartbeat_timeout + 2.0
    print(f"\nsleeping hosts {orphaned} of killed {victim} counted again as PASSIVE under "
          f"{sorted({now[k]['groupManagerId'] for k in orphaned})} after {elapsed:.2f}s (bound {bound:g}s)")
    # The time is a figure to read (the target is a benchmark's, not a test's); the test
    # asserts the adoption itself, within the generous wait above.
    adopter = now[orphaned[0]]["groupManagerId"]
    for lc_id in orphaned:
        assert chassis(bmc[lc_id], c.options.bmc_password) == "Chassis Power is off", "adopting wakes nothing"
    # Its awake host re-joins the survivor too: four hosts, all with the one group manager left.
    until(lambda: (lambda s: len(s) == 4 and {lc["groupManagerId"] for lc in s.values()} == {adopter})(lcs(c)), 30,
             "every host with the surviving group manager")

    # Four VMs that each need a whole host: both sleeping hosts are woken, the adopted one by
    # its new group manager, over IPMI.
    resp = run(c, [{"name": f"big-{i}", "vcpus": 6, "memory": 1048576} for i in range(4)])
    metas = resp["virtualMachineMetaData"]
    assert all(m["status"] == "RUNNING" for m in metas), [(m["virtualMachineId"], m["errorCode"], m["message"]) for m in metas]
    where = {m["virtualMachineLocation"]["localControllerId"] for m in metas}
    assert where == set(bmc), "each VM on its own host, the adopted sleeping ones included"
    for lc_id in orphaned:
        assert chassis(bmc[lc_id], c.options.bmc_password) == "Chassis Power is on", f"{lc_id} woken over IPMI"
    # A woken host re-joins its manager; the list shows it again once its summary arrives.
    until(lambda: (lambda f: f if all(k in f and f[k]["status"] == "ACTIVE" and f[k]["groupManagerId"] == adopter
                                      for k in orphaned) else None)(lcs(c)), 20, f"{orphaned} ACTIVE under {adopter}")


def per_gm(c: LocalCluster) -> dict[str, int]:
    h = c.hierarchy()
    assert h is not None
    return {gm["id"]: len(gm.get("localControllers") or []) for gm in h["groupManagerDescriptions"]}


def vm_places(c: LocalCluster) -> dict[str, tuple[str, str]]:
    """vm id -> (host, state) from every host's live domains."""
    out: dict[str, tuple[str, str]] = {}
    for lc_id, lc in lcs(c).items():
        for name, meta in (lc.get("virtualMachineMetaData") or {}).items():
            out[name] = (lc_id, str(meta.get("status")))
    return out


def test_local_controllers_spread_over_group_managers_added_later_without_disturbing_vms(cluster_factory: Any) -> None:
    # One group manager besides the leader holds all six hosts, with VMs on them.
    c = cluster_factory(gms=2, lcs=6, extra={"groupmanager.rebalance_interval": 1.0, "groupmanager.rebalance_moves": 2,
                                             "groupmanager.rebalance_quiet": 2.0})
    until(lambda: len(lcs(c)) == 6, 30, "six hosts joined")
    resp = run(c, [{"name": f"vm-{i}", "vcpus": 1, "memory": 262144} for i in range(6)])
    assert all(m["status"] == "RUNNING" for m in resp["virtualMachineMetaData"]), resp
    before_vms = until(lambda: (lambda v: v if len(v) == 6 else None)(vm_places(c)), 10, "six VMs listed")
    before = per_gm(c)
    assert sorted(before.values()) == [6], before

    extra = {"groupmanager.rebalance_interval": 1.0, "groupmanager.rebalance_moves": 2, "groupmanager.rebalance_quiet": 2.0}
    t0 = time.monotonic()
    c.add_process("groupmanager", "gm-3", extra)
    c.add_process("groupmanager", "gm-4", extra)

    def balanced() -> dict[str, int] | None:
        counts = per_gm(c)
        return counts if len(counts) == 3 and sum(counts.values()) == 6 and max(counts.values()) - min(counts.values()) <= 1 else None

    after = until(balanced, 60, "local controllers spread within one of the mean", interval=0.2)
    print(f"\nlocal controllers per group manager before {before}, after {after} "
          f"({time.monotonic() - t0:.1f}s after adding two group managers)")
    mean = 6 / 3
    assert all(abs(n - mean) <= 1 for n in after.values()), after
    # No VM disturbed: each still runs, on the host it ran on.
    after_vms = until(lambda: (lambda v: v if len(v) == 6 else None)(vm_places(c)), 10, "six VMs listed")
    assert after_vms == before_vms, (before_vms, after_vms)
    assert all(state == "RUNNING" for _host, state in after_vms.values())
    time.sleep(3.0)  # several more rounds: balanced stays balanced, nothing moves back and forth
    assert max(per_gm(c).values()) - min(per_gm(c).values()) <= 1


def test_the_group_manager_holding_most_local_controllers_is_not_elected(cluster_factory: Any) -> None:
    # A leader and a manager M holding four hosts; a third group manager N, added later (so
    # queued behind M for the election lock), gets the one host that joins after it.
    extra = {"groupmanager.rebalance_interval": 0.0, "groupmanager.assignment_policy": "balanced"}
    c = cluster_factory(gms=2, lcs=4, extra=extra)
    until(lambda: len(lcs(c)) == 4, 30, "four hosts joined")
    leader = leader_id(c)
    (m,) = [p["id"] for p in c.processes if p["role"] == "groupmanager" and p["id"] != leader]
    c.add_process("groupmanager", "gm-n", extra)
    until(lambda: "gm-n" in per_gm(c), 30, "gm-n joined")
    c.add_process("localcontroller", "lc-5")
    before = until(lambda: (lambda n: n if n == {m: 4, "gm-n": 1} else None)(per_gm(c)), 30, "lc-5 with gm-n")

    c.kill(leader)
    new = until(lambda: (lambda h: h != leader and h)(leader_id(c)), 30, "a new leader")
    after = until(lambda: (lambda n: n if sum(n.values()) == 5 else None)(per_gm(c)), 30, "every host with a manager")
    print(f"\nlocal controllers per group manager before the leader died {before}; new leader {new}; after {after}")
    assert new == "gm-n", f"{m}, holding 4 local controllers, should have stepped aside for gm-n, holding 1"
    assert after == {m: 5}


def test_rebalancing_moves_sleeping_hosts_first_and_their_new_manager_wakes_them(cluster_factory: Any) -> None:
    # A leader and one manager M with four hosts, three of them asleep; a second manager N added.
    extra = {"groupmanager.rebalance_interval": 1.0, "groupmanager.rebalance_moves": 2, "groupmanager.rebalance_quiet": 2.0}
    c = cluster_factory(gms=2, lcs=4, energy=True, idle_time=1.0, reserved_nodes=1, extra=extra)
    bmc = {p["id"]: p["bmcPort"] for p in c.processes if p.get("bmcPort")}
    start = until(lambda: (lambda s: s if Counter(lc["status"] for lc in s.values()) == {"ACTIVE": 1, "PASSIVE": 3}
                              else None)(lcs(c)), 30, "three idle hosts powered down")
    (m,) = {lc["groupManagerId"] for lc in start.values()}
    c.add_process("groupmanager", "gm-n", extra)

    def spread() -> dict[str, dict[str, Any]] | None:
        now = lcs(c)
        return now if Counter(lc["groupManagerId"] for lc in now.values()) == {m: 2, "gm-n": 2} else None

    after = until(spread, 40, "two hosts moved to gm-n")
    moved = sorted(k for k, lc in after.items() if lc["groupManagerId"] == "gm-n")
    print(f"\nper manager before {{{m!r}: 4}}, after {dict(Counter(lc['groupManagerId'] for lc in after.values()))}; "
          f"moved asleep: {moved}")
    assert all(after[k]["status"] == "PASSIVE" for k in moved), "sleeping hosts are moved first, and stay asleep"
    assert [k for k, lc in after.items() if lc["status"] == "ACTIVE"] == [k for k, lc in start.items() if lc["status"] == "ACTIVE"]
    for lc_id in moved:
        assert chassis(bmc[lc_id], c.options.bmc_password) == "Chassis Power is off"

    # Every host needed: gm-n wakes the two it was given, over IPMI.
    resp = run(c, [{"name": f"big-{i}", "vcpus": 6, "memory": 1048576} for i in range(4)])
    metas = resp["virtualMachineMetaData"]
    assert all(m_["status"] == "RUNNING" for m_ in metas), [(x["virtualMachineId"], x["errorCode"], x["message"]) for x in metas]
    assert {x["virtualMachineLocation"]["localControllerId"] for x in metas} == set(bmc)
    # A woken host re-joins its manager (CI once listed the hierarchy in between): wait for its summary.
    until(lambda: (lambda f: f if all(k in f and f[k]["groupManagerId"] == "gm-n" and f[k]["status"] == "ACTIVE"
                                      for k in moved) else None)(lcs(c)), 20, f"{moved} ACTIVE under gm-n")
    for lc_id in moved:
        assert chassis(bmc[lc_id], c.options.bmc_password) == "Chassis Power is on"


def test_a_manager_promoted_to_leader_hands_its_sleeping_hosts_over(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=4, energy=True, idle_time=1.0, reserved_nodes=1)
    bmc = {p["id"]: p["bmcPort"] for p in c.processes if p.get("bmcPort")}
    before = until(lambda: (lambda s: s if Counter(lc["status"] for lc in s.values()) == {"ACTIVE": 2, "PASSIVE": 2}
                               else None)(lcs(c)), 30, "two idle hosts powered down")
    old = leader_id(c)
    c.kill(old)
    new = until(lambda: (lambda h: h != old and h)(leader_id(c)), 30, "a new leader")
    (survivor,) = {p["id"] for p in c.processes if p["role"] == "groupmanager"} - {old, new}
    assert any(lc["groupManagerId"] == new and lc["status"] == "PASSIVE" for lc in before.values()), \
        f"{new} held a sleeping host when it was promoted: {before}"

    def all_with_survivor() -> dict[str, dict[str, Any]] | None:
        now = lcs(c)
        return now if len(now) == 4 and {lc["groupManagerId"] for lc in now.values()} == {survivor} else None

    now = until(all_with_survivor, 30, f"every host, the sleeping ones of {new} included, with {survivor}")
    # The hosts asleep before are still asleep (handing over wakes nothing). The survivor, now
    # holding all four with one reserved, may power down an awake idle host of its own as well.
    asleep = sorted(k for k, lc in before.items() if lc["status"] == "PASSIVE")
    assert all(now[k]["status"] == "PASSIVE" for k in asleep), now
    for lc_id in asleep:
        assert chassis(bmc[lc_id], c.options.bmc_password) == "Chassis Power is off", f"{lc_id} not woken by the hand-over"
    assert Counter(lc["status"] for lc in now.values())["ACTIVE"] >= 1, now
    resp = run(c, [{"name": f"big-{i}", "vcpus": 6, "memory": 1048576} for i in range(4)])
    metas = resp["virtualMachineMetaData"]
    assert all(x["status"] == "RUNNING" for x in metas), [(x["virtualMachineId"], x["errorCode"], x["message"]) for x in metas]
    for lc_id, port in bmc.items():
        assert chassis(port, c.options.bmc_password) == "Chassis Power is on", lc_id
