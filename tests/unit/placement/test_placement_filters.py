"""Each feasibility filter alone, and how rejections are tallied and phrased."""

from __future__ import annotations

from placement_builders import FULL, host, vm

from groupmanager.placement import PowerState
from groupmanager.placement.filters import (
    ActiveOrWakeable,
    Affinity,
    Alive,
    AntiAffinity,
    Capacity,
    Excluded,
    Network,
    Pinned,
    default_filters,
    explain,
)
from groupmanager.placement.state import make_slots, make_units


def one(req, h):
    units, refused = make_units([req])
    assert not refused
    return units[0], make_slots([h], FULL)[0]


def test_alive_rejects_dead_hosts():
    u, s = one(vm("a"), host("h", alive=False))
    assert not Alive()(u, s)
    u, s = one(vm("a"), host("h"))
    assert Alive()(u, s)


def test_power_accepts_passive_only_when_waking_is_allowed():
    u, s = one(vm("a"), host("h", power=PowerState.PASSIVE))
    assert ActiveOrWakeable(True)(u, s)
    assert not ActiveOrWakeable(False)(u, s)
    u, s = one(vm("a"), host("h", power=PowerState.WAKING))
    assert ActiveOrWakeable(False)(u, s)


def test_pinned():
    u, s = one(vm("a", pinned_host="h"), host("h"))
    assert Pinned()(u, s)
    u, s = one(vm("a", pinned_host="other"), host("h"))
    assert not Pinned()(u, s)
    u, s = one(vm("a"), host("h"))
    assert Pinned()(u, s)


def test_excluded():
    u, s = one(vm("a", excluded_hosts=frozenset({"h"})), host("h"))
    assert not Excluded()(u, s)
    u, s = one(vm("a", excluded_hosts=frozenset({"x"})), host("h"))
    assert Excluded()(u, s)


def test_network_requires_a_free_address_when_known():
    nets = frozenset({"blue"})
    assert Network()(*one(vm("a", network="blue"), host("h", networks=nets)))
    assert not Network()(*one(vm("a", network="red"), host("h", networks=nets)))
    # No network information on the host: no constraint can be checked, so none is applied.
    assert Network()(*one(vm("a", network="red"), host("h")))


def test_anti_affinity_sees_groups_already_on_the_host():
    u, s = one(vm("a", anti_affinity_group="g"), host("h"))
    assert AntiAffinity()(u, s)
    s.anti_groups.add("g")
    assert not AntiAffinity()(u, s)
    s.anti_groups = {"other"}
    assert AntiAffinity()(u, s)


def test_affinity_group_that_contradicts_anti_affinity_fits_nowhere():
    units, _ = make_units(
        [
            vm("a", affinity_group="pair", anti_affinity_group="spread"),
            vm("b", affinity_group="pair", anti_affinity_group="spread"),
        ]
    )
    assert len(units) == 1
    s = make_slots([host("h")], FULL)[0]
    assert not Affinity()(units[0], s)


def test_capacity_counts_used_and_reserved_and_mid():
    h = host("h", cpu=8, mem_gib=16, used=(4, 4), reserved=(2, 2))
    assert Capacity()(*one(vm("a", 2, 10), h))
    assert not Capacity()(*one(vm("a", 3, 1), h))  # 4 used + 2 reserved + 3 > 8
    assert not Capacity()(*one(vm("a", 1, 11), h))


def test_capacity_treats_zero_total_as_unconstrained():
    h = host("h")  # rx/tx totals are 0
    u, s = one(vm("a"), h)
    u.demand = (1.0, 1.0, 500.0, 500.0)
    assert Capacity()(u, s)


def test_explain_charges_first_failing_filter_and_phrases_it():
    hosts = [host("dead", alive=False), host("small", cpu=1), host("tiny", cpu=1), host("other")]
    units, _ = make_units([vm("a", cpu=4, excluded_hosts=frozenset({"other"}))])
    rej = explain(default_filters(), units[0], make_slots(hosts, FULL))
    assert rej.filtered == {"alive": 1, "excluded": 1, "capacity": 2}
    assert (
        rej.reason
        == "no host fits: alive rejected 1, excluded rejected 1, capacity rejected 2 of 4 hosts"
    )


def test_explain_with_no_hosts():
    units, _ = make_units([vm("a")])
    rej = explain(default_filters(), units[0], [])
    assert rej.reason == "no host fits: there are no hosts"
    assert rej.filtered == {}
