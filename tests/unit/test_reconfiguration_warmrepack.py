"""The warm-repack consolidation chosen by configuration (``consolidation_policy``) and applied
by a group manager: real group manager parts over fake local controllers
(``tests.unit.test_reconfiguration.Group``)."""

from __future__ import annotations

from tests.unit.test_reconfiguration import GIB, Group, small


async def test_warm_repack_is_chosen_by_the_settings_and_its_plan_applied() -> None:
    g = Group(consolidation_policy="warm-repack")
    for i in (1, 2, 3):
        g.add_lc(f"lc-{i}", small(i))
    before = g.placement()
    report = await g.reconf.consolidate_once()
    assert report["policy"] == "warm-repack"
    assert report["applied"] and report["failed"] == []
    assert len(g.carriers()) < 3, report
    assert set(g.placement()) == set(before), "every VM is still placed somewhere"
    assert g.hosts.reservations.snapshot() == {}, "every reservation released"


async def test_warm_repack_under_the_group_managers_cooldown_moves_no_vm_twice() -> None:
    g = Group(consolidation_policy="warm-repack", migration_cooldown=3600.0)
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", {"vm-2": (2.0, 1 * GIB)})
    await g.reconf.consolidate_once()
    assert [m[0] for m in g.moves] == ["vm-1"]
    # A roomier host appears: vm-1 and vm-2 would both fit there, but vm-1 is cooling down.
    g.add_lc("lc-3", {"vm-3": (1.0, 0.5 * GIB)}, cpus=8, memory=8 * GIB)
    second = await g.reconf.consolidate_once()
    assert "vm-1" not in [m["vm_id"] for m in second["plan"]["migrations"]]
    assert "lc-2" not in second["powered_down_candidates"]
