"""Consolidation's limits as a group manager applies them: a migrated VM is not moved again
within ``migration_cooldown``, runs stay within ``migration_budget`` (per hour and per active
host), and without a cooldown a host that just received VMs is not emptied. Real group
manager parts over fake local controllers (``tests.unit.test_reconfiguration.Group``)."""

from __future__ import annotations

from tests.unit.test_reconfiguration import GIB, Group, small


async def test_a_vm_that_migrated_is_not_moved_again_within_the_cooldown() -> None:
    g = Group(migration_cooldown=3600.0, consolidation_policy="repack")
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", {"vm-2": (2.0, 1 * GIB)})
    first = await g.reconf.consolidate_once()
    assert [m[0] for m in g.moves] == ["vm-1"] and first["applied"]
    # lc-1 is empty now; a new host with more room shows up: vm-1 and vm-2 would both fit
    # there, and lc-2 could be released, but vm-1 is cooling down on lc-2.
    g.add_lc("lc-3", {"vm-3": (1.0, 0.5 * GIB)}, cpus=8, memory=8 * GIB)
    second = await g.reconf.consolidate_once()
    assert "vm-1" not in [m["vm_id"] for m in second["plan"]["migrations"]]
    assert "lc-2" not in second["powered_down_candidates"]
    assert any("cooldown" in n and "lc-2" in n for n in second["plan"]["notes"]), second["plan"]["notes"]
    # Once the cooldown is over (forget when it moved), it may move again.
    g.reconf._moved_at.clear()
    third = await g.reconf.consolidate_once()
    assert "lc-2" in third["powered_down_candidates"] or "lc-3" in third["powered_down_candidates"]


async def test_a_run_plans_no_more_migrations_than_the_budget_allows() -> None:
    # 0.25 migrations per host and hour over 4 active hosts: one migration in the bucket.
    g = Group(migration_budget=0.25, consolidation_policy="repack")
    for i in (1, 2, 3, 4):
        g.add_lc(f"lc-{i}", small(i))
    report = await g.reconf.consolidate_once()
    assert len(report["plan"]["migrations"]) == 1 and len(g.moves) == 1
    assert any("budget" in n for n in report["plan"]["notes"]), report["plan"]["notes"]
    # The bucket is empty now: the next run (immediately after) moves nothing.
    again = await g.reconf.consolidate_once()
    assert again["plan"]["migrations"] == [] and len(g.moves) == 1


async def test_without_budget_or_cooldown_a_host_that_received_vms_is_not_emptied() -> None:
    g = Group(consolidation_interval=3600.0, consolidation_policy="repack")
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", {"vm-2": (2.0, 1 * GIB)})
    await g.reconf.consolidate_once()
    assert g.moves == [("vm-1", "lc-1", "lc-2")]
    g.add_lc("lc-3", {"vm-3": (1.0, 0.5 * GIB)}, cpus=8, memory=8 * GIB)
    report = await g.reconf.consolidate_once()
    assert all(m["source"] != "lc-2" for m in report["plan"]["migrations"])
    assert "lc-2" not in report["powered_down_candidates"]
