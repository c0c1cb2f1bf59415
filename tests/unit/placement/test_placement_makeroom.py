"""make_room: one migration between active hosts instead of waking a sleeping host."""

from __future__ import annotations

from placement_builders import FULL, GIB

from groupmanager.placement import HostView, Migration, Placement, PowerState, VMView, make_room


def loaded(hid: str, *vms: tuple[str, float, float], cpu: float = 8, mem_gib: float = 16,
           power: PowerState = PowerState.ACTIVE) -> HostView:
    views = tuple(VMView(v, (float(c), m * GIB, 0.0, 0.0)) for v, c, m in vms)
    used = (sum(v.requested[0] for v in views), sum(v.requested[1] for v in views), 0.0, 0.0)
    return HostView(hid, (float(cpu), mem_gib * GIB, 0.0, 0.0), used, power=power, vms=views)


def demand(cpu: float, mem_gib: float) -> tuple[float, float, float, float]:
    return (float(cpu), mem_gib * GIB, 0.0, 0.0)


# Two active hosts with 4 vcpus / 8 GiB free between them, never on one: a 3 vcpu / 6 GiB VM
# fits on neither. Moving "small" (1 vcpu / 2 GiB) from a to b makes the room on a.
FRAGMENTED = [
    loaded("a", ("small", 1, 2), ("big-a", 5, 10)),  # free 2 vcpus / 4 GiB
    loaded("b", ("big-b", 6, 8)),                     # free 2 vcpus / 8 GiB
    loaded("c", power=PowerState.PASSIVE),
]


def test_one_shift_makes_room_where_the_request_fits_on_no_active_host() -> None:
    plan = make_room("new", demand(3, 6), FRAGMENTED, FULL)
    assert plan.migrations == [Migration("small", "a", "b", 2 * GIB)]
    assert plan.placements == [Placement("new", "a")]
    assert plan.notes == ["small from a to b makes room for new on a"]


def test_no_shift_when_a_host_has_the_room_already() -> None:
    plan = make_room("new", demand(2, 4), FRAGMENTED, FULL)
    assert not plan.migrations and not plan.placements
    assert plan.notes == ["an active host has the room already"]


def test_frozen_vms_never_move() -> None:
    plan = make_room("new", demand(3, 6), FRAGMENTED, FULL, frozen={"small"})
    # big-a (5/10) would make room on a too, but fits nowhere else; big-b cannot make enough.
    assert not plan.migrations
    assert plan.notes == ["no single migration between active hosts makes the room"]


def test_sleeping_hosts_are_neither_sources_nor_destinations() -> None:
    hosts = [loaded("a", ("small", 1, 2), ("big-a", 5, 10)), loaded("b", ("big-b", 7, 15)),
             loaded("c", power=PowerState.PASSIVE)]
    plan = make_room("new", demand(3, 6), hosts, FULL)
    assert not plan.migrations  # small fits only on c, which is asleep
    assert make_room("new", demand(1, 1), [loaded("c", power=PowerState.PASSIVE)], FULL).notes == ["no active host"]


def test_the_cheapest_shift_wins_and_ties_are_decided_by_ids() -> None:
    hosts = [
        loaded("a", ("a-4g", 1, 4), ("a-rest", 5, 8)),   # free 2 / 4: without a-4g, 3 / 8
        loaded("b", ("b-2g", 1, 2), ("b-rest", 5, 10)),  # free 2 / 4: without b-2g, 3 / 6
        loaded("d", ("d-rest", 6, 12)),                  # free 2 / 4: takes either
    ]
    plan = make_room("new", demand(3, 6), hosts, FULL)
    # 2 GiB to copy, not 4; a and d have the same room left: the first id
    assert plan.migrations == [Migration("b-2g", "b", "a", 2 * GIB)]
    again = make_room("new", demand(3, 6), list(reversed(hosts)), FULL)
    assert again.migrations == plan.migrations  # the order of the views does not matter
