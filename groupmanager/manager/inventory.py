"""A group manager's inventory check: when a local controller (re)joins it, what that host's
hypervisor reports is the truth, and the VM records are brought in line with it.

* A VM whose record places it on that host (RUNNING or PAUSED there) but which the host does
  not have (the host restarted, libvirt's test driver forgot its domains, a crash lost them)
  is **lost**: its record becomes ERROR with errorCode ``VIRTUAL_MACHINE_LOST`` and the reason,
  whatever capacity was held for it is released, and its address goes back to the pool. With
  ``[groupmanager] restart_lost_vms`` it is first started again from its stored spec (placed by
  this group manager, on any of its hosts); only if that fails is it marked lost.
* A domain on the host that no record accounts for (an **orphan**: started by hand, or left
  behind by a failed clean-up) is reported, never touched: logged when first seen, listed in
  this group manager's summary (``orphanVirtualMachines``, host -> names) and in the host's
  description, and flagged ``"orphan": true`` in its ``virtualMachineMetaData``. Destroying a
  domain nobody can account for is an operator's decision.

The check runs after every join (a restart, a re-assignment after a failover), on a fresh
listing asked of the host, not on the one it joined with. Joins that arrive together are
checked together, with one read of the records. Records are re-read just before anything is
written (and written version-checked: a record the leader or another group manager changed
meanwhile is read again, and marked lost only if it still places the VM on that host), and a VM
this group manager is migrating is left alone, so that a VM in flight is never taken for lost
or orphaned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any, Protocol

from groupmanager.manager.hosts import Hosts
from snooze.codes import IN_FLIGHT, STARTED, ErrorCode, VMStatus
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import ApiError
from snooze.ids import is_valid_id
from snooze.models import NetworkAddress
from snooze.records import VMRecord
from snooze.scope import Scope

log = logging.getLogger(__name__)

LOST = ErrorCode.VIRTUAL_MACHINE_LOST
TASK = "manager.inventory"
BATCH_DELAY = 0.2  # seconds: joins of the same moment (a failover) are checked together
RETRY_DELAY = 1.0  # seconds before a check that could not run (ZooKeeper, the host) is retried


class Starter(Protocol):
    """What the check needs of ``VirtualMachines``: a host's listing, and starting VMs again."""

    async def refresh(self, lc_id: str) -> list[dict[str, Any]]: ...

    async def start(self, vms: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


class Moving(Protocol):
    """What the check needs of ``Migrations``: the VMs being moved right now."""

    @property
    def moving(self) -> Collection[str]: ...


class Inventory:
    """Wiring: ``start()`` once its role's scope is open (the check's task); the scope ends it."""

    def __init__(self, scope: Scope, hosts: Hosts, vms: Starter, migrations: Moving) -> None:
        self.scope = scope
        self.hosts = hosts
        self.vms = vms
        self.migrations = migrations
        self.orphans: dict[str, list[str]] = {}  # lc id -> domains no record accounts for
        self.lost = 0  # VMs marked lost since this role started
        self.restarted = 0  # VMs started again from their spec since this role started
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    # -- wiring (ManagerRole) ------------------------------------------------------------
    def start(self) -> None:
        self.scope.spawn(TASK, self._loop())

    def joined(self, lc_id: str) -> None:
        """``lc_id`` (re)joined: check it against the records soon."""
        self._pending.add(lc_id)
        self._wake.set()

    def left(self, lc_id: str) -> None:
        self._pending.discard(lc_id)
        self.orphans.pop(lc_id, None)

    def seen(self, lc_id: str, names: set[str]) -> None:
        """A monitoring report: orphans that left the host are no longer reported."""
        if lc_id in self.orphans:
            still = [n for n in self.orphans[lc_id] if n in names]
            if still:
                self.orphans[lc_id] = still
            else:
                del self.orphans[lc_id]

    def report(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in sorted(self.orphans.items()) if v}

    # -- the check -----------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_DELAY)
            self._wake.clear()
            batch, self._pending = self._pending, set()
            try:
                retry = await self.check(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the group manager: log it, try again later
                log.exception("inventory check of %s failed", ", ".join(sorted(batch)))
                retry = batch
            retry = {lc_id for lc_id in retry if lc_id in self.hosts.lcs}
            if retry:
                await asyncio.sleep(RETRY_DELAY)
                self._pending |= retry
                self._wake.set()

    async def check(self, lc_ids: set[str]) -> set[str]:
        """Check each of ``lc_ids`` against the records; the ones to try again later."""
        coord, store = self.scope.coord, self.scope.store
        if coord is None or store is None or not coord.connected:
            return set(lc_ids)
        try:
            records = await store.get_vms(await store.vm_ids())
        except CoordinationError as exc:
            log.info("inventory check postponed: %s", exc)
            return set(lc_ids)
        retry: set[str] = set()
        for lc_id in sorted(lc_ids):
            if lc_id not in self.hosts.lcs:
                continue
            try:
                # The host's listing now (its join may be a while ago), and this group
                # manager's view of it refreshed on the way.
                domains = await self.vms.refresh(lc_id)
                await self._reconcile(store, lc_id, domains, records)
            except (ApiError, CoordinationError) as exc:
                log.info("inventory check of %s postponed: %s", lc_id, getattr(exc, "message", exc))
                retry.add(lc_id)
        return retry

    def _in_flight(self, vm_id: str) -> bool:
        return vm_id in self.migrations.moving or self.hosts.in_flight(vm_id)

    async def _reconcile(self, store: Store, lc_id: str, domains: list[dict[str, Any]],
                         records: dict[str, VMRecord]) -> None:
        present = {str(d["name"]) for d in domains}
        missing = [vm_id for vm_id, rec in records.items()
                   if rec.lc_id == lc_id and rec.status.started and vm_id not in present and not self._in_flight(vm_id)]
        if missing:
            # Read again: a VM may have been moved or destroyed since the records were read.
            fresh = await store.get_vms(missing)
            lost = [fresh[v] for v in missing
                    if v in fresh and fresh[v].lc_id == lc_id and fresh[v].status.started and not self._in_flight(v)]
            if lost:
                await self._settle_lost(store, lc_id, lost)
        candidates = [n for n in sorted(present) if not self._accounted(n, lc_id, records) and not self._in_flight(n)]
        if candidates:
            fresh = await store.get_vms(n for n in candidates if is_valid_id(n))
            candidates = [n for n in candidates if not self._accounted(n, lc_id, fresh)]
        self._set_orphans(lc_id, candidates)

    @staticmethod
    def _accounted(name: str, lc_id: str, records: dict[str, VMRecord]) -> bool:
        rec = records.get(name)
        if rec is None:
            return False
        return (rec.lc_id == lc_id and rec.status.started) or (rec.lc_id is None and rec.status in IN_FLIGHT)

    def _set_orphans(self, lc_id: str, names: list[str]) -> None:
        new = sorted(set(names) - set(self.orphans.get(lc_id, [])))
        if new:
            log.warning("%s runs %d domain(s) that no VM record accounts for (orphans, left as they are): %s",
                        lc_id, len(new), ", ".join(new[:20]) + (" ..." if len(new) > 20 else ""))
        if names:
            self.orphans[lc_id] = sorted(names)
        else:
            self.orphans.pop(lc_id, None)

    # -- lost VMs ------------------------------------------------------------------------
    async def _settle_lost(self, store: Store, lc_id: str, lost: list[VMRecord]) -> None:
        settings = self.scope.settings.groupmanager
        for rec in lost:
            host = self.hosts.lcs.get(lc_id)
            if host is not None:
                host.remove_vm(rec.vm_id)
            self.hosts.reservations.release_vm(rec.vm_id)
        why = {rec.vm_id: "" for rec in lost}
        if settings.restart_lost_vms:
            lost, why = await self._restart(store, lc_id, lost)
        if not lost:
            return
        now = time.time()
        for rec in lost:
            rec.lose(lc_id, f"{lc_id} re-joined without it: its hypervisor has no domain {rec.vm_id} (the host restarted "
                            f"or lost it); its capacity and address were released{why.get(rec.vm_id, '')}", now)
        await store.update_vms(lost, None, subnet=settings.virtual_machine_subnet)
        marked = [r.vm_id for r in lost if r.error_code is LOST and r.lost_on == lc_id]
        self.lost += len(marked)
        log.warning("%s re-joined without %d VM(s) its records place there; marked %s: %s",
                    lc_id, len(marked), LOST, ", ".join(marked[:20]) + (" ..." if len(marked) > 20 else ""))

    async def _restart(self, store: Store, lc_id: str, lost: list[VMRecord]) -> tuple[list[VMRecord], dict[str, str]]:
        """Start lost VMs again from their stored specs; (the ones still lost, why per VM)."""
        by_id = {r.vm_id: r for r in lost}
        specs = await store.get_specs(by_id)
        why = {v: "; it has no stored spec to restart from" for v in by_id if v not in specs}
        results = await self.vms.start([dict(specs[v]) for v in by_id if v in specs]) if specs else []
        restarted: list[VMRecord] = []
        now = time.time()
        for res in results:
            rec = by_id.get(str(res.get("id")))
            if rec is None:
                continue
            status = res.get("status")
            if status in STARTED:
                where = res.get("localControllerId")
                try:
                    address = NetworkAddress.from_json(res["localControllerAddress"])
                except (KeyError, TypeError, ValueError):
                    address = None
                adaptations = res.get("adaptations")
                rec.restart(lc_id, VMStatus(status), res.get("uuid"), str(where) if where else None, address,
                            self.scope.id, self.scope.address,
                            [str(a) for a in adaptations] if isinstance(adaptations, list) else [],
                            f"restarted from its stored spec on {where} after {lc_id} re-joined without it", now)
                restarted.append(rec)
            else:
                why[rec.vm_id] = f"; restarting it failed: {res.get('errorCode')}: {res.get('message')}"
        if restarted:
            await store.update_vms(restarted, None)
            self.restarted += len(restarted)
            log.warning("%s re-joined without %d VM(s); started again from their specs: %s", lc_id, len(restarted),
                        ", ".join(r.vm_id for r in restarted[:20]))
        done = {r.vm_id for r in restarted}
        return [r for r in lost if r.vm_id not in done], why
