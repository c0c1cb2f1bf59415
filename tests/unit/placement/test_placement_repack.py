"""The repack consolidation and the limits every consolidation honours: frozen VMs (the
cooldown), the migration budget and the room kept for arrivals (examples, a generated cluster
of thousands of hosts, and hypothesis properties)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from placement_builders import GIB

from groupmanager.placement import (
    CONSOLIDATION_POLICIES,
    DEFAULT_CONSOLIDATION,
    HostView,
    Plan,
    PowerState,
    Thresholds,
    VMView,
    make_consolidation_policy,
)

THR = Thresholds.uniform(0.2, 0.9, 1.0)
FULL = Thresholds.uniform(0.0, 1.0, 1.0)
NAMES = sorted(CONSOLIDATION_POLICIES)


def host(hid: str, vms: list[VMView], cpu: float = 10.0, mem: float = 10.0, **kw: object) -> HostView:
    used = (sum(v.demand[0] for v in vms), sum(v.demand[1] for v in vms), 0.0, 0.0)
    return HostView(hid, (cpu, mem, 0.0, 0.0), used=used, vms=tuple(vms), **kw)  # type: ignore[arg-type]


def vm(vid: str, cpu: float, mem: float) -> VMView:
    return VMView(vid, (float(cpu), float(mem), 0.0, 0.0))


def shift_cluster() -> list[HostView]:
    # a's VM (2, 3) fits on neither b (room 5, 1) nor c (room 1, 4), and neither b nor c can be
    # emptied: only moving c's (3, 1) VM to b makes room for it on c.
    return [
        host("a", [vm("x", 2, 3)]),
        host("b", [vm("b1", 2, 4), vm("b2", 1, 1), vm("b3", 1, 3)]),
        host("c", [vm("c1", 3, 1), vm("c2", 5, 4)]),
    ]


def final_usage(hosts: list[HostView], plan: Plan) -> dict[str, list[float]]:
    """Every host's usage once the plan ran, checking each step's source as it goes."""
    where = {v.id: h.id for h in hosts for v in h.vms}
    demand = {v.id: v.demand for h in hosts for v in h.vms}
    used = {h.id: list(h.used) for h in hosts}
    for m in plan.migrations:
        assert where[m.vm_id] == m.source, f"{m.vm_id} is not on {m.source} when it moves"
        where[m.vm_id] = m.destination
        for d in range(4):
            used[m.source][d] -= demand[m.vm_id][d]
            used[m.destination][d] += demand[m.vm_id][d]
    return used


def check_plan(hosts: list[HostView], plan: Plan, thresholds: Thresholds = THR) -> None:
    """Never overcommitted at any step, destinations powered and kept, sources emptied, each
    VM moved at most once."""
    by_id = {h.id: h for h in hosts}
    moved = [m.vm_id for m in plan.migrations]
    assert len(moved) == len(set(moved))
    where = {v.id: h.id for h in hosts for v in h.vms}
    demand = {v.id: v.demand for h in hosts for v in h.vms}
    used = {h.id: list(h.used) for h in hosts}
    for m in plan.migrations:
        dest = by_id[m.destination]
        assert dest.alive and dest.power is PowerState.ACTIVE  # never wakes a host to empty another
        assert m.destination not in plan.power_down and m.destination != m.source
        assert where[m.vm_id] == m.source
        where[m.vm_id] = m.destination
        for d in range(4):
            used[m.source][d] -= demand[m.vm_id][d]
            used[m.destination][d] += demand[m.vm_id][d]
        # Every step, in order, fits on its destination (the applier checks each one).
        for d, (u, r, t) in enumerate(zip(used[m.destination], dest.reserved, dest.total, strict=True)):
            if t > 0:
                assert u + r <= thresholds.mid[d] * t * (1 + 1e-9) + 1e-9
    for hid in plan.power_down:
        assert not [v for v, h in where.items() if h == hid], f"{hid} is powered down with VMs"


def test_every_consolidation_is_available_and_cost_aware_stays_the_default() -> None:
    assert DEFAULT_CONSOLIDATION == "cost-aware"
    assert make_consolidation_policy().name == "cost-aware"
    assert {"sercon", "cost-aware", "repack"} <= set(CONSOLIDATION_POLICIES)


def test_a_shift_releases_a_host_eviction_cannot() -> None:
    hosts = shift_cluster()
    assert make_consolidation_policy("cost-aware").consolidate(hosts, THR).power_down == []
    plan = make_consolidation_policy("repack").consolidate(hosts, THR)
    assert plan.power_down == ["a"]
    # The shift runs first: it makes the room the next step uses.
    assert [(m.vm_id, m.source, m.destination) for m in plan.migrations] == [
        ("c1", "c", "b"),
        ("x", "a", "c"),
    ]
    check_plan(hosts, plan)
    assert any("shifts released 1 more" in n for n in plan.notes), plan.notes


def test_a_frozen_vm_is_never_shifted() -> None:
    hosts = shift_cluster()
    plan = make_consolidation_policy("repack").consolidate(hosts, THR, frozen={"c1"})
    # Another shift does it (b3 to c, x to b) ...
    assert "c1" not in {m.vm_id for m in plan.migrations}
    check_plan(hosts, plan)
    # ... and with none of the kept hosts' VMs movable, nothing can.
    frozen = {"b1", "b2", "b3", "c1", "c2"}
    plan = make_consolidation_policy("repack").consolidate(hosts, THR, frozen=frozen)
    assert plan.migrations == [] and plan.power_down == []


def test_a_host_holding_a_cooling_down_vm_is_never_emptied() -> None:
    hosts = [host("a", [vm("x", 3, 3)]), host("b", [vm("y", 4, 4), vm("z", 1, 1)])]
    for name in NAMES:
        plan = make_consolidation_policy(name).consolidate(hosts, THR, frozen={"x"})
        # b cannot go either: its VMs fit on a, but that is the host that must stay.
        assert "a" not in plan.power_down and all(m.vm_id != "x" for m in plan.migrations), name
        assert any("cooldown" in n and "a" in n for n in plan.notes), (name, plan.notes)


def test_a_host_whose_vms_exceed_the_budget_is_skipped_whole() -> None:
    hosts = [
        host("two", [vm("a", 1, 1), vm("b", 1, 1)]),
        # A VM in flight to it: the keeper is never a source.
        host("keeper", [vm("k", 5, 5)], reserved=(0.5, 0.0, 0.0, 0.0)),
    ]
    for name in NAMES:
        plan = make_consolidation_policy(name).consolidate(hosts, THR, budget=1)
        assert plan.migrations == [] and plan.power_down == [], name
        assert any("budget" in n for n in plan.notes), (name, plan.notes)
        full = make_consolidation_policy(name).consolidate(hosts, THR, budget=2)
        assert full.power_down == ["two"], name


def test_room_is_kept_for_arrivals_when_asked() -> None:
    hosts = [host("a", [vm("x", 3, 3)]), host("b", [vm("y", 4, 4)])]
    for name in NAMES:
        assert make_consolidation_policy(name).consolidate(hosts, THR).power_down == ["a"], name
        # Once a is gone the pair has 9 - 7 = 2 cpus free: asking for 3 keeps a up.
        plan = make_consolidation_policy(name).consolidate(hosts, THR, spare=(3.0, 0.0, 0.0, 0.0))
        assert plan.power_down == [] and plan.migrations == [], name
        assert any("room for arrivals" in n for n in plan.notes), (name, plan.notes)


# -- a generated cluster like the energy benchmark's, thousands of hosts ------------------------
def generated(seed: int, n_hosts: int) -> list[HostView]:
    """Hosts of 8 vcpus / 16 GiB, 20-95 % filled with VMs of 1-4 vcpus and 1-3 GiB per vcpu."""
    rng = random.Random(seed)
    hosts, k = [], 0
    for i in range(n_hosts):
        vms: list[VMView] = []
        cpu = mem = 0.0
        fill = rng.uniform(0.2, 0.95)
        for _ in range(50):
            c = rng.randint(1, 4)
            m = c * rng.randint(1, 3) * GIB
            if cpu + c > 8 * fill or mem + m > 16 * GIB * fill:
                continue
            vms.append(VMView(f"v{k}", (float(c), m, 0.0, 0.0)))
            k += 1
            cpu, mem = cpu + c, mem + m
        hosts.append(HostView(f"h{i}", (8.0, 16 * GIB, 0.0, 0.0), used=(cpu, mem, 0.0, 0.0), vms=tuple(vms)))
    return hosts


def released(plan: Plan) -> int:
    sources = {m.source for m in plan.migrations}
    return sum(1 for h in plan.power_down if h in sources)


def test_on_a_generated_cluster_repack_releases_as_many_hosts_with_no_more_migrations_each() -> None:
    ours = theirs = 0
    for seed in range(3):
        hosts = generated(seed, 2000)
        ca = make_consolidation_policy("cost-aware").consolidate(hosts, FULL)
        rp = make_consolidation_policy("repack").consolidate(hosts, FULL)
        check_plan(hosts, rp, FULL)
        assert released(rp) >= released(ca)
        assert len(rp.migrations) / released(rp) <= len(ca.migrations) / released(ca) + 1e-9
        ours, theirs = ours + released(rp), theirs + released(ca)
    assert ours >= theirs


def test_on_fragmented_clusters_repack_releases_more_at_no_more_migrations_each() -> None:
    # Small clusters where two resources fragment the room: eviction alone often empties
    # nothing there, shifts do.
    ca_rel = rp_rel = ca_mig = rp_mig = 0
    for seed in range(400):
        rng = random.Random(seed)
        hosts = []
        for i in range(rng.randint(3, 6)):
            vms = [vm(f"v{i}-{j}", rng.randint(1, 4), rng.randint(1, 4)) for j in range(rng.randint(1, 3))]
            hosts.append(host(f"h{i}", vms))
        ca = make_consolidation_policy("cost-aware").consolidate(hosts, THR)
        rp = make_consolidation_policy("repack").consolidate(hosts, THR)
        check_plan(hosts, rp)
        assert released(rp) >= released(ca)
        if released(ca):
            assert len(rp.migrations) / released(rp) <= len(ca.migrations) / released(ca) + 1e-9
        ca_rel, rp_rel = ca_rel + released(ca), rp_rel + released(rp)
        ca_mig, rp_mig = ca_mig + len(ca.migrations), rp_mig + len(rp.migrations)
    assert rp_rel > ca_rel


# -- properties -------------------------------------------------------------------------------
@st.composite
def clusters(draw: st.DrawFn) -> tuple[str, list[HostView], set[str], int | None]:
    n = draw(st.integers(min_value=0, max_value=9))
    hosts = []
    k = 0
    for i in range(n):
        total = (draw(st.sampled_from([4.0, 8.0, 16.0])), draw(st.sampled_from([8.0, 16.0, 32.0])),
                 draw(st.sampled_from([0.0, 100.0])), 0.0)
        vms = []
        for _ in range(draw(st.integers(0, 5))):
            vms.append(VMView(f"v{k}", (draw(st.floats(0.0, 4.0)), draw(st.floats(0.0, 8.0)),
                                        draw(st.floats(0.0, 20.0)) if total[2] else 0.0, 0.0)))
            k += 1
        used = tuple(sum(v.demand[d] for v in vms) for d in range(4))
        reserved = (draw(st.sampled_from([0.0, 0.0, 1.0])), 0.0, 0.0, 0.0)
        hosts.append(HostView(f"h{i}", total, used=used, reserved=reserved,  # type: ignore[arg-type]
                              power=draw(st.sampled_from([PowerState.ACTIVE] * 3 + list(PowerState))),
                              alive=draw(st.booleans() | st.just(True)), vms=tuple(vms)))
    vm_ids = [v.id for h in hosts for v in h.vms]
    frozen = draw(st.sets(st.sampled_from(vm_ids), max_size=4)) if vm_ids else set()
    budget = draw(st.none() | st.integers(0, 8))
    return draw(st.sampled_from(NAMES)), hosts, frozen, budget


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_consolidation_limits_hold_on_any_cluster(case: tuple[str, list[HostView], set[str], int | None]) -> None:
    name, hosts, frozen, budget = case
    plan = make_consolidation_policy(name).consolidate(hosts, THR, frozen=frozen, budget=budget)
    by_id = {h.id: h for h in hosts}
    # Never overcommits (any step), never wakes, never sends a VM to a host that sleeps.
    check_plan([h for h in hosts if h.alive and h.power is PowerState.ACTIVE], plan)
    # Never moves a VM in its cooldown, never empties a host holding one.
    assert not frozen & {m.vm_id for m in plan.migrations}
    holding = {h.id for h in hosts if frozen & {v.id for v in h.vms}}
    assert not holding & set(plan.power_down)
    # Never over the budget.
    if budget is not None:
        assert len(plan.migrations) <= budget
    # Only powered hosts are emptied; a host with capacity held for VMs in flight is not.
    for hid in plan.power_down:
        h = by_id[hid]
        assert h.alive and h.power is PowerState.ACTIVE
        assert not (any(h.reserved) and h.vms)
