"""A local controller's VRS agent (Nuage's SDK as a backend of Snooze): libvirt's lifecycle
events of the domains Snooze plugged (their VIF in the domain's metadata) become rows and events
in the host's ``Nuage_Port_Table`` and ``Nuage_VM_Table``:

==========================  ===================================================================
Started/Booted (Restored…)  the port, then the entity, with the event and the state Running
Started/Migrated            the same at the destination of a migration (the address unchanged)
Stopped/*                   the event, then its rows removed: migrated (the VM left; the
                            destination adds its own), destroyed, shut down, crashed or failed
                            (off the network, whoever stopped it)
Suspended, Resumed,         the event and the state the entity is in after it
Shutdown, Crashed
Undefined                   the entity and its ports removed (a destroy here also undefines)
==========================  ===================================================================

Events are handled one at a time, in order, off libvirt's thread. An event pair that does not
exist is dropped before anything is written. An **audit** (every ``[localcontroller]
vrs_audit_interval`` seconds, through the same queue, and after an OVSDB error) makes the tables
equal to the domains running here: rows lost with an ``ovsdb-server`` restart come back, rows of
a domain that went behind Snooze's back go.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from localcontroller.hypervisor import HypervisorError
from localcontroller.hypervisor.adapt import vif_of
from localcontroller.hypervisor.libvirt import LibvirtHypervisor
from localcontroller.vif.ovsdb import Ovsdb, OvsdbError
from localcontroller.vrs.backend import Entity, VrsBackend, port_row
from localcontroller.vrs.events import Event as VrsEvent
from localcontroller.vrs.events import EventCategory, InvalidEvent, StartedDetail
from snooze.codes import CodedError
from snooze.vif.objects import InstanceInfo, VIFBase
from snooze.vif.versioned import from_wire

__all__ = ["VrsAgent"]

log = logging.getLogger(__name__)
_AUDIT = ("", "", -1, -1)  # the queue's marker for an audit


class VrsAgent:
    def __init__(self, hypervisor: LibvirtHypervisor, ovsdb: str, audit_interval: float) -> None:
        self.hypervisor = hypervisor
        self.db = Ovsdb(ovsdb)
        self.backend = VrsBackend(self.db)
        self.audit_interval = audit_interval
        self._queue: asyncio.Queue[tuple[str, str, int, int]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Domain name -> (UUID, VIF) of the domains plugged here, seen since start.
        self._known: dict[str, tuple[str, VIFBase]] = {}
        self.audits = 0
        self.last_audit: tuple[list[str], list[str]] = ([], [])

    async def start(self, spawn: Callable[[str, Coroutine[Any, Any, None]], Any],
                    every: Callable[[str, Callable[[], float], Callable[[], Awaitable[None]]], None]) -> None:
        self._loop = asyncio.get_running_loop()
        await self.hypervisor.watch_lifecycle(self._from_libvirt)
        spawn("vrs-events", self._consume())
        every("vrs-audit", lambda: self.audit_interval, self.request_audit)
        await self.request_audit()

    def _from_libvirt(self, name: str, uuid: str, event: int, detail: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, (name, uuid, event, detail))

    async def request_audit(self) -> None:
        self._queue.put_nowait(_AUDIT)

    async def close(self) -> None:
        await asyncio.to_thread(self.db.close)

    async def _consume(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if item == _AUDIT:
                    await self._audit()
                else:
                    await self._handle(*item)
            except (OvsdbError, HypervisorError, CodedError, ValueError) as exc:
                log.warning("VRS: %s: %s; an audit follows", "audit" if item == _AUDIT else f"{item[0]} event", exc)
                if item != _AUDIT:
                    self._queue.put_nowait(_AUDIT)
            except Exception:  # a bug here must not stop the host: logged, the next audit repairs
                log.exception("VRS: handling %s failed", item)

    async def _vif_of(self, name: str) -> VIFBase | None:
        try:
            raw = vif_of(await self.hypervisor.xml(name))
        except HypervisorError:
            return None
        return from_wire(json.loads(raw), VIFBase, field="vif") if raw else None

    async def _handle(self, name: str, uuid: str, category: int, detail: int) -> None:
        try:
            event = VrsEvent.of(category, detail)
        except InvalidEvent as exc:
            log.warning("VRS: %s: dropped an event that does not exist: %s", name, exc)
            return
        uuid = uuid.lower()
        if event.category in (EventCategory.STARTED, EventCategory.RESUMED, EventCategory.SUSPENDED) \
                and name not in self._known:
            vif = await self._vif_of(name)
            if vif is not None:
                self._known[name] = (uuid, vif)
        known = self._known.get(name)
        if known is None or event.category is EventCategory.DEFINED:
            return  # not a domain Snooze plugged (or nothing to say before it starts)
        vif = known[1]
        entity = Entity(InstanceInfo(uuid=known[0], name=name), vif, event)
        if event.category is EventCategory.UNDEFINED:
            self._known.pop(name, None)
            await asyncio.to_thread(self.backend.removed, known[0], [port_row(vif)["name"]])
            log.info("VRS: %s (%s) removed", name, known[0])
            return
        await asyncio.to_thread(self.backend.post_event, entity)
        log.info("VRS: %s %s", name, event)
        if event.category is EventCategory.STOPPED:
            # Migrated: it runs elsewhere now (the destination adds its own rows); destroyed,
            # shut down, crashed or failed (by Snooze or behind its back): off the network.
            # The event was posted first, for whoever watches the table.
            self._known.pop(name, None)
            await asyncio.to_thread(self.backend.removed, known[0], [port_row(vif)["name"]])
            log.info("VRS: %s (%s) removed after %s", name, known[0], event)

    async def _audit(self) -> None:
        running: list[Entity] = []
        for domain in await self.hypervisor.domains():
            if not domain.state.started:
                continue
            known = self._known.get(domain.name)
            vif = known[1] if known else await self._vif_of(domain.name)
            if vif is None:
                continue
            self._known[domain.name] = (domain.uuid.lower(), vif)
            running.append(Entity(InstanceInfo(uuid=domain.uuid.lower(), name=domain.name), vif,
                                  VrsEvent(EventCategory.STARTED, StartedDetail.BOOTED)))
        added, removed = await asyncio.to_thread(self.backend.audit, running)
        self.audits += 1
        self.last_audit = (added, removed)
        if added or removed:
            log.info("VRS audit: rows added or repaired for %s; removed for %s", added or "none", removed or "none")
