"""The warm-repack consolidation (groupmanager/placement/warmstart.py): a search over the hosts
to release, their VMs repacked onto the kept hosts with ejections, under the limits every
consolidation honours (budget, cooldown, never waking a host), with bounded work."""

from __future__ import annotations

import random
import time

from groupmanager.placement import (
    HostView,
    Plan,
    PowerState,
    Thresholds,
    VMView,
    make_consolidation_policy,
)
from groupmanager.placement.consolidation import CostAware
from groupmanager.placement.warmstart import WarmRepack

FULL = Thresholds.uniform(0.0, 1.0, 1.0)
THR = Thresholds.uniform(0.2, 0.9, 1.0)  # hosts of 10 x 10 take VMs up to 9 x 9


def vm(vid: str, cpu: float, mem: float) -> VMView:
    return VMView(vid, (float(cpu), float(mem), 0.0, 0.0))


def host(hid: str, vms: list[VMView], cpu: float = 10.0, mem: float = 10.0, **kw: object) -> HostView:
    used = (sum(v.demand[0] for v in vms), sum(v.demand[1] for v in vms), 0.0, 0.0)
    return HostView(hid, (cpu, mem, 0.0, 0.0), used=used, vms=tuple(vms), **kw)  # type: ignore[arg-type]


def replay(hosts: list[HostView], plan: Plan) -> dict[str, list[str]]:
    """Run the plan step by step: each VM is where the step says, every step fits its
    destination (ACTIVE), nothing moves twice; the VMs of every host at the end."""
    by_id = {h.id: h for h in hosts}
    on = {h.id: [v.id for v in h.vms] for h in hosts}
    demand = {v.id: v.demand for h in hosts for v in h.vms}
    used = {h.id: list(h.used) for h in hosts}
    moved = [m.vm_id for m in plan.migrations]
    assert len(moved) == len(set(moved)), "a VM moved twice"
    for m in plan.migrations:
        assert m.vm_id in on[m.source], f"{m.vm_id} is not on {m.source} when it moves"
        dest = by_id[m.destination]
        assert dest.power is PowerState.ACTIVE and dest.alive, "a host was woken to empty another"
        on[m.source].remove(m.vm_id)
        on[m.destination].append(m.vm_id)
        for d in range(4):
            used[m.source][d] -= demand[m.vm_id][d]
            used[m.destination][d] += demand[m.vm_id][d]
            assert used[m.destination][d] <= dest.total[d] + 1e-9, f"{m.destination} overcommitted"
    for h in plan.power_down:
        assert not on[h], f"{h} is powered down with VMs on it"
    return on


def fragmented() -> list[HostView]:
    # Under THR: a's VM (2, 3) fits as it is on neither b (room 5, 1) nor c (room 1, 4): the eviction loop
    # releases nothing. Moving c's (3, 1) VM on to b makes room for it on c: a is released.
    return [
        host("a", [vm("x", 2, 3)]),
        host("b", [vm("b1", 2, 4), vm("b2", 1, 1), vm("b3", 1, 3)]),
        host("c", [vm("c1", 3, 1), vm("c2", 5, 4)]),
    ]


def released(plan: Plan) -> set[str]:
    return {m.source for m in plan.migrations} & set(plan.power_down)


def test_it_is_registered_and_built_by_name() -> None:
    policy = make_consolidation_policy("warm-repack", max_moves=3, keep_free=0.0)
    assert isinstance(policy, WarmRepack)
    assert policy.max_moves == 3.0


def test_it_picks_the_moves_that_free_a_host_over_moves_that_free_none() -> None:
    hosts = fragmented()
    seed = CostAware().consolidate(hosts, THR)
    assert not seed.migrations and not seed.power_down  # the eviction loop frees nothing here
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, THR)
    end = replay(hosts, plan)
    assert released(plan) == {"a"}
    # The ejection runs first, then the move it makes room for: two migrations in all.
    assert [(m.vm_id, m.source, m.destination) for m in plan.migrations] == [("c1", "c", "b"), ("x", "a", "c")]
    assert end["a"] == []


def test_it_frees_the_host_that_costs_fewest_migrations_and_moves_nothing_else() -> None:
    # Only one host can go (23 vcpus, 24 GiB need three of 10 x 10); d's big VM fits nowhere.
    # e costs two migrations, f one (its VM fits on e): f goes, and only its VM moves.
    hosts = [
        host("d", [vm("big", 9, 9)]),
        host("e", [vm("e1", 1, 1), vm("e2", 1, 2)]),
        host("f", [vm("f1", 7, 5)]),
        host("g", [vm("g1", 5, 7)]),
    ]
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, FULL)
    replay(hosts, plan)
    assert released(plan) == {"f"}
    assert [(m.vm_id, m.source) for m in plan.migrations] == [("f1", "f")]

def test_the_budget_bounds_the_plan_and_a_host_is_emptied_whole_or_not_at_all() -> None:
    hosts = fragmented()
    assert not WarmRepack(keep_free=0.0).consolidate(hosts, THR, budget=1).migrations
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, THR, budget=2)
    assert len(plan.migrations) == 2 and released(plan) == {"a"}
    # Four hosts of one small VM each fit on one: three migrations free three hosts, a budget
    # of 2 frees two and moves nothing else.
    small = [host(f"s{i}", [vm(f"v{i}", 2, 2)]) for i in range(4)]
    plan = WarmRepack(keep_free=0.0).consolidate(small, FULL, budget=2)
    replay(small, plan)
    assert len(plan.migrations) == 2 and len(released(plan)) == 2


def test_frozen_vms_are_never_moved_nor_ejected_and_their_host_is_kept() -> None:
    hosts = fragmented()
    # c1 migrated within the cooldown: a is freed by ejecting b3 to c instead.
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, THR, frozen={"c1"})
    replay(hosts, plan)
    assert all(m.vm_id != "c1" for m in plan.migrations) and released(plan) == {"a"}
    # c1 and b3 both cooling down: no ejection is left that makes room, a stays up.
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, THR, frozen={"c1", "b3"})
    assert not plan.migrations and "a" not in plan.power_down
    # x itself frozen: a holds a VM that cannot leave, so it is never emptied.
    # (a may still receive VMs: here c is emptied onto a and b instead.)
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, THR, frozen={"x"})
    replay(hosts, plan)
    assert all(m.vm_id != "x" for m in plan.migrations) and "a" not in plan.power_down


def test_it_never_wakes_a_host_to_empty_another() -> None:
    # The only room for a's VM is on a sleeping host (and on a WAKING one): a stays up.
    hosts = [
        host("a", [vm("x", 4, 4)]),
        host("b", [vm("b1", 8, 8)]),
        host("zzz", [], power=PowerState.PASSIVE),
        host("waking", [], power=PowerState.WAKING),
    ]
    plan = WarmRepack(keep_free=0.0).consolidate(hosts, FULL)
    assert not plan.migrations
    assert not set(plan.power_down) & {"a", "b", "zzz", "waking"}


def test_keep_free_leaves_room_for_arrivals() -> None:
    # Freeing a leaves (4, 2) free on b and c together: enough without keep_free, not for half
    # a host (5, 5).
    hosts = fragmented()
    assert released(WarmRepack(keep_free=0.0).consolidate(hosts, THR)) == {"a"}
    assert not WarmRepack(keep_free=0.5).consolidate(hosts, THR).migrations


def cluster(n: int, seed: int) -> list[HostView]:
    rng = random.Random(seed)
    hosts = []
    for i in range(n):
        vms, cpu, mem = [], 0, 0
        for j in range(rng.randint(1, 5)):
            c = rng.randint(1, 4)
            m = c * rng.randint(1, 3)
            if cpu + c > 8 or mem + m > 16:
                break
            vms.append(vm(f"h{i}-v{j}", c, m))
            cpu, mem = cpu + c, mem + m
        hosts.append(host(f"h{i:02d}", vms, cpu=8.0, mem=16.0))
    return hosts


def test_on_32_hosts_the_work_is_bounded_and_every_plan_is_valid() -> None:
    for seed in range(20):
        hosts = cluster(32, seed)
        policy = WarmRepack(evaluations=500)
        t0 = time.perf_counter()
        plan = policy.consolidate(hosts, FULL, budget=12)
        elapsed = time.perf_counter() - t0
        # The bound is a count of evaluated sets, not a clock (the package reads none).
        assert 0 < policy.last_evaluations <= 500
        assert len(plan.migrations) <= 12
        replay(hosts, plan)
        seed_plan = CostAware().consolidate(hosts, FULL, budget=12)
        # Never fewer hosts released than cost-aware, nor more migrations for as many.
        assert len(released(plan)) >= len(released(seed_plan))
        if len(released(plan)) == len(released(seed_plan)):
            assert len(plan.migrations) <= len(seed_plan.migrations)
        print(f"seed {seed}: {len(released(plan))} released, {len(plan.migrations)} migrations, "
              f"{policy.last_evaluations} sets, {1000 * elapsed:.1f} ms")
