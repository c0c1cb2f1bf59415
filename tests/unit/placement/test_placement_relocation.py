"""Overload and underload relocation, and the thresholds that trigger them."""

from __future__ import annotations

from placement_builders import GIB

from groupmanager.placement import (
    HostView,
    PowerState,
    Thresholds,
    VMView,
    is_overloaded,
    is_underloaded,
    relocate_overloaded,
    relocate_underloaded,
)

THR = Thresholds.uniform(0.2, 0.8, 0.9)


def vmv(vid, cpu, mem_gib):
    return VMView(vid, (float(cpu), mem_gib * GIB, 0.0, 0.0))


def loaded(hid, vms, cpu=10, mem_gib=10, power=PowerState.ACTIVE):
    used = (float(sum(v.demand[0] for v in vms)), sum(v.demand[1] for v in vms), 0.0, 0.0)
    return HostView(
        hid, (float(cpu), mem_gib * GIB, 0.0, 0.0), used=used, vms=tuple(vms), power=power
    )


def test_thresholds_classify_hosts():
    assert is_overloaded(loaded("h", [vmv("a", 9.5, 1)]), THR)
    assert not is_overloaded(loaded("h", [vmv("a", 9, 1)]), THR)
    assert is_underloaded(loaded("h", [vmv("a", 1, 1)]), THR)
    assert not is_underloaded(loaded("h", [vmv("a", 1, 3)]), THR)
    assert is_underloaded(loaded("h", []), THR)


def test_used_estimate_overrides_request():
    v = VMView("a", (4.0, GIB, 0.0, 0.0), used=(1.0, GIB, 0.0, 0.0))
    assert v.demand == (1.0, GIB, 0.0, 0.0)


def test_overload_moves_the_fewest_vms_and_the_least_memory_among_ties():
    # 10 cpu used, MID is 8: 2 cpu must go. One VM suffices; of the two that do, the
    # smaller-memory one is chosen, not the smallest VMs added up.
    vms = [vmv("s1", 1, 1), vmv("s2", 1, 1), vmv("big", 3, 4), vmv("lean", 2, 1), vmv("x", 3, 1)]
    src = loaded("src", vms)
    dests = [loaded("d", [], cpu=10)]
    plan = relocate_overloaded(src, dests, THR)
    assert [(m.vm_id, m.destination) for m in plan.migrations] == [("lean", "d")]
    assert plan.migrations[0].memory == 1 * GIB


def test_overload_needs_several_vms_when_none_suffices_alone():
    vms = [vmv(f"v{i}", 2, 1) for i in range(5)] + [vmv("w", 1, 1)]  # 11 cpu used, 3 must go
    plan = relocate_overloaded(loaded("src", vms, cpu=11), [loaded("d", [], cpu=20)], THR)
    moved = [m.vm_id for m in plan.migrations]
    assert len(moved) == 2
    assert all(m.source == "src" for m in plan.migrations)


def test_overload_destinations_stay_under_mid():
    vms = [vmv("a", 3, 1), vmv("b", 3, 1), vmv("c", 3, 1)]  # 9 cpu, MID 8
    full = loaded("full", [vmv("f", 6, 1)])  # 6 + 3 > 8
    roomy = loaded("roomy", [vmv("r", 2, 1)])
    plan = relocate_overloaded(loaded("src", vms), [full, roomy], THR)
    assert [m.destination for m in plan.migrations] == ["roomy"]


def test_overload_with_nowhere_to_go_plans_nothing_and_says_why():
    vms = [vmv("a", 5, 1), vmv("b", 5, 1)]
    plan = relocate_overloaded(loaded("src", vms), [loaded("full", [vmv("f", 7, 1)])], THR)
    assert plan.migrations == []
    assert plan.notes and "MID" in plan.notes[0]


def test_not_overloaded_host_is_left_alone():
    plan = relocate_overloaded(loaded("src", [vmv("a", 2, 1)]), [loaded("d", [])], THR)
    assert plan.migrations == [] and plan.notes


def test_overload_never_targets_the_source_itself():
    src = loaded("src", [vmv("a", 5, 1), vmv("b", 5, 1)])
    plan = relocate_overloaded(src, [src, loaded("d", [])], THR)
    assert plan.migrations and all(m.destination == "d" for m in plan.migrations)


def test_underload_empties_the_host_onto_the_busiest_fitting_host():
    src = loaded("src", [vmv("a", 1, 1), vmv("b", 1, 1)])
    busy = loaded("busy", [vmv("x", 5, 5)])
    idle = loaded("idle", [])
    plan = relocate_underloaded(src, [idle, busy], THR)
    assert {m.vm_id: m.destination for m in plan.migrations} == {"a": "busy", "b": "busy"}
    assert plan.power_down == ["src"]


def test_underload_aborts_when_any_vm_does_not_fit():
    src = loaded("src", [vmv("a", 1, 1), vmv("huge", 1, 7)])
    other = loaded("other", [vmv("x", 1, 2)])
    plan = relocate_underloaded(src, [other], THR)
    assert plan.migrations == [] and plan.power_down == []
    assert plan.unplaced["huge"].filtered == {"capacity": 1}
    assert "not emptied" in plan.notes[0]


def test_underload_never_wakes_a_host_to_empty_another():
    src = loaded("src", [vmv("a", 1, 1)])
    asleep = loaded("asleep", [], power=PowerState.PASSIVE)
    plan = relocate_underloaded(src, [asleep], THR)
    assert plan.migrations == [] and plan.unplaced["a"].filtered == {"power": 1}
