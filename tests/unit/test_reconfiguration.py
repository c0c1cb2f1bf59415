"""Relocation and consolidation on a fake manager role: what is decided, what the applier
re-checks before each step, what it reports, and how it runs (lock, periodic tasks, message)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from groupmanager.manager.energy import EnergySaver
from groupmanager.manager.reconfiguration import RECONFIGURE_KIND, TASK_PREFIX, Reconfiguration
from groupmanager.manager.role import LocalControllerRecord
from groupmanager.manager.vms import Migrations, VirtualMachines
from snooze import config as cfg
from snooze.http import ApiError
from snooze.models import LocalControllerDescription, NetworkAddress, Status
from snooze.protocol import Envelope

GIB = 1024 * 1024  # KiB


class FakeInternal:
    def __init__(self) -> None:
        self.handlers: dict[str, tuple[Any, bool]] = {}

    def on(self, kind: str, handler: Any, *, order: bool = False) -> None:
        self.handlers[kind] = (handler, order)


class FakeGM:
    def __init__(self, settings: cfg.Settings) -> None:
        self.settings = settings
        self.internal = FakeInternal()
        self.periodic: dict[str, tuple[Callable[[], float], Callable[[], Awaitable[None]]]] = {}
        self.cancelled: list[str] = []

    def every(self, name: str, interval: Callable[[], float], fn: Callable[[], Awaitable[None]]) -> None:
        self.periodic[name] = (interval, fn)

    def cancel(self, name: str) -> None:
        self.cancelled.append(name)
        self.periodic.pop(name, None)


class FakeRole:
    """The parts of ManagerRole reconfiguration uses, with the real capacity bookkeeping
    (VirtualMachines, Migrations.fits) and a migrate that only moves the records."""

    def __init__(self, **gm_options: Any) -> None:
        settings = cfg.Settings()
        for key, value in gm_options.items():
            setattr(settings.groupmanager, key, value)
        self.gm = FakeGM(settings)
        self.lcs: dict[str, LocalControllerRecord] = {}
        self.running = True
        self.vms = VirtualMachines(self)  # type: ignore[arg-type]
        self.migrations = Migrations(self.vms)
        self.energy = EnergySaver(self)  # type: ignore[arg-type]  (off unless energy_management)
        self.moves: list[tuple[str, str, str]] = []
        self.fail: dict[str, str] = {}  # vm id -> error code its migration fails with
        self.after_move: Callable[[str], Any] | None = None
        self.migrations.migrate = self._migrate  # type: ignore[method-assign]

    async def _migrate(self, vm_id: str, source: str, dest: dict[str, Any], requested_hint: Any = None) -> dict[str, Any]:
        assert set(dest) >= {"id", "address", "hypervisorSettings", "status"}
        assert dest["address"] == self.lcs[dest["id"]].description.control_data_address.to_json()
        await asyncio.sleep(0)
        if vm_id in self.fail:
            raise ApiError(409, self.fail[vm_id], f"{vm_id} stays on {source}: refused")
        requested = self.migrations._drop(source, vm_id)
        assert requested is not None
        self.migrations._adopt(dest["id"], vm_id, requested)
        self.moves.append((vm_id, source, dest["id"]))
        if self.after_move is not None:
            result = self.after_move(vm_id)
            if asyncio.iscoroutine(result):
                await result
        return {"ok": True}

    def add_lc(self, lc_id: str, vms: dict[str, tuple[float, float]] | None = None, *, cpus: float = 4,
               memory: float = 4 * GIB, history: list[list[float]] | None = None,
               usage: dict[str, list[float]] | None = None, status: Status = Status.ACTIVE) -> LocalControllerRecord:
        desc = LocalControllerDescription(lc_id, NetworkAddress("127.0.0.1", 20000 + len(self.lcs)),
                                          (float(cpus), float(memory), 0.0, 0.0), status=status)
        rec = LocalControllerRecord(desc, history=deque(maxlen=10))
        for name, (c, m) in (vms or {}).items():
            rec.domains.append({"name": name, "state": "RUNNING", "vcpus": c, "memory": m})
            rec.vm_requested[name] = (c, m, 0.0, 0.0)
        rec.vm_usage = dict(usage or {})
        for sample in history or []:
            rec.history.append({"timestamp": 0, "hostUsage": sample})
        self.lcs[lc_id] = rec
        return rec

    def carriers(self) -> set[str]:
        return {lc for lc, r in self.lcs.items() if any(d["state"] == "RUNNING" for d in r.domains)}

    def placement(self) -> dict[str, str]:
        return {d["name"]: lc for lc, r in self.lcs.items() for d in r.domains}


def small(n: int) -> dict[str, tuple[float, float]]:
    return {f"vm-{n}": (1.0, 0.5 * GIB)}


# -- consolidation --------------------------------------------------------------------------
async def test_consolidation_empties_hosts_and_reports_them_as_power_down_candidates() -> None:
    role = FakeRole()
    for i in (1, 2, 3):
        role.add_lc(f"lc-{i}", small(i))
    role.add_lc("lc-idle")
    report = await Reconfiguration(role).consolidate_once()  # type: ignore[arg-type]
    json.dumps(report)  # the API and the internal message send it as is
    assert len(report["applied"]) == 2 and report["failed"] == []
    assert len(role.carriers()) == 1
    assert set(report["powered_down_candidates"]) == {"lc-1", "lc-2", "lc-3", "lc-idle"} - role.carriers()
    assert report["policy"] == "cost-aware" and len(report["plan"]["migrations"]) == 2


async def test_consolidation_policy_comes_from_the_settings() -> None:
    role = FakeRole(consolidation_policy="sercon")
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-2", small(2))
    report = await Reconfiguration(role).consolidate_once()  # type: ignore[arg-type]
    assert report["policy"] == "sercon" and len(role.carriers()) == 1


def test_an_unknown_policy_or_estimator_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="sercon"):
        Reconfiguration(FakeRole(consolidation_policy="nope"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="average"):
        Reconfiguration(FakeRole(estimator="nope"))  # type: ignore[arg-type]


async def test_passive_hosts_are_neither_sources_nor_destinations() -> None:
    role = FakeRole()
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-off", status=Status.PASSIVE)
    report = await Reconfiguration(role).consolidate_once()  # type: ignore[arg-type]
    assert report["plan"]["migrations"] == [] and role.moves == []


# -- the applier's re-checks ------------------------------------------------------------------
async def test_a_step_that_no_longer_fits_is_skipped_and_its_source_is_not_a_candidate() -> None:
    role = FakeRole()
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-2", small(2))
    role.add_lc("lc-big", {"big": (2.0, 2 * GIB)})
    reconf = Reconfiguration(role)  # type: ignore[arg-type]

    def someone_started_a_vm(_vm: str) -> None:
        # Between two steps, a VM started elsewhere fills the destination.
        rec = role.lcs["lc-big"]
        rec.domains.append({"name": "intruder", "state": "RUNNING", "vcpus": 1.0, "memory": 1.5 * GIB})
        rec.vm_requested["intruder"] = (1.0, 1.5 * GIB, 0.0, 0.0)
        role.after_move = None

    role.after_move = someone_started_a_vm
    report = await reconf.consolidate_once()
    assert [m["destination"] for m in report["plan"]["migrations"]] == ["lc-big", "lc-big"]
    [applied] = report["applied"]
    [skipped] = report["failed"]
    assert skipped["attempted"] is False and "no longer fits" in skipped["reason"]
    assert report["powered_down_candidates"] == [applied["source"]]
    assert skipped["source"] not in report["powered_down_candidates"]
    assert role.placement()[skipped["vm"]] == skipped["source"], "the skipped VM did not move"


async def test_a_refused_migration_stops_the_evacuation_of_its_source_and_keeps_what_moved() -> None:
    role = FakeRole()
    role.add_lc("lc-src", {"a": (1.0, 0.25 * GIB), "b": (1.0, 0.5 * GIB)})
    role.add_lc("lc-dst", {"c": (2.0, 2 * GIB)})
    role.fail["b"] = "MIGRATION_FAILED"  # b is the larger, so it is tried first
    report = await Reconfiguration(role).consolidate_once()  # type: ignore[arg-type]
    failed = {f["vm"]: f for f in report["failed"]}
    assert failed["b"]["attempted"] is True and "MIGRATION_FAILED" in failed["b"]["reason"]
    assert failed["a"]["attempted"] is False and failed["a"]["reason"].startswith("not tried")
    assert report["applied"] == [] and report["powered_down_candidates"] == []
    assert role.placement() == {"a": "lc-src", "b": "lc-src", "c": "lc-dst"}


async def test_partial_success_is_reported_step_by_step() -> None:
    role = FakeRole()
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-2", small(2))
    role.add_lc("lc-3", {"big": (2.0, 2 * GIB)})
    role.fail["vm-2"] = "LOCAL_CONTROLLER_UNREACHABLE"
    report = await Reconfiguration(role).consolidate_once()  # type: ignore[arg-type]
    assert [a["vm"] for a in report["applied"]] == ["vm-1"]
    assert [f["vm"] for f in report["failed"]] == ["vm-2"]
    assert report["powered_down_candidates"] == ["lc-1"]


def test_recheck_reasons() -> None:
    from groupmanager.placement import Migration

    role = FakeRole()
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-2")
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    ok = Migration("vm-1", "lc-1", "lc-2", 0.5 * GIB)
    assert reconf.recheck(ok) == (None, (1.0, 0.5 * GIB, 0.0, 0.0))
    assert "no longer runs" in str(reconf.recheck(Migration("ghost", "lc-1", "lc-2", 0))[0])
    assert "left this group manager" in str(reconf.recheck(Migration("vm-1", "lc-1", "lc-9", 0))[0])
    assert "source lc-9 left" in str(reconf.recheck(Migration("vm-1", "lc-9", "lc-2", 0))[0])
    role.vms.reserved["lc-2"]["vm-1"] = (1.0, 0.5 * GIB, 0.0, 0.0)
    assert "already being moved" in str(reconf.recheck(ok)[0])
    role.vms.reserved["lc-2"].clear()
    role.lcs["lc-2"].description.status = Status.PASSIVE
    assert "is PASSIVE" in str(reconf.recheck(ok)[0])
    role.lcs["lc-2"].description.status = Status.ACTIVE
    role.lcs["lc-1"].domains[0]["state"] = "SHUTOFF"
    assert "no longer runs" in str(reconf.recheck(ok)[0])


# -- relocation -------------------------------------------------------------------------------
async def test_an_overloaded_host_sheds_the_fewest_vms_by_estimated_usage() -> None:
    role = FakeRole()
    # Requested 3 of 4 CPUs, but the guests (and the host) use more: 5 CPUs on average.
    role.add_lc("lc-hot", {"x": (1.0, 0.5 * GIB), "y": (1.0, 0.5 * GIB), "z": (1.0, 0.5 * GIB)},
                history=[[4.8, 1.5 * GIB, 0, 0], [5.2, 1.5 * GIB, 0, 0]],
                usage={"x": [0.5, 0.5 * GIB, 0, 0], "y": [1.5, 0.5 * GIB, 0, 0], "z": [0.9, 0.5 * GIB, 0, 0]})
    role.add_lc("lc-cool")
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    report = await reconf.relocate_once()
    assert [(a["vm"], a["destination"]) for a in report["applied"]] == [("y", "lc-cool")]
    assert report["powered_down_candidates"] == []
    # The samples from before the move no longer count: no second relocation.
    again = await reconf.relocate_once()
    assert again["plan"]["migrations"] == [] and role.moves == [("y", "lc-hot", "lc-cool")]
    # New samples after the move count again.
    role.lcs["lc-hot"].history.append({"timestamp": 1, "hostUsage": [4.4, 1 * GIB, 0, 0]})
    third = await reconf.relocate_once()
    assert len(third["applied"]) == 1


async def test_without_history_the_estimate_is_the_requested_capacity() -> None:
    role = FakeRole()
    role.add_lc("lc-1", {"x": (4.0, 1 * GIB)})
    role.add_lc("lc-2")
    report = await Reconfiguration(role).relocate_once()  # type: ignore[arg-type]
    assert report["plan"]["migrations"] == [] and report["applied"] == []


async def test_underloaded_hosts_are_emptied_onto_busier_ones_never_onto_an_emptied_one() -> None:
    role = FakeRole(cpu_thresholds=[0.5, 1.0, 1.0], memory_thresholds=[0.5, 1.0, 1.0])
    for i in (1, 2, 3):
        role.add_lc(f"lc-{i}", small(i))
    role.add_lc("lc-busy", {"big": (4.5, 1 * GIB)}, cpus=8, memory=8 * GIB)  # 56 % CPU: not underloaded
    report = await Reconfiguration(role).relocate_once()  # type: ignore[arg-type]
    assert report["failed"] == []
    assert role.carriers() == {"lc-busy"}
    assert sorted(report["powered_down_candidates"]) == ["lc-1", "lc-2", "lc-3"]
    assert len(role.moves) == 3, "no VM moved twice"


async def test_when_every_host_is_underloaded_they_are_emptied_onto_each_other() -> None:
    role = FakeRole(cpu_thresholds=[0.5, 1.0, 1.0], memory_thresholds=[0.5, 1.0, 1.0])
    for i in (1, 2, 3):
        role.add_lc(f"lc-{i}", small(i))
    report = await Reconfiguration(role).relocate_once()  # type: ignore[arg-type]
    assert len(role.carriers()) == 1 and len(role.moves) == 2
    assert sorted(report["powered_down_candidates"]) == sorted({"lc-1", "lc-2", "lc-3"} - role.carriers())


async def test_an_underloaded_host_that_cannot_be_emptied_moves_nothing() -> None:
    role = FakeRole(cpu_thresholds=[0.5, 1.0, 1.0], memory_thresholds=[0.5, 1.0, 1.0])
    role.add_lc("lc-1", {"a": (1.0, 0.5 * GIB), "b": (1.0, 0.5 * GIB)}, cpus=8, memory=8 * GIB)
    role.add_lc("lc-2", {"big": (3.5, 0.5 * GIB)})
    report = await Reconfiguration(role).relocate_once()  # type: ignore[arg-type]
    assert role.moves == [] and report["powered_down_candidates"] == []
    assert any("not emptied" in n for n in report["plan"]["notes"])


# -- running: lock, periodic tasks, the internal message -------------------------------------
async def test_reconfigurations_never_overlap() -> None:
    role = FakeRole()
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-2", small(2))
    gate, moving = asyncio.Event(), asyncio.Event()

    async def hold(_vm: str) -> None:
        moving.set()
        await gate.wait()

    role.after_move = hold
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    first = asyncio.create_task(reconf.consolidate_once())
    await moving.wait()
    busy = await reconf.relocate_once(wait=False)
    assert busy["busy"] is True and busy["applied"] == []
    queued = asyncio.create_task(reconf.relocate_once())
    await asyncio.sleep(0.01)
    assert not queued.done(), "a waiting run queues behind the running one"
    gate.set()
    assert len((await first)["applied"]) == 1
    assert (await queued)["busy"] is False


async def test_start_registers_the_message_and_only_the_enabled_periodic_tasks() -> None:
    role = FakeRole(consolidation_interval=30.0)
    role.add_lc("lc-1", small(1))
    role.add_lc("lc-2", small(2))
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    reconf.start()
    assert set(role.gm.periodic) == {TASK_PREFIX + "consolidation"}
    handler, order = role.gm.internal.handlers[RECONFIGURE_KIND]
    assert order is True, "an order: refused from a stale epoch"
    interval, tick = role.gm.periodic[TASK_PREFIX + "consolidation"]
    assert interval() == 30.0
    await tick()
    assert role.moves == [], "the first tick (at start-up) does nothing"
    await tick()
    assert len(role.moves) == 1
    with pytest.raises(ApiError) as bad:
        await handler(Envelope("gm.reconfigure", "t", 1, {"what": "defragment"}))
    assert bad.value.status == 400
    report = await handler(Envelope("gm.reconfigure", "t", 1, {"what": "relocate"}))
    assert report["what"] == "relocate"
    reconf.stop()
    assert role.gm.cancelled == [TASK_PREFIX + "consolidation"]
    assert RECONFIGURE_KIND not in role.gm.internal.handlers


async def test_both_intervals_default_to_disabled() -> None:
    role = FakeRole()
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    reconf.start()
    assert role.gm.periodic == {} and RECONFIGURE_KIND in role.gm.internal.handlers
    reconf.stop()


async def test_stop_halts_an_on_demand_run_between_steps() -> None:
    role = FakeRole()
    for i in (1, 2, 3):
        role.add_lc(f"lc-{i}", small(i))
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    reconf.start()
    role.after_move = lambda _vm: reconf.stop()
    report = await reconf.consolidate_once()
    assert len(report["applied"]) == 1
    assert [f["reason"] for f in report["failed"]] == ["reconfiguration stopped"]


def test_the_estimator_reads_the_latest_window_of_samples() -> None:
    role = FakeRole(estimator="ewma", estimator_window=2)
    role.add_lc("lc-1", small(1), history=[[9.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    cpu = reconf._estimate("lc-1", role.lcs["lc-1"])[0]
    assert 1.0 < cpu < 3.0, "ewma over the last two samples only"
    role = FakeRole(estimator_window=2)
    role.add_lc("lc-1", small(1), history=[[9.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    assert Reconfiguration(role)._estimate("lc-1", role.lcs["lc-1"])[0] == 2.0  # type: ignore[arg-type]


async def test_stopping_during_a_periodic_run_lets_the_migration_under_way_commit() -> None:
    role = FakeRole(consolidation_interval=5.0)
    for i in (1, 2, 3):
        role.add_lc(f"lc-{i}", small(i))
    gate, moving = asyncio.Event(), asyncio.Event()

    async def hold(_vm: str) -> None:
        moving.set()
        await gate.wait()

    role.after_move = hold
    reconf = Reconfiguration(role)  # type: ignore[arg-type]
    reconf.start()
    _, tick = role.gm.periodic[TASK_PREFIX + "consolidation"]
    await tick()  # the start-up tick
    running = asyncio.create_task(tick())
    await moving.wait()
    reconf.stop()
    running.cancel()  # what Service.cancel does
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.gather(*reconf._runs)
    assert reconf.last_report is not None
    assert len(reconf.last_report["applied"]) == 1
    assert [f["reason"] for f in reconf.last_report["failed"]] == ["reconfiguration stopped"]
