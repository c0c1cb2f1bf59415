"""The four built-in policies: where they put VMs, and the rules every policy shares."""

from __future__ import annotations

import json

import pytest
from placement_builders import FULL, GIB, host, vm

from groupmanager.placement import (
    HostView,
    PowerState,
    Thresholds,
    VMRequest,
    make_placement_policy,
)

ALL = ["round-robin", "first-fit", "best-fit", "dot-product"]


def where(plan):
    return {p.vm_id: p.host_id for p in plan.placements}


@pytest.mark.parametrize("name", ALL)
def test_capacity_is_consumed_within_a_batch(name):
    policy = make_placement_policy(name, thresholds=FULL)
    plan = policy.place([vm(f"v{i}", 4, 4) for i in range(5)], [host("a"), host("b")])
    placed = where(plan)
    assert len(placed) == 4
    assert sorted(placed.values()) == ["a", "a", "b", "b"]
    (lost,) = plan.unplaced
    assert plan.unplaced[lost].reason == "no host fits: capacity rejected 2 of 2 hosts"
    assert plan.unplaced[lost].filtered == {"capacity": 2}


@pytest.mark.parametrize("name", ALL)
def test_mid_threshold_is_respected(name):
    thr = Thresholds.uniform(0.0, 0.5, 1.0)
    plan = make_placement_policy(name, thresholds=thr).place([vm("a", 5, 1)], [host("h", cpu=8)])
    assert not plan.placements
    plan = make_placement_policy(name, thresholds=thr).place([vm("a", 4, 1)], [host("h", cpu=8)])
    assert where(plan) == {"a": "h"}


@pytest.mark.parametrize("name", ALL)
def test_reserved_capacity_is_not_given_away(name):
    h = host("h", cpu=8, reserved=(6, 0))
    plan = make_placement_policy(name, thresholds=FULL).place([vm("a", 3, 1)], [h])
    assert plan.unplaced["a"].filtered == {"capacity": 1}


@pytest.mark.parametrize("name", ALL)
def test_passive_hosts_are_woken_only_when_nothing_active_fits(name):
    hosts = [host("sleep", power=PowerState.PASSIVE), host("up", cpu=2)]
    plan = make_placement_policy(name, thresholds=FULL).place([vm("a", 2, 1)], hosts)
    assert where(plan) == {"a": "up"} and plan.wake_up == []
    plan = make_placement_policy(name, thresholds=FULL).place([vm("a", 2, 1), vm("b", 2, 1)], hosts)
    assert where(plan) == {"a": "up", "b": "sleep"}
    assert plan.wake_up == ["sleep"]


@pytest.mark.parametrize("name", ALL)
def test_waking_hosts_count_as_capacity_without_a_new_wake_up(name):
    hosts = [host("coming", power=PowerState.WAKING)]
    plan = make_placement_policy(name, thresholds=FULL).place([vm("a")], hosts)
    assert where(plan) == {"a": "coming"} and plan.wake_up == []


@pytest.mark.parametrize("name", ALL)
def test_no_wake_up_when_disabled(name):
    hosts = [host("sleep", power=PowerState.PASSIVE)]
    plan = make_placement_policy(name, thresholds=FULL, wake_passive=False).place([vm("a")], hosts)
    assert plan.unplaced["a"].filtered == {"power": 1}


@pytest.mark.parametrize("name", ALL)
def test_dead_hosts_are_never_used(name):
    plan = make_placement_policy(name, thresholds=FULL).place([vm("a")], [host("x", alive=False)])
    assert plan.unplaced["a"].reason == "no host fits: alive rejected 1 of 1 hosts"


@pytest.mark.parametrize("name", ALL)
def test_pinned_vm_goes_to_its_host_or_nowhere(name):
    hosts = [host("a"), host("b"), host("c", cpu=1)]
    plan = make_placement_policy(name, thresholds=FULL).place([vm("p", pinned_host="b")], hosts)
    assert where(plan) == {"p": "b"}
    plan = make_placement_policy(name, thresholds=FULL).place([vm("p", 2, pinned_host="c")], hosts)
    assert plan.unplaced["p"].filtered == {"pinned": 2, "capacity": 1}
    plan = make_placement_policy(name, thresholds=FULL).place([vm("p", pinned_host="zz")], hosts)
    assert plan.unplaced["p"].filtered == {"pinned": 3}


@pytest.mark.parametrize("name", ALL)
def test_network_and_exclusion(name):
    hosts = [
        host("a", networks=frozenset({"red"})),
        host("b", networks=frozenset({"blue"})),
        host("c"),
    ]
    policy = make_placement_policy(name, thresholds=FULL)
    plan = policy.place([vm("v", network="blue", excluded_hosts=frozenset({"c"}))], hosts)
    assert where(plan) == {"v": "b"}
    plan = policy.place([vm("v", network="green", excluded_hosts=frozenset({"c"}))], hosts)
    assert plan.unplaced["v"].filtered == {"excluded": 1, "network": 2}


@pytest.mark.parametrize("name", ALL)
def test_anti_affinity_spreads_a_group(name):
    hosts = [host("a", cpu=16), host("b", cpu=16)]
    reqs = [vm(f"v{i}", anti_affinity_group="web") for i in range(3)]
    plan = make_placement_policy(name, thresholds=FULL).place(reqs, hosts)
    assert sorted(where(plan).values()) == ["a", "b"]
    (lost,) = plan.unplaced
    assert plan.unplaced[lost].filtered == {"anti-affinity": 2}


@pytest.mark.parametrize("name", ALL)
def test_affinity_group_shares_a_host_sized_as_a_whole(name):
    hosts = [host("small", cpu=3), host("big", cpu=8)]
    reqs = [vm("x", 2, affinity_group="g"), vm("y", 2, affinity_group="g"), vm("z", 1)]
    plan = make_placement_policy(name, thresholds=FULL).place(reqs, hosts)
    placed = where(plan)
    assert placed["x"] == placed["y"] == "big"
    assert [p.vm_id for p in plan.placements] == ["x", "y", "z"]


@pytest.mark.parametrize("name", ALL)
def test_contradictory_affinity_is_rejected_with_its_reason(name):
    reqs = [
        vm("x", affinity_group="g", anti_affinity_group="s"),
        vm("y", affinity_group="g", anti_affinity_group="s"),
    ]
    plan = make_placement_policy(name, thresholds=FULL).place(reqs, [host("a")])
    assert set(plan.unplaced) == {"x", "y"}
    assert "anti-affinity" in plan.unplaced["x"].reason and plan.unplaced["x"].filtered == {
        "affinity": 1
    }


@pytest.mark.parametrize("name", ALL)
def test_zero_total_resources_do_not_block_placement(name):
    h = HostView("h", (8.0, 16 * GIB, 0.0, 0.0))
    req = VMRequest("a", (1.0, GIB, 1000.0, 1000.0))
    plan = make_placement_policy(name, thresholds=FULL).place([req], [h])
    assert where(plan) == {"a": "h"}


@pytest.mark.parametrize("name", ALL)
def test_duplicate_and_invalid_requests_are_refused_not_crashed(name):
    reqs = [vm("a"), vm("a"), VMRequest("bad", (-1.0, 0.0, 0.0, 0.0))]
    plan = make_placement_policy(name, thresholds=FULL).place(reqs, [host("h")])
    assert where(plan) == {"a": "h"}
    assert "duplicate" in plan.unplaced["a"].reason
    assert "invalid" in plan.unplaced["bad"].reason


@pytest.mark.parametrize("name", ALL)
def test_plan_is_json_serialisable(name):
    plan = make_placement_policy(name, thresholds=FULL).place([vm("a"), vm("b", 99)], [host("h")])
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["placements"] == [{"vm_id": "a", "host_id": "h"}]
    assert data["unplaced"]["b"]["filtered"] == {"capacity": 1}


def test_first_fit_prefers_the_most_loaded_host():
    hosts = [host("idle"), host("busy", used=(6, 0)), host("mid", used=(3, 0))]
    plan = make_placement_policy("first-fit", thresholds=FULL).place(
        [vm("a", 2), vm("b", 2)], hosts
    )
    assert where(plan) == {"a": "busy", "b": "mid"}


@pytest.mark.parametrize("norm", ["L1", "Euclid", "Max"])
def test_first_fit_sort_norms(norm):
    # cpu-heavy vs memory-heavy load: the norms disagree on which host is "more loaded".
    hosts = [host("cpu", used=(6, 0)), host("mix", used=(4, 8))]
    plan = make_placement_policy("first-fit", thresholds=FULL, sort_norm=norm).place(
        [vm("a", 1, 1)], hosts
    )
    expected = {"L1": "mix", "Euclid": "cpu", "Max": "cpu"}[norm]
    assert where(plan) == {"a": expected}


def test_first_fit_decreasing_sorts_the_batch():
    hosts = [host("a", cpu=4), host("b", cpu=4)]
    reqs = [vm("s1", 1), vm("s2", 1), vm("big", 3), vm("big2", 3)]
    plain = make_placement_policy("first-fit", thresholds=FULL).place(reqs, hosts)
    ffd = make_placement_policy("first-fit", thresholds=FULL, decreasing=True).place(reqs, hosts)
    assert len(plain.unplaced) == 1
    assert not ffd.unplaced


def test_best_fit_picks_the_tightest_host():
    hosts = [host("roomy", cpu=8), host("snug", cpu=3), host("ok", cpu=5)]
    plan = make_placement_policy("best-fit", thresholds=FULL).place([vm("a", 3, 1)], hosts)
    assert where(plan) == {"a": "snug"}


def test_round_robin_keeps_its_cursor_between_calls():
    policy = make_placement_policy("round-robin", thresholds=FULL)
    hosts = [host("c"), host("a"), host("b")]
    got = [where(policy.place([vm(f"v{i}")], hosts))[f"v{i}"] for i in range(4)]
    assert got == ["a", "b", "c", "a"]
    plan = policy.place([vm("x"), vm("y")], hosts)
    assert where(plan) == {"x": "b", "y": "c"}


def test_dot_product_fills_busy_hosts_before_opening_empty_ones():
    hosts = [host("empty"), host("busy", used=(4, 8))]
    plan = make_placement_policy("dot-product", thresholds=FULL).place([vm("a", 2, 4)], hosts)
    assert where(plan) == {"a": "busy"}


def test_dot_product_pairs_complementary_vms():
    # Two cpu-heavy and two memory-heavy VMs: aligning demand with room pairs them up on
    # two hosts, where first-fit decreasing in batch order would need three.
    hosts = [host(f"h{i}", cpu=8, mem_gib=8) for i in range(4)]
    reqs = [vm("c1", 6, 2), vm("m1", 2, 6), vm("c2", 6, 2), vm("m2", 2, 6)]
    plan = make_placement_policy("dot-product", thresholds=FULL).place(reqs, hosts)
    placed = where(plan)
    assert len(set(placed.values())) == 2
    assert placed["c1"] != placed["c2"]


def test_dot_product_grid_path_handles_many_distinct_sizes():
    # More distinct demands than max_classes: VMs are grouped into grid cells, yet every
    # VM is still checked exactly, so nothing overflows and everything that fits is placed.
    hosts = [host(f"h{i}", cpu=16, mem_gib=64) for i in range(40)]
    reqs = [vm(f"v{i}", 1 + (i % 7) * 0.37, 1 + (i * 13 % 29) * 0.5) for i in range(200)]
    plan = make_placement_policy("dot-product", thresholds=FULL, max_classes=8).place(reqs, hosts)
    assert not plan.unplaced
    load: dict[str, list[float]] = {}
    demand = {r.id: r.requested for r in reqs}
    for p in plan.placements:
        acc = load.setdefault(p.host_id, [0.0, 0.0])
        acc[0] += demand[p.vm_id][0]
        acc[1] += demand[p.vm_id][1]
    assert all(c <= 16 + 1e-6 and m <= 64 * GIB * (1 + 1e-9) for c, m in load.values())


def test_dot_product_rejects_unknown_weights():
    with pytest.raises(ValueError, match="weights"):
        make_placement_policy("dot-product", weights="magic")
