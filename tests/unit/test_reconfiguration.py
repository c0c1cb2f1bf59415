"""Relocation and consolidation through a manager role's scope: what is decided, what the applier
re-checks before each step, what it reports, and how it runs (lock, periodic tasks, message).

The group manager's real parts (``Hosts``, ``EnergySaver``, ``VirtualMachines``, ``Migrations``,
``Reconfiguration``) work through a real ``Scope``; only the local controllers are fake peers,
which move a domain when told to and can refuse or be unreachable."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from groupmanager.manager.energy import EnergySaver
from groupmanager.manager.hosts import Hosts, LocalControllerRecord
from groupmanager.manager.reconfiguration import RECONFIGURE_KIND, TASK_PREFIX, Reconfiguration
from groupmanager.manager.vms import Migrations, VirtualMachines
from groupmanager.placement import Migration
from groupmanager.thresholds import thresholds_from
from snooze.codes import ErrorCode
from snooze.http import ApiError
from snooze.models import LocalControllerDescription, NetworkAddress, Status
from snooze.rpc import RpcError
from tests.peers import Network, node, settings

GIB = 1024 * 1024  # KiB


class Group:
    """One group manager's reconfiguration parts over fake local controllers."""

    def __init__(self, **gm_options: Any) -> None:
        self.net = Network()
        self.node = node("gm-1", 7001, self.net, settings=settings(**gm_options))
        self.scope = self.node.scope
        self.hosts = Hosts(thresholds_from(self.scope.settings.groupmanager))
        self.energy = EnergySaver(self.scope, self.hosts)
        self.vms = VirtualMachines(self.scope, self.hosts, self.energy)
        self.migrations = Migrations(self.scope, self.hosts, self.vms)
        self.reconf = Reconfiguration(self.scope, self.hosts, self.migrations, self.energy)
        self.moves: list[tuple[str, str, str]] = []
        self.fail: dict[str, str] = {}  # vm id -> how its migration fails (an error code, or "unreachable")
        self.after_move: Callable[[str], Awaitable[None] | None] | None = None

    def add_lc(self, lc_id: str, vms: dict[str, tuple[float, float]] | None = None, *, cpus: float = 4,
               memory: float = 4 * GIB, history: list[list[float]] | None = None,
               usage: dict[str, list[float]] | None = None, status: Status = Status.ACTIVE) -> LocalControllerRecord:
        port = 20000 + len(self.hosts.lcs)
        desc = LocalControllerDescription(lc_id, NetworkAddress("127.0.0.1", port),
                                          (float(cpus), float(memory), 0.0, 0.0), status=status)
        rec = LocalControllerRecord(desc, history=deque(maxlen=10))
        for name, (c, m) in (vms or {}).items():
            rec.add_vm(name, (c, m, 0.0, 0.0), uuid=f"uuid-{name}")
        rec.vm_usage = dict(usage or {})
        for sample in history or []:
            rec.history.append({"timestamp": 0, "hostUsage": sample})
        self.hosts.lcs[lc_id] = rec
        self.net.serve(port, "lc.migrate", lambda body: self._lc_migrate(lc_id, body))
        return rec

    async def _lc_migrate(self, source: str, body: dict[str, Any]) -> dict[str, Any]:
        vm_id, dest = body["vmId"], body["destination"]
        assert body["uuid"] == f"uuid-{vm_id}", "orders name the domain by its UUID"
        assert dest["address"] == self.hosts.lcs[dest["id"]].description.control_data_address.to_json()
        await asyncio.sleep(0)
        failure = self.fail.get(vm_id)
        if failure == "unreachable":
            raise RpcError(ErrorCode.UNREACHABLE, f"lc.migrate to {source}: connection refused")
        if failure is not None:
            return {"ok": False, "errorCode": failure, "message": f"{vm_id} refused"}
        self.moves.append((vm_id, source, dest["id"]))
        if self.after_move is not None:
            result = self.after_move(vm_id)
            if result is not None:
                await result
        return {"ok": True, "duration": 0.01}

    def carriers(self) -> set[str]:
        return {lc for lc, r in self.hosts.lcs.items() if any(d["state"] == "RUNNING" for d in r.domains)}

    def placement(self) -> dict[str, str]:
        return {d["name"]: lc for lc, r in self.hosts.lcs.items() for d in r.domains}


def small(n: int) -> dict[str, tuple[float, float]]:
    return {f"vm-{n}": (1.0, 0.5 * GIB)}


# -- consolidation --------------------------------------------------------------------------
async def test_consolidation_empties_hosts_and_reports_them_as_power_down_candidates() -> None:
    g = Group()
    for i in (1, 2, 3):
        g.add_lc(f"lc-{i}", small(i))
    g.add_lc("lc-idle")
    report = await g.reconf.consolidate_once()
    json.dumps(report)  # the API and the internal message send it as is
    assert len(report["applied"]) == 2 and report["failed"] == []
    assert len(g.carriers()) == 1
    assert set(report["powered_down_candidates"]) == {"lc-1", "lc-2", "lc-3", "lc-idle"} - g.carriers()
    assert report["policy"] == "cost-aware" and len(report["plan"]["migrations"]) == 2
    assert g.hosts.reservations.snapshot() == {}, "every reservation released"


async def test_consolidation_policy_comes_from_the_settings() -> None:
    g = Group(consolidation_policy="sercon")
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", small(2))
    report = await g.reconf.consolidate_once()
    assert report["policy"] == "sercon" and len(g.carriers()) == 1


def test_an_unknown_policy_or_estimator_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="sercon"):
        Group(consolidation_policy="nope")
    with pytest.raises(ValueError, match="average"):
        Group(estimator="nope")


async def test_passive_hosts_are_neither_sources_nor_destinations() -> None:
    g = Group()
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-off", status=Status.PASSIVE)
    report = await g.reconf.consolidate_once()
    assert report["plan"]["migrations"] == [] and g.moves == []


# -- the applier's re-checks ------------------------------------------------------------------
async def test_a_step_that_no_longer_fits_is_skipped_and_its_source_is_not_a_candidate() -> None:
    g = Group()
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", small(2))
    g.add_lc("lc-big", {"big": (2.0, 2 * GIB)})

    def someone_started_a_vm(_vm: str) -> None:
        # Between two steps, a VM started elsewhere fills the destination.
        g.hosts.lcs["lc-big"].add_vm("intruder", (1.0, 1.5 * GIB, 0.0, 0.0))
        g.after_move = None

    g.after_move = someone_started_a_vm
    report = await g.reconf.consolidate_once()
    assert [m["destination"] for m in report["plan"]["migrations"]] == ["lc-big", "lc-big"]
    [applied] = report["applied"]
    [skipped] = report["failed"]
    assert skipped["attempted"] is False and "no longer fits" in skipped["reason"]
    assert report["powered_down_candidates"] == [applied["source"]]
    assert skipped["source"] not in report["powered_down_candidates"]
    assert g.placement()[skipped["vm"]] == skipped["source"], "the skipped VM did not move"


async def test_a_refused_migration_stops_the_evacuation_of_its_source_and_keeps_what_moved() -> None:
    g = Group()
    g.add_lc("lc-src", {"a": (1.0, 0.25 * GIB), "b": (1.0, 0.5 * GIB)})
    g.add_lc("lc-dst", {"c": (2.0, 2 * GIB)})
    g.fail["b"] = "MIGRATION_FAILED"  # b is the larger, so it is tried first
    report = await g.reconf.consolidate_once()
    failed = {f["vm"]: f for f in report["failed"]}
    assert failed["b"]["attempted"] is True and "MIGRATION_FAILED" in failed["b"]["reason"]
    assert failed["a"]["attempted"] is False and failed["a"]["reason"].startswith("not tried")
    assert report["applied"] == [] and report["powered_down_candidates"] == []
    assert g.placement() == {"a": "lc-src", "b": "lc-src", "c": "lc-dst"}
    assert g.hosts.reservations.snapshot() == {}, "the refused step's reservation was released"


async def test_partial_success_is_reported_step_by_step() -> None:
    g = Group()
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", small(2))
    g.add_lc("lc-3", {"big": (2.0, 2 * GIB)})
    g.fail["vm-2"] = "unreachable"
    report = await g.reconf.consolidate_once()
    assert [a["vm"] for a in report["applied"]] == ["vm-1"]
    [failed] = report["failed"]
    assert failed["vm"] == "vm-2" and "LOCAL_CONTROLLER_UNREACHABLE" in failed["reason"]
    assert report["powered_down_candidates"] == ["lc-1"]


def test_recheck_reasons() -> None:
    g = Group()
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2")
    reconf = g.reconf
    ok = Migration("vm-1", "lc-1", "lc-2", 0.5 * GIB)
    assert reconf.recheck(ok) == (None, (1.0, 0.5 * GIB, 0.0, 0.0))
    assert "no longer runs" in str(reconf.recheck(Migration("ghost", "lc-1", "lc-2", 0))[0])
    assert "left this group manager" in str(reconf.recheck(Migration("vm-1", "lc-1", "lc-9", 0))[0])
    assert "source lc-9 left" in str(reconf.recheck(Migration("vm-1", "lc-9", "lc-2", 0))[0])
    g.hosts.reservations.reserve("lc-2", "vm-1", (1.0, 0.5 * GIB, 0.0, 0.0))
    assert "already being moved" in str(reconf.recheck(ok)[0])
    g.hosts.reservations.release("lc-2", "vm-1")
    g.migrations.moving.add("vm-1")
    assert "already being moved" in str(reconf.recheck(ok)[0])
    g.migrations.moving.clear()
    g.hosts.lcs["lc-2"].description.status = Status.PASSIVE
    assert "is PASSIVE" in str(reconf.recheck(ok)[0])
    g.hosts.lcs["lc-2"].description.status = Status.ACTIVE
    g.hosts.lcs["lc-1"].domains[0]["state"] = "SHUTOFF"
    assert "no longer runs" in str(reconf.recheck(ok)[0])


def test_the_applier_checks_all_four_resources_with_the_placement_rule() -> None:
    g = Group()
    dest = g.add_lc("lc-2")
    dest.description.total_capacity = (4.0, 4.0 * GIB, 1000.0, 1000.0)
    assert g.hosts.fits("lc-2", (1.0, GIB, 1000.0, 0.0)) is None, "exactly full fits"
    why = g.hosts.fits("lc-2", (1.0, GIB, 0.0, 1000.5))
    assert why is not None and why.startswith("tx: 1000.5 needed, 1000 free on lc-2")


# -- relocation -------------------------------------------------------------------------------
async def test_an_overloaded_host_sheds_the_fewest_vms_by_estimated_usage() -> None:
    g = Group()
    # Requested 3 of 4 CPUs, but the guests (and the host) use more: 5 CPUs on average.
    g.add_lc("lc-hot", {"x": (1.0, 0.5 * GIB), "y": (1.0, 0.5 * GIB), "z": (1.0, 0.5 * GIB)},
             history=[[4.8, 1.5 * GIB, 0, 0], [5.2, 1.5 * GIB, 0, 0]],
             usage={"x": [0.5, 0.5 * GIB, 0, 0], "y": [1.5, 0.5 * GIB, 0, 0], "z": [0.9, 0.5 * GIB, 0, 0]})
    g.add_lc("lc-cool")
    report = await g.reconf.relocate_once()
    assert [(a["vm"], a["destination"]) for a in report["applied"]] == [("y", "lc-cool")]
    assert report["powered_down_candidates"] == []
    # The samples from before the move no longer count: no second relocation.
    again = await g.reconf.relocate_once()
    assert again["plan"]["migrations"] == [] and g.moves == [("y", "lc-hot", "lc-cool")]
    # New samples after the move count again.
    g.hosts.lcs["lc-hot"].history.append({"timestamp": 1, "hostUsage": [4.4, 1 * GIB, 0, 0]})
    third = await g.reconf.relocate_once()
    assert len(third["applied"]) == 1


async def test_without_history_the_estimate_is_the_requested_capacity() -> None:
    g = Group()
    g.add_lc("lc-1", {"x": (4.0, 1 * GIB)})
    g.add_lc("lc-2")
    report = await g.reconf.relocate_once()
    assert report["plan"]["migrations"] == [] and report["applied"] == []


async def test_underloaded_hosts_are_emptied_onto_busier_ones_never_onto_an_emptied_one() -> None:
    g = Group(cpu_thresholds=[0.5, 1.0, 1.0], memory_thresholds=[0.5, 1.0, 1.0])
    for i in (1, 2, 3):
        g.add_lc(f"lc-{i}", small(i))
    g.add_lc("lc-busy", {"big": (4.5, 1 * GIB)}, cpus=8, memory=8 * GIB)  # 56 % CPU: not underloaded
    report = await g.reconf.relocate_once()
    assert report["failed"] == []
    assert g.carriers() == {"lc-busy"}
    assert sorted(report["powered_down_candidates"]) == ["lc-1", "lc-2", "lc-3"]
    assert len(g.moves) == 3, "no VM moved twice"


async def test_when_every_host_is_underloaded_they_are_emptied_onto_each_other() -> None:
    g = Group(cpu_thresholds=[0.5, 1.0, 1.0], memory_thresholds=[0.5, 1.0, 1.0])
    for i in (1, 2, 3):
        g.add_lc(f"lc-{i}", small(i))
    report = await g.reconf.relocate_once()
    assert len(g.carriers()) == 1 and len(g.moves) == 2
    assert sorted(report["powered_down_candidates"]) == sorted({"lc-1", "lc-2", "lc-3"} - g.carriers())


async def test_an_underloaded_host_that_cannot_be_emptied_moves_nothing() -> None:
    g = Group(cpu_thresholds=[0.5, 1.0, 1.0], memory_thresholds=[0.5, 1.0, 1.0])
    g.add_lc("lc-1", {"a": (1.0, 0.5 * GIB), "b": (1.0, 0.5 * GIB)}, cpus=8, memory=8 * GIB)
    g.add_lc("lc-2", {"big": (3.5, 0.5 * GIB)})
    report = await g.reconf.relocate_once()
    assert g.moves == [] and report["powered_down_candidates"] == []
    assert any("not emptied" in n for n in report["plan"]["notes"])


# -- running: lock, periodic tasks, the internal message, closing the scope -------------------
async def test_reconfigurations_never_overlap() -> None:
    g = Group()
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", small(2))
    gate, moving = asyncio.Event(), asyncio.Event()

    async def hold(_vm: str) -> None:
        moving.set()
        await gate.wait()

    g.after_move = hold
    first = asyncio.create_task(g.reconf.consolidate_once())
    await moving.wait()
    busy = await g.reconf.relocate_once(wait=False)
    assert busy["busy"] is True and busy["applied"] == []
    queued = asyncio.create_task(g.reconf.relocate_once())
    await asyncio.sleep(0.01)
    assert not queued.done(), "a waiting run queues behind the running one"
    gate.set()
    assert len((await first)["applied"]) == 1
    assert (await queued)["busy"] is False


async def test_start_registers_the_message_and_only_the_enabled_periodic_tasks() -> None:
    g = Group(consolidation_interval=0.05)
    g.add_lc("lc-1", small(1))
    g.add_lc("lc-2", small(2))
    moved = asyncio.Event()
    g.after_move = lambda _vm: moved.set()
    g.reconf.start()
    assert g.scope.task_names() == [TASK_PREFIX + "consolidation"]
    _handler, order = g.node.internal.handlers[RECONFIGURE_KIND]
    assert order is True, "an order: refused from a stale epoch"
    assert g.moves == [], "the first run waits one interval (local controllers are still joining)"
    await asyncio.wait_for(moved.wait(), 5)  # the periodic consolidation
    assert len(g.moves) == 1
    with pytest.raises(ApiError) as bad:
        await g.node.ask(RECONFIGURE_KIND, {"what": "defragment"})
    assert bad.value.status == 400 and bad.value.field == "what"
    report = await g.node.ask(RECONFIGURE_KIND, {"what": "relocate"})
    assert report["what"] == "relocate"
    await g.scope.close()
    assert g.scope.task_names() == [] and RECONFIGURE_KIND not in g.node.internal.handlers
    with pytest.raises(RpcError) as gone:
        await g.node.ask(RECONFIGURE_KIND, {"what": "relocate"})
    assert gone.value.code is ErrorCode.UNKNOWN_KIND


async def test_both_intervals_default_to_disabled() -> None:
    g = Group()
    g.reconf.start()
    assert g.scope.task_names() == [] and RECONFIGURE_KIND in g.node.internal.handlers
    await g.scope.close()


async def test_closing_the_scope_halts_an_on_demand_run_between_steps() -> None:
    g = Group()
    for i in (1, 2, 3):
        g.add_lc(f"lc-{i}", small(i))
    g.reconf.start()
    g.after_move = lambda _vm: g.scope.close()
    report = await g.reconf.consolidate_once()
    assert len(report["applied"]) == 1
    assert [f["reason"] for f in report["failed"]] == ["reconfiguration stopped"]


def test_the_estimator_reads_the_latest_window_of_samples() -> None:
    g = Group(estimator="ewma", estimator_window=2)
    rec = g.add_lc("lc-1", small(1), history=[[9.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    cpu = g.reconf._estimate("lc-1", rec)[0]
    assert 1.0 < cpu < 3.0, "ewma over the last two samples only"
    g = Group(estimator_window=2)
    rec = g.add_lc("lc-1", small(1), history=[[9.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    assert g.reconf._estimate("lc-1", rec)[0] == 2.0


async def test_closing_during_a_periodic_run_lets_the_migration_under_way_commit() -> None:
    g = Group(consolidation_interval=0.05)
    for i in (1, 2, 3):
        g.add_lc(f"lc-{i}", small(i))
    gate, moving = asyncio.Event(), asyncio.Event()

    async def hold(_vm: str) -> None:
        moving.set()
        await gate.wait()

    g.after_move = hold
    g.reconf.start()
    await moving.wait()
    closing = asyncio.create_task(g.scope.close())
    await asyncio.sleep(0.05)
    assert not closing.done(), "the run under way is drained, not cancelled"
    assert RECONFIGURE_KIND not in g.node.internal.handlers, "the handler went at once"
    gate.set()
    await closing
    assert g.scope.task_names() == []
    report = g.reconf.last_report
    assert report is not None
    assert len(report["applied"]) == 1
    assert [f["reason"] for f in report["failed"]] == ["reconfiguration stopped"]
    assert g.hosts.reservations.snapshot() == {}
