"""Sercon and the cost-aware consolidation: what they release, and what they never do."""

from __future__ import annotations

import random

import pytest
from placement_builders import GIB

from groupmanager.placement import (
    HostView,
    PowerState,
    Thresholds,
    VMView,
    make_consolidation_policy,
)

THR = Thresholds.uniform(0.2, 0.9, 1.0)
NAMES = ["sercon", "cost-aware", "repack"]


def loaded(hid, vms, cpu=10.0, mem_gib=10.0, **kw):
    used = (sum(v.demand[0] for v in vms), sum(v.demand[1] for v in vms), 0.0, 0.0)
    return HostView(hid, (cpu, mem_gib * GIB, 0.0, 0.0), used=used, vms=tuple(vms), **kw)


def vmv(vid, cpu, mem_gib):
    return VMView(vid, (float(cpu), mem_gib * GIB, 0.0, 0.0))


def random_cluster(seed, n_hosts=60):
    rng = random.Random(seed)
    hosts, k = [], 0
    for i in range(n_hosts):
        vms = []
        for _ in range(rng.randint(1, 5)):
            vms.append(vmv(f"v{k}", rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.5)))
            k += 1
        hosts.append(loaded(f"h{i}", vms))
    return hosts


def check_plan(hosts, plan):
    """No destination overcommitted, sources fully emptied, nothing migrates twice."""
    by_id = {h.id: h for h in hosts}
    final = {h.id: list(h.used) for h in hosts}
    where = {v.id: h.id for h in hosts for v in h.vms}
    demand = {v.id: v.demand for h in hosts for v in h.vms}
    moved = [m.vm_id for m in plan.migrations]
    assert len(moved) == len(set(moved))
    for m in plan.migrations:
        assert where[m.vm_id] == m.source and m.destination != m.source
        assert m.destination not in plan.power_down
        assert m.memory == demand[m.vm_id][1]
        for d in range(4):
            final[m.source][d] -= demand[m.vm_id][d]
            final[m.destination][d] += demand[m.vm_id][d]
    for hid, used in final.items():
        total = by_id[hid].total
        assert all(
            u <= THR.mid[d] * t * (1 + 1e-9)
            for d, (u, t) in enumerate(zip(used, total, strict=True))
            if t > 0
        )
    for hid in plan.power_down:
        leaving = {m.vm_id for m in plan.migrations if m.source == hid}
        assert leaving == {v.id for v in by_id[hid].vms}


@pytest.mark.parametrize("name", NAMES)
def test_two_half_empty_hosts_become_one(name):
    hosts = [loaded("a", [vmv("x", 3, 3)]), loaded("b", [vmv("y", 4, 4), vmv("z", 1, 1)])]
    plan = make_consolidation_policy(name).consolidate(hosts, THR)
    assert plan.power_down == ["a"]
    assert [(m.vm_id, m.destination) for m in plan.migrations] == [("x", "b")]


@pytest.mark.parametrize("name", NAMES)
def test_nothing_moves_when_nothing_can_be_released(name):
    hosts = [loaded("a", [vmv("x", 6, 6)]), loaded("b", [vmv("y", 6, 6)])]
    plan = make_consolidation_policy(name).consolidate(hosts, THR)
    assert plan.migrations == [] and plan.power_down == []


@pytest.mark.parametrize("name", NAMES)
def test_idle_hosts_are_powered_down_and_others_left_alone(name):
    hosts = [
        loaded("idle", []),
        loaded("asleep", [], power=PowerState.PASSIVE),
        loaded("dead", [vmv("d", 1, 1)], alive=False),
        loaded("busy", [vmv("x", 6, 6)]),
    ]
    plan = make_consolidation_policy(name).consolidate(hosts, THR)
    assert plan.power_down == ["idle"]
    assert plan.migrations == []


@pytest.mark.parametrize("name", NAMES)
def test_hosts_with_vms_in_flight_are_not_emptied(name):
    hosts = [
        loaded("incoming", [vmv("x", 1, 1)], reserved=(1.0, GIB, 0.0, 0.0)),
        loaded("b", [vmv("y", 4, 4)]),
    ]
    plan = make_consolidation_policy(name).consolidate(hosts, THR)
    assert "incoming" not in plan.power_down
    assert plan.power_down == ["b"]  # b can still empty onto it


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(5))
def test_random_clusters_give_valid_plans(name, seed):
    hosts = random_cluster(seed)
    plan = make_consolidation_policy(name).consolidate(hosts, THR)
    assert plan.power_down
    check_plan(hosts, plan)


@pytest.mark.parametrize("seed", range(5))
def test_cost_aware_never_releases_fewer_hosts_than_sercon(seed):
    hosts = random_cluster(seed, n_hosts=200)
    ours = make_consolidation_policy("cost-aware").consolidate(hosts, THR)
    sercon = make_consolidation_policy("sercon").consolidate(hosts, THR)
    assert len(ours.power_down) >= len(sercon.power_down)
    check_plan(hosts, ours)


def test_cost_aware_moves_less_memory_per_released_host_than_sercon():
    def per_host(name):
        mem = released = 0.0
        for seed in range(5):
            plan = make_consolidation_policy(name).consolidate(random_cluster(seed, 200), THR)
            mem += sum(m.memory for m in plan.migrations)
            released += len(plan.power_down)
        return mem / released

    assert per_host("cost-aware") < per_host("sercon")


def test_migrating_twice_is_folded_into_one_migration():
    # a empties onto b first (b is busier), then b empties onto c: x must appear once, a -> c.
    a = loaded("a", [vmv("x", 1, 1)])
    b = loaded("b", [vmv("y", 2, 2)])
    c = loaded("c", [vmv("z", 5, 5)])
    plan = make_consolidation_policy("sercon").consolidate([a, b, c], THR)
    check_plan([a, b, c], plan)
    assert {m.vm_id: (m.source, m.destination) for m in plan.migrations}["x"][0] == "a"


def test_cost_aware_prefers_emptying_the_cheaper_host():
    # Equal load, but "many" has three VMs to move and "one" a single one.
    many = loaded("many", [vmv("a", 1, 1), vmv("b", 1, 1), vmv("c", 1, 1)])
    one = loaded("one", [vmv("d", 3, 3)])
    keeper = loaded("keeper", [vmv("k", 5, 5)])
    plan = make_consolidation_policy("cost-aware").consolidate([many, one, keeper], THR)
    assert plan.power_down[0] == "one"
    sercon = make_consolidation_policy("sercon").consolidate([many, one, keeper], THR)
    assert sercon.power_down[0] == "many"
