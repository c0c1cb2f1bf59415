"""The energy saver against flapping: with consolidation_settle, consolidation waits while a
host is waking and for that long after one re-joined; and a host woken while it is still shutting down is powered on
only once its BMC reports it off.

The group manager's real parts (``Hosts``, ``EnergySaver``, ``Reconfiguration``) work through a
real ``Scope``; the local controllers are fake peers that accept power-saving orders and
migrations, and the wake-up driver of the last tests is a fake BMC."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from groupmanager.manager.hosts import LocalControllerRecord
from snooze.models import LocalControllerDescription, NetworkAddress, Status
from tests.unit.test_reconfiguration import Group as ReconfigurationGroup

GIB = 1024 * 1024  # KiB


class Group(ReconfigurationGroup):
    """test_reconfiguration's group manager, energy management on, hosts that accept orders."""

    def __init__(self, **gm: Any) -> None:
        super().__init__(**{"energy_management": True, "idle_time": 0.0, "reserved_nodes": 1, **gm})

    def add_lc(self, lc_id: str, vms: dict[str, tuple[float, float]] | None = None,
               status: Status = Status.ACTIVE) -> LocalControllerRecord:
        port = 20000 + len(self.hosts.lcs)
        desc = LocalControllerDescription(lc_id, NetworkAddress("127.0.0.1", port), (4.0, 4.0 * GIB, 0.0, 0.0),
                                          status=status)
        rec = LocalControllerRecord(desc, history=deque(maxlen=10))
        for name, (c, m) in (vms or {}).items():
            rec.add_vm(name, (c, m, 0.0, 0.0), uuid=f"uuid-{name}")
        self.hosts.lcs[lc_id] = rec
        self.net.serve(port, "lc.powerSave", lambda body: {"ok": True})
        self.net.serve(port, "lc.migrate", lambda body: {"ok": True, "duration": 0.0})
        return rec

    def status(self, lc_id: str) -> Status:
        return self.hosts.lcs[lc_id].description.status


async def test_an_idle_time_of_zero_powers_idle_hosts_down_at_the_first_check() -> None:
    g = Group()
    g.add_lc("lc-1", {"vm-1": (1.0, GIB)})
    g.add_lc("lc-2")
    g.add_lc("lc-3")
    await g.energy.tick()
    assert g.status("lc-1") == Status.ACTIVE, "a busy host is never idle"
    assert g.status("lc-2") == g.status("lc-3") == Status.PASSIVE
    assert g.energy.power_downs == 2 and set(g.energy.down_at) == {"lc-2", "lc-3"}


async def test_consolidation_waits_for_consolidation_settle_after_a_wake_up() -> None:
    g = Group(consolidation_settle=10.0)
    g.add_lc("lc-1", {"vm-1": (1.0, GIB)})
    g.add_lc("lc-2", {"vm-2": (1.0, GIB)})
    assert g.energy.settling() is None
    g.energy.woken_at, g.energy.woken_lc = time.monotonic() - 2.0, "lc-2"
    why = g.energy.settling()
    assert why is not None and "lc-2 woken 2.0s ago" in why
    report = await g.reconf.consolidate_once()
    assert report["applied"] == [] and report["powered_down"] == [] and report["plan"]["migrations"] == []
    assert any(n.startswith("consolidation waits: lc-2 woken") for n in report["plan"]["notes"]), report["plan"]
    # consolidation_settle later, the cluster has settled: one host is emptied and powered down at once.
    g.energy.woken_at = time.monotonic() - 10.5
    assert g.energy.settling() is None
    report = await g.reconf.consolidate_once()
    assert len(report["applied"]) == 1
    assert report["powered_down"] == [report["applied"][0]["source"]]
    assert g.status(report["applied"][0]["source"]) == Status.PASSIVE


async def test_consolidation_waits_while_a_host_is_waking() -> None:
    g = Group(consolidation_settle=10.0)
    g.add_lc("lc-1", {"vm-1": (1.0, GIB)})
    g.add_lc("lc-2", {"vm-2": (1.0, GIB)})
    g.add_lc("lc-3", status=Status.WAKING)
    assert g.energy.settling() == "lc-3 waking: the powered hosts were short of room"
    report = await g.reconf.consolidate_once()
    assert report["applied"] == [] and g.status("lc-1") == g.status("lc-2") == Status.ACTIVE


async def test_consolidation_never_waits_by_default_nor_without_energy_management() -> None:
    for options in ({}, {"energy_management": False, "consolidation_settle": 10.0}):
        g = Group(**options)
        g.add_lc("lc-1", {"vm-1": (1.0, GIB)})
        g.add_lc("lc-2", {"vm-2": (1.0, GIB)})
        g.add_lc("lc-3", status=Status.WAKING)
        g.energy.woken_at = time.monotonic()
        assert g.energy.settling() is None, options
        report = await g.reconf.consolidate_once()
        assert len(report["applied"]) == 1, options


class FakeBMC:
    """A host that takes ``off_after`` status queries to finish shutting down."""

    def __init__(self, off_after: int) -> None:
        self.queries = 0
        self.off_after = off_after
        self.log: list[str] = []

    async def wake(self) -> None:
        self.log.append("on" if self.queries > self.off_after else "on-ignored")

    async def power_status(self) -> str | None:
        self.queries += 1
        state = "off" if self.queries > self.off_after else "on"
        self.log.append(state)
        return state


async def test_a_host_still_shutting_down_is_powered_on_once_it_is_off() -> None:
    g = Group(wakeup_time=5.0)
    g.add_lc("lc-1")
    g.energy.down_at["lc-1"] = time.monotonic()
    assert g.energy._shutting_down("lc-1", time.monotonic())
    bmc = FakeBMC(off_after=3)
    await g.energy._until_off("lc-1", bmc, time.monotonic() + 5.0)
    await bmc.wake()
    assert bmc.log == ["on", "on", "on", "off", "on"], "power on only once the BMC says off"
    assert g.energy.waited_off == 1 and "lc-1" not in g.energy.down_at


async def test_a_host_already_off_is_powered_on_at_once() -> None:
    g = Group(wakeup_time=5.0)
    bmc = FakeBMC(off_after=0)
    await g.energy._until_off("lc-1", bmc, time.monotonic() + 5.0)
    assert bmc.log == ["off"] and g.energy.waited_off == 0


async def test_only_a_recent_shutdown_is_waited_for() -> None:
    now = time.monotonic()
    g = Group(wakeup_time=5.0)
    g.energy.down_at["lc-1"] = now - 10.0
    assert not g.energy._shutting_down("lc-1", now), "ordered down longer ago than wakeup_time"
    assert not g.energy._shutting_down("lc-2", now), "never ordered down by this manager"
    s = Group(wakeup_time=5.0, power_saving_action="SUSPEND_TO_RAM")
    s.energy.down_at["lc-1"] = now
    assert not s.energy._shutting_down("lc-1", now), "a suspended host's chassis may stay on"


async def test_waiting_for_off_gives_up_at_the_deadline() -> None:
    g = Group()
    bmc = FakeBMC(off_after=10**6)
    t0 = time.monotonic()
    await asyncio.wait_for(g.energy._until_off("lc-1", bmc, t0 + 0.3), 2.0)
    assert 0.25 <= time.monotonic() - t0 < 1.0
