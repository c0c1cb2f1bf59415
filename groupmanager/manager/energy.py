"""The energy saver of a group manager: idle local controllers are powered down, and woken
when placement needs their capacity.

A local controller that has hosted no VM (and has nothing reserved) for ``idle_time`` is put in
the configured power-saving state through its local controller, as long as ``reserved_nodes``
stay on; it stays in the hierarchy as PASSIVE, wakeable capacity. Deciding to power a host down
takes the same lock as placement, and a host with a reservation is never idle, so a host chosen
by a plan is never powered down under it.

Waking goes through the host's wake-up driver (IPMI, Wake-on-LAN, a command), then waits, up to
``wakeup_time``, for the local controller to join again. The leader is told (a ``wakeups/<lc>``
znode) to send it back to this group manager.

A sleeping host is known to the cluster, not only to this process: powering it down records it
in ZooKeeper (``sleeping/<lc>``: its description, with its wake-up settings and capacity, and
this group manager's id), and its re-joining any group manager removes the entry. When this
group manager is gone, the leader hands its sleeping hosts to another (``gm.adoptSleeping``),
which adopts them as PASSIVE, wakeable capacity. A periodic check (``sync``) settles what a lost
message or a failed write left behind: entries naming this group manager that it does not hold
are adopted, hosts it holds that were handed to another are forgotten, and an entry that could
not be written at power-down is written again. See docs/energy-handover.md.

Against flapping (a host emptied and powered down, then woken again by the next submissions,
often before it has even finished shutting down): a host woken while it is still shutting down
(SHUTDOWN ordered less than ``wakeup_time`` ago) is first waited for until its BMC reports it
off, then powered on: a "power on" to a host still on does nothing, and the host would then end
up off until the next check, seconds later. With ``consolidation_settle``, a wake-up (the
powered hosts were short of room) also holds consolidation back for that long, as an
autoscaler's scale-down stabilisation window (``settling``): fewer migrations, for a few more
host-hours (docs/power.md, "Flapping").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from groupmanager.manager.hosts import Hosts, LocalControllerRecord
from groupmanager.power import WakeupDriver, WakeupError, make_wakeup_driver
from snooze.config import POWER_OFF
from snooze.coordination import CoordinationError
from snooze.events import EventKind
from snooze.models import LocalControllerDescription, Status
from snooze.protocol import Envelope
from snooze.protocol.messages import AdoptSleepingHosts, EnergySaverSwitch, PowerSave
from snooze.rpc import RpcError
from snooze.scope import Scope

log = logging.getLogger(__name__)

#: Seconds between power status queries while a host still shuts down (then up to the max).
OFF_POLL, OFF_POLL_MAX = 0.1, 0.5


class EnergySaver:
    """Wiring: ``start()`` once its role's scope is open (the ``gm.energySaver`` message and the
    idle check); the scope closes both."""

    def __init__(self, scope: Scope, hosts: Hosts) -> None:
        self.scope = scope
        self.hosts = hosts
        self.settings = scope.settings.groupmanager
        self.enabled = self.settings.energy_management
        self.idle_since: dict[str, float] = {}
        self.rejoined: dict[str, asyncio.Event] = {}
        self.wakeups = 0
        self.power_downs = 0
        self.adopted = 0  # sleeping hosts taken over from a group manager that is gone
        #: When a host last re-joined after a wake-up (monotonic), and which.
        self.woken_at: float | None = None
        self.woken_lc: str | None = None
        #: Re-wakes that waited for a host still shutting down to be off first.
        self.waited_off = 0
        # lc id -> when SHUTDOWN was last ordered (a wake-up within wakeup_time waits for off).
        self.down_at: dict[str, float] = {}
        #: Set by the manager role: called after hosts were adopted (send a summary now), and
        #: with a host handed to another group manager (forget it).
        self.on_adopted: Callable[[], Awaitable[None]] | None = None
        self.on_handed_away: Callable[[str], None] | None = None

    @property
    def lcs(self) -> dict[str, LocalControllerRecord]:
        return self.hosts.lcs

    def start(self) -> None:
        self.scope.on_message(EnergySaverSwitch, self._on_switch)
        interval = self.scope.settings.heartbeat.interval
        self.scope.every("manager.energy", lambda: interval, self.tick)
        # Sleeping hosts are adopted and recorded whether or not the saver is suspended.
        self.scope.on_message(AdoptSleepingHosts, self._on_adopt, order=True)
        timeout = self.scope.settings.heartbeat.timeout
        self.scope.every("manager.sleeping", lambda: max(1.0, timeout), self.sync)

    async def _on_switch(self, msg: EnergySaverSwitch, _env: Envelope) -> Any:
        if msg.enabled is not None:
            self.enabled = msg.enabled
            self.idle_since.clear()
            log.info("energy saver %s", "resumed" if self.enabled else "suspended")
        return {"enabled": self.enabled, "wakeups": self.wakeups, "powerDowns": self.power_downs}

    def _busy(self, lc_id: str) -> bool:
        return self.hosts.busy(lc_id)

    async def tick(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        chosen: list[str] = []
        async with self.hosts.reservations.lock:
            active = sorted(k for k, r in self.lcs.items() if r.description.status == Status.ACTIVE)
            for lc_id in active:
                if self._busy(lc_id):
                    self.idle_since.pop(lc_id, None)
                else:
                    self.idle_since.setdefault(lc_id, now)
            idle = [k for k in active if k in self.idle_since and now - self.idle_since[k] >= self.settings.idle_time]
            room = len(active) - self.settings.reserved_nodes
            # Keep the busiest hosts on; among idle ones, sleep the ones idle longest.
            idle.sort(key=lambda k: self.idle_since[k])
            chosen = idle[: max(0, room)]
            self._mark_passive(chosen)
        await self._power_down_all(chosen)

    async def release(self, lc_ids: list[str]) -> list[str]:
        """Power down hosts a consolidation or relocation has just emptied, without waiting for
        idle_time: emptying them was the point. Same lock and rules as the idle check."""
        if not self.enabled or not lc_ids:
            return []
        chosen: list[str] = []
        async with self.hosts.reservations.lock:
            active = [k for k, r in self.lcs.items() if r.description.status == Status.ACTIVE]
            room = len(active) - self.settings.reserved_nodes
            for lc_id in lc_ids:
                if room <= 0:
                    break
                if lc_id in active and not self._busy(lc_id):
                    chosen.append(lc_id)
                    room -= 1
            self._mark_passive(chosen)
        await self._power_down_all(chosen)
        return chosen

    def settling(self, now: float | None = None) -> str | None:
        """Why hosts must not be emptied now (a host is waking, or re-joined within
        consolidation_settle after a wake-up), or None. Consolidation waits while this is not None."""
        window = float(getattr(self.settings, "consolidation_settle", 0.0) or 0.0)
        if not self.enabled or window <= 0:
            return None
        waking = sorted(k for k, r in self.lcs.items() if r.description.status == Status.WAKING)
        if waking:
            return f"{', '.join(waking)} waking: the powered hosts were short of room"
        if self.woken_at is None:
            return None
        ago = (time.monotonic() if now is None else now) - self.woken_at
        if ago < window:
            return f"{self.woken_lc} woken {ago:.1f}s ago, within consolidation_settle ({window:g}s)"
        return None

    def _mark_passive(self, lc_ids: list[str]) -> None:
        # Called under the placement lock: from here on no plan can choose these hosts.
        for lc_id in lc_ids:
            self.lcs[lc_id].description.status = Status.PASSIVE
            self.idle_since.pop(lc_id, None)

    async def _power_down_all(self, lc_ids: list[str]) -> None:
        for lc_id in lc_ids:
            await self._power_down(lc_id)

    async def _power_down(self, lc_id: str) -> None:
        rec = self.lcs.get(lc_id)
        if rec is None:
            return
        try:
            reply = await self.scope.rpc.call(
                rec.description.control_data_address, PowerSave.KIND, PowerSave(self.settings.power_saving_action).to_wire(),
                epoch=self.scope.epoch, timeout=10,
            )
        except RpcError as exc:
            reply = {"ok": False, "message": str(exc)}
        if not reply.get("ok"):
            log.warning("could not power %s down: %s", lc_id, reply.get("message"))
            rec.description.status = Status.ACTIVE
            return
        self.power_downs += 1
        self.down_at[lc_id] = time.monotonic()
        log.info("powered %s down (%s); it stays as wakeable capacity", lc_id, self.settings.power_saving_action)
        self.scope.emit(EventKind.HOST_POWERED_DOWN, localControllerId=lc_id, groupManagerId=self.scope.id,
                        action=self.settings.power_saving_action)
        await self._record_sleeping(lc_id)

    # -- sleeping hosts in ZooKeeper -----------------------------------------------------
    async def _record_sleeping(self, lc_id: str) -> bool:
        rec, store = self.lcs.get(lc_id), self.scope.store
        if rec is None or store is None or rec.description.status != Status.PASSIVE:
            return False
        try:
            await store.put_sleeping(lc_id, rec.description.to_json(), self.scope.id)
        except CoordinationError as exc:
            log.info("could not record %s as sleeping yet (%s); the next check will", lc_id, exc)
            return False
        return True

    async def _on_adopt(self, msg: AdoptSleepingHosts, _env: Envelope) -> Any:
        adopted = self.adopt([h for h in msg.hosts if isinstance(h, dict)])
        if adopted and self.on_adopted is not None:
            await self.on_adopted()
        return {"adopted": adopted}

    def adopt(self, entries: list[dict[str, Any]]) -> list[str]:
        """Take sleeping hosts over as PASSIVE; the ids adopted (a host already held is kept)."""
        adopted: list[str] = []
        for entry in entries:
            try:
                desc = LocalControllerDescription.from_json(entry["localController"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("unreadable sleeping host entry (%s); skipped", exc)
                continue
            if desc.id in self.lcs:
                continue
            desc.status = Status.PASSIVE
            desc.group_manager_id = self.scope.id
            desc.assigned_virtual_machines = []
            self.lcs[desc.id] = LocalControllerRecord(desc)
            adopted.append(desc.id)
        if adopted:
            self.adopted += len(adopted)
            log.warning("adopted sleeping host(s) %s from a group manager that is gone; they are wakeable capacity here",
                        ", ".join(adopted))
        return adopted

    async def sync(self) -> None:
        """Bring this manager's sleeping hosts and ZooKeeper's ``sleeping/`` in line."""
        store, coord = self.scope.store, self.scope.coord
        if store is None or coord is None or not coord.connected:
            return
        try:
            entries = await store.sleeping()
        except CoordinationError:
            return
        mine = [e for lc_id, (e, _v) in sorted(entries.items()) if e.get("groupManagerId") == self.scope.id
                and lc_id not in self.lcs]
        if self.adopt(mine) and self.on_adopted is not None:
            await self.on_adopted()
        for lc_id, rec in list(self.lcs.items()):
            if rec.description.status != Status.PASSIVE:
                continue
            entry = entries.get(lc_id)
            owner = entry[0].get("groupManagerId") if entry is not None else None
            if owner is not None and owner != self.scope.id:
                self._hand_away(lc_id, f"the group leader handed it to {owner}")
            elif entry is None:
                try:
                    registered = await coord.get_json(coord.path("localcontrollers", lc_id))
                except CoordinationError:
                    continue
                if isinstance(registered, dict):
                    # Awake: powered down by our order, it re-joined elsewhere since (woken by another).
                    if registered.get("groupManagerId") not in (None, self.scope.id):
                        self._hand_away(lc_id, f"it is awake under {registered.get('groupManagerId')}")
                else:
                    await self._record_sleeping(lc_id)

    def _hand_away(self, lc_id: str, why: str) -> None:
        log.info("forgetting sleeping host %s: %s", lc_id, why)
        if self.on_handed_away is not None:
            self.on_handed_away(lc_id)
        else:
            self.lcs.pop(lc_id, None)

    # -- waking --------------------------------------------------------------------------
    def on_joined(self, lc_id: str) -> None:
        event = self.rejoined.get(lc_id)
        if event is not None:
            event.set()

    async def wake(self, lc_ids: list[str]) -> dict[str, str | None]:
        """Wake hosts in parallel; lc id -> None when it re-joined, else why it did not."""
        results = await asyncio.gather(*(self._wake_one(lc_id) for lc_id in lc_ids))
        return dict(zip(lc_ids, results, strict=True))

    async def _wake_one(self, lc_id: str) -> str | None:
        rec = self.lcs.get(lc_id)
        if rec is None:
            return "unknown local controller"
        if rec.description.status == Status.ACTIVE:
            return None
        rec.description.status = Status.WAKING
        event = self.rejoined.setdefault(lc_id, asyncio.Event())
        event.clear()
        await self._mark_wakeup(lc_id)
        t0 = time.monotonic()
        try:
            driver = make_wakeup_driver(rec.description.wakeup_settings)
            deadline = t0 + self.settings.wakeup_time
            if self._shutting_down(lc_id, t0):
                await self._until_off(lc_id, driver, deadline)
            await driver.wake()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, 3.0))
                    break
                except TimeoutError:
                    # A host still shutting down when told to power on ends up off: ask again.
                    if await driver.power_status() == "off":
                        await driver.wake()
        except (WakeupError, TimeoutError) as exc:
            reason = str(exc) or f"did not re-join within {self.settings.wakeup_time:g}s"
            log.warning("waking %s failed: %s", lc_id, reason)
            current = self.lcs.get(lc_id)
            if current is not None and current.description.status == Status.WAKING:
                current.description.status = Status.PASSIVE
            return reason
        finally:
            self.rejoined.pop(lc_id, None)
        self.wakeups += 1
        self.woken_at, self.woken_lc = time.monotonic(), lc_id
        log.info("woke %s in %.2fs", lc_id, time.monotonic() - t0)
        self.scope.emit(EventKind.HOST_WOKEN, localControllerId=lc_id, groupManagerId=self.scope.id,
                        seconds=round(time.monotonic() - t0, 3))
        return None

    def _shutting_down(self, lc_id: str, now: float) -> bool:
        """Whether ``lc_id`` may still be shutting down: SHUTDOWN ordered within wakeup_time."""
        at = self.down_at.get(lc_id)
        return (self.settings.power_saving_action == POWER_OFF and at is not None
                and now - at < self.settings.wakeup_time)

    async def _until_off(self, lc_id: str, driver: WakeupDriver, deadline: float) -> None:
        """Wait until the BMC reports ``lc_id`` off (or cannot tell, or the deadline passes):
        powering on a host that is still shutting down does nothing, and it then ends up off."""
        pause = OFF_POLL
        waited = False
        while time.monotonic() < deadline:
            if await driver.power_status() != "on":
                break
            waited = True
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(OFF_POLL_MAX, pause * 1.5)
        if waited:
            self.waited_off += 1
            log.info("waited for %s to finish shutting down before powering it on", lc_id)
        self.down_at.pop(lc_id, None)

    async def _mark_wakeup(self, lc_id: str) -> None:
        """Tell the leader where this host belongs when it asks for a group manager."""
        store = self.scope.store
        if store is not None:
            with contextlib.suppress(CoordinationError):
                await store.mark_wakeup(lc_id, self.scope.id)

    async def clear_wakeup(self, lc_id: str) -> None:
        """``lc_id`` joined: it is awake, neither woken any more nor sleeping."""
        store = self.scope.store
        if store is not None:
            with contextlib.suppress(CoordinationError):
                await store.clear_wakeup(lc_id)
            with contextlib.suppress(CoordinationError):
                await store.clear_sleeping(lc_id)

