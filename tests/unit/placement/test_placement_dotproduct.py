"""The default packer's own machinery: cells, host order, planned fills, patterns, FFD check."""

from __future__ import annotations

import random

from placement_builders import FULL, GIB, host, vm

from groupmanager.placement import HostView, VMRequest, make_placement_policy


def where(plan):
    return {p.vm_id: p.host_id for p in plan.placements}


def loads(plan, reqs):
    demand = {r.id: r.requested for r in reqs}
    out: dict[str, list[float]] = {}
    for p in plan.placements:
        acc = out.setdefault(p.host_id, [0.0, 0.0])
        acc[0] += demand[p.vm_id][0]
        acc[1] += demand[p.vm_id][1]
    return out


def test_planned_fill_backs_off_a_greedy_run():
    # Greedy dot product puts five 8/32 VMs on a 64/192 host (memory nearly full, 9.6 vCPU
    # left that nothing fits); backing off to four lets the 8/16 VMs fill both resources,
    # so the host takes more in all.
    reqs = [vm(f"big{i}", 8, 32) for i in range(5)] + [vm(f"mid{i}", 8, 16) for i in range(3)]
    reqs += [vm(f"cpu{i}", 4, 4) for i in range(2)]
    hosts = [host("h", cpu=57.6, mem_gib=172.8)]
    greedy = make_placement_policy(
        "dot-product", thresholds=FULL, lookahead=False, cross_check=False
    ).place(reqs, hosts)
    planned = make_placement_policy("dot-product", thresholds=FULL, cross_check=False).place(
        reqs, hosts
    )
    assert sum(loads(planned, reqs)["h"]) > sum(loads(greedy, reqs)["h"])
    assert loads(planned, reqs)["h"][0] > loads(greedy, reqs)["h"][0]


def test_mixed_fleet_opens_the_model_that_holds_most_of_the_batch():
    # A cpu-bound batch: the 64-vCPU model holds more of it than the 48-vCPU one, even
    # though the latter has more memory, so it is opened first.
    hosts = [host(f"m{i}", cpu=48, mem_gib=256) for i in range(3)]
    hosts += [host(f"c{i}", cpu=64, mem_gib=192) for i in range(3)]
    reqs = [vm(f"v{i}", 4, 4) for i in range(16)]
    plan = make_placement_policy("dot-product", thresholds=FULL).place(reqs, hosts)
    assert set(where(plan).values()) == {"c0"}


def test_replayed_patterns_respect_exclusions_and_anti_affinity():
    # Identical empty hosts make later hosts replay the first one's fill; constraints are
    # still checked host by host.
    hosts = [host(f"h{i}", cpu=8, mem_gib=16) for i in range(8)]
    reqs = [vm(f"a{i}", 2, 4, excluded_hosts=frozenset({"h1", "h2"})) for i in range(12)]
    reqs += [vm(f"s{i}", 1, 1, anti_affinity_group="spread") for i in range(4)]
    plan = make_placement_policy("dot-product", thresholds=FULL, cross_check=False).place(
        reqs, hosts
    )
    placed = where(plan)
    assert not plan.unplaced
    assert all(placed[f"a{i}"] not in {"h1", "h2"} for i in range(12))
    assert len({placed[f"s{i}"] for i in range(4)}) == 4


def test_cells_follow_correlated_demands_and_never_overcommit():
    rng = random.Random(7)
    reqs = []
    for i in range(3000):
        c = rng.uniform(1, 12)
        reqs.append(vm(f"v{i}", c, c * 4 * rng.uniform(0.75, 1.25)))
    hosts = [host(f"h{i}", cpu=48, mem_gib=128) for i in range(1000)]
    plan = make_placement_policy("dot-product", thresholds=FULL).place(reqs, hosts)
    assert not plan.unplaced
    for c, m in loads(plan, reqs).values():
        assert c <= 48 * (1 + 1e-9) and m <= 128 * GIB * (1 + 1e-9)
    # Near the bound: memory needs at least this many hosts.
    need = sum(r.requested[1] for r in reqs) / (128 * GIB)
    assert len(loads(plan, reqs)) <= need * 1.05 + 1


def test_cross_check_keeps_ffd_only_when_it_opens_fewer_hosts():
    reqs = [
        VMRequest(f"v{i}", (float(1 + i % 5), float((1 + i * 7 % 11) * GIB), 0.0, 0.0))
        for i in range(60)
    ]
    hosts = [HostView(f"h{i}", (16.0, 32.0 * GIB, 0.0, 0.0)) for i in range(30)]
    alone = make_placement_policy("dot-product", thresholds=FULL, cross_check=False).place(
        reqs, hosts
    )
    ffd = make_placement_policy("first-fit", thresholds=FULL, decreasing=True).place(reqs, hosts)
    both = make_placement_policy("dot-product", thresholds=FULL).place(reqs, hosts)
    used = len(set(where(both).values()))
    assert used == min(len(set(where(alone).values())), len(set(where(ffd).values())))
    assert not both.unplaced


def test_cross_check_skips_batches_too_big_for_it():
    # 100 x 1,000 units x hosts in use is over the budget: only dot product runs, so the
    # plan is exactly its own.
    reqs = [vm(f"v{i}", 1 + i % 3, 1 + i % 5) for i in range(5000)]
    hosts = [host(f"h{i}", cpu=8, mem_gib=16) for i in range(3000)]
    a = make_placement_policy("dot-product", thresholds=FULL).place(reqs, hosts)
    b = make_placement_policy("dot-product", thresholds=FULL, cross_check=False).place(reqs, hosts)
    assert where(a) == where(b)
