"""A group manager's virtual machines: placing batches on its local controllers, and
lifecycle actions on them.

Placement is decided by ``groupmanager.placement`` on a snapshot of the local controllers
(requested capacity of the VMs each runs, plus what is reserved for VMs in flight); the plan
is then applied step by step, and each local controller re-checks its own capacity before it
starts a domain. A VM refused for capacity by its local controller is retried once elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from groupmanager.placement import HostView, PowerState, VMRequest, make_placement_policy
from groupmanager.thresholds import thresholds_from
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import ApiError
from snooze.models import ZERO, Capacity, NetworkAddress, Status, add
from snooze.protocol import Envelope
from snooze.rpc import RpcError

if TYPE_CHECKING:
    from groupmanager.manager.role import ManagerRole

log = logging.getLogger(__name__)


class VirtualMachines:
    def __init__(self, role: ManagerRole) -> None:
        self.role = role
        gm_settings = role.gm.settings.groupmanager
        self.thresholds = thresholds_from(gm_settings)
        self.policy = make_placement_policy(gm_settings.placement_policy, thresholds=self.thresholds)
        self.reserved: dict[str, dict[str, Capacity]] = defaultdict(dict)
        self._lock = asyncio.Lock()

    def register(self) -> None:
        internal = self.role.gm.internal
        internal.on("gm.startVirtualMachines", self._on_start, order=True)
        internal.on("gm.vmAction", self._on_action)
        internal.on("gm.vmInfo", self._on_info)

    def unregister(self) -> None:
        for kind in ("gm.startVirtualMachines", "gm.vmAction", "gm.vmInfo"):
            self.role.gm.internal.handlers.pop(kind, None)

    # -- capacity ------------------------------------------------------------------------
    def requested_on(self, lc_id: str) -> Capacity:
        rec = self.role.lcs.get(lc_id)
        total = ZERO
        if rec is not None:
            for d in rec.domains:
                if d.get("state") in ("RUNNING", "PAUSED"):
                    total = add(total, rec.vm_requested.get(d["name"], (float(d.get("vcpus", 0)), float(d.get("memory", 0)), 0.0, 0.0)))
        return total

    def reserved_on(self, lc_id: str) -> Capacity:
        total = ZERO
        for c in self.reserved.get(lc_id, {}).values():
            total = add(total, c)
        return total

    def host_views(self, exclude: set[str] | None = None) -> list[HostView]:
        views = []
        for lc_id, rec in self.role.lcs.items():
            if exclude and lc_id in exclude:
                continue
            status = rec.description.status
            power = {Status.ACTIVE: PowerState.ACTIVE, Status.PASSIVE: PowerState.PASSIVE,
                     Status.WAKING: PowerState.WAKING}.get(status, PowerState.ACTIVE)
            views.append(HostView(lc_id, rec.description.total_capacity, self.requested_on(lc_id),
                                  self.reserved_on(lc_id), power, status != Status.OFFLINE))
        return views

    # -- starting VMs --------------------------------------------------------------------
    async def _on_start(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        vms = [v for v in body.get("vms") or [] if isinstance(v, dict) and v.get("id")]
        results = await self.start(vms)
        return {"results": results, "summary": self.role.summary()}

    async def start(self, vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        pending = vms
        tried: dict[str, set[str]] = defaultdict(set)
        wake_failures: dict[str, str] = {}
        for _round in range(3):
            if not pending:
                break
            async with self._lock:
                # Decide and reserve atomically, so two batches never count the same free capacity.
                requests = [
                    VMRequest(v["id"], tuple(v["requested"]), pinned_host=v.get("hostId"),  # type: ignore[arg-type]
                              affinity_group=(v.get("extra") or {}).get("affinityGroup"),
                              anti_affinity_group=(v.get("extra") or {}).get("antiAffinityGroup"),
                              excluded_hosts=frozenset(tried[v["id"]]))
                    for v in pending
                ]
                plan = self.policy.place(requests, self.host_views())
                by_id = {v["id"]: v for v in pending}
                batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
                for p in plan.placements:
                    vm = by_id[p.vm_id]
                    self.reserved[p.host_id][p.vm_id] = tuple(vm["requested"])  # type: ignore[assignment]
                    batches[p.host_id].append(vm)
                for vm_id, rejection in plan.unplaced.items():
                    if vm_id in wake_failures:
                        results[vm_id] = {"id": vm_id, "status": "ERROR", "errorCode": "LOCAL_CONTROLLER_WAKEUP_FAILED",
                                          "message": wake_failures[vm_id]}
                        continue
                    results[vm_id] = {"id": vm_id, "status": "ERROR", "errorCode": "NOT_ENOUGH_CAPACITY",
                                      "message": rejection.reason, "rejections": dict(rejection.filtered)}
            pending = []
            if plan.wake_up:
                # Capacity is asleep: wake it (outside the lock; its reservations keep it ours).
                woken = await self.role.energy.wake(list(plan.wake_up))
                for lc_id, failure in woken.items():
                    if failure is None:
                        continue
                    for vm in batches.pop(lc_id, []):
                        self.reserved[lc_id].pop(vm["id"], None)
                        tried[vm["id"]].add(lc_id)
                        before = wake_failures.get(vm["id"])
                        wake_failures[vm["id"]] = (before + "; " if before else "") + f"waking {lc_id} failed: {failure}"
                        pending.append(vm)
            replies = await asyncio.gather(*(self._start_on(lc_id, batch) for lc_id, batch in batches.items()))
            for lc_id, batch, reply in zip(batches, batches.values(), replies, strict=True):
                for vm, res in zip(batch, reply, strict=True):
                    self.reserved[lc_id].pop(vm["id"], None)
                    if res.get("errorCode") == "NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY" and _round < 2:
                        tried[vm["id"]].add(lc_id)
                        pending.append(vm)
                        continue
                    results[vm["id"]] = res
        for vm in pending:
            code = "LOCAL_CONTROLLER_WAKEUP_FAILED" if vm["id"] in wake_failures else "NOT_ENOUGH_CAPACITY"
            results.setdefault(vm["id"], {"id": vm["id"], "status": "ERROR", "errorCode": code,
                                          "message": wake_failures.get(vm["id"], "no local controller could host it")})
        return [results[v["id"]] for v in vms if v["id"] in results]

    async def _start_on(self, lc_id: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rec = self.role.lcs.get(lc_id)
        if rec is None:
            return [{"id": v["id"], "status": "ERROR", "errorCode": "LOCAL_CONTROLLER_GONE", "message": lc_id} for v in batch]
        addr = rec.description.control_data_address
        try:
            reply = await self.role.gm.rpc.call(addr, "lc.startVirtualMachines", {"vms": batch},
                                                epoch=self.role.gm.known_epoch, timeout=30 + len(batch) * 0.2)
            results = list(reply["results"])
        except (RpcError, KeyError, TypeError) as exc:
            return [{"id": v["id"], "status": "ERROR", "errorCode": "LOCAL_CONTROLLER_UNREACHABLE", "message": str(exc)} for v in batch]
        for vm, res in zip(batch, results, strict=True):
            res["localControllerId"] = lc_id
            res["localControllerAddress"] = addr.to_json()
            if res.get("status") in ("RUNNING", "PAUSED"):
                rec.add_vm(vm["id"], tuple(vm["requested"]), res["status"])  # type: ignore[arg-type]
        return results

    # -- lifecycle -----------------------------------------------------------------------
    def _find(self, vm_id: str, lc_id: str | None) -> str:
        if lc_id and lc_id in self.role.lcs:
            return lc_id
        for other, rec in self.role.lcs.items():
            if any(d.get("name") == vm_id for d in rec.domains):
                return other
        raise ApiError(404, "VIRTUAL_MACHINE_NOT_FOUND", f"no local controller of this group manager runs {vm_id}")

    async def _on_action(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        vm_id = str(body.get("vmId"))
        action = str(body.get("action"))
        lc_id = self._find(vm_id, body.get("localControllerId"))
        rec = self.role.lcs[lc_id]
        try:
            reply = await self.role.gm.rpc.call(rec.description.control_data_address, "lc.vmAction",
                                                {"vmId": vm_id, "action": action}, epoch=self.role.gm.known_epoch, timeout=30)
        except RpcError as exc:
            raise ApiError(503, "LOCAL_CONTROLLER_UNREACHABLE", str(exc)) from exc
        if action == "destroy" and reply.get("errorCode") == "VIRTUAL_MACHINE_NOT_FOUND":
            # Already gone (destroyed behind our back, or never started): forgetting it is the destroy.
            reply = {"ok": True, "domain": None}
        if reply.get("ok") and action == "destroy":
            rec.remove_vm(vm_id)
            await self.forget(vm_id)
        elif reply.get("ok") and reply.get("domain"):
            rec.domains = [d for d in rec.domains if d.get("name") != vm_id] + [reply["domain"]]
        return reply

    async def forget(self, vm_id: str) -> None:
        coord = self.role.gm.coord
        if coord is None:
            return
        try:
            await Store(coord).delete_vm(vm_id, self.role.gm.settings.groupmanager.virtual_machine_subnet)
        except CoordinationError as exc:
            log.warning("could not forget %s in ZooKeeper: %s", vm_id, exc)

    async def _on_info(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        vm_id = str(body.get("vmId"))
        lc_id = self._find(vm_id, body.get("localControllerId"))
        rec = self.role.lcs[lc_id]
        domain = next((d for d in rec.domains if d.get("name") == vm_id), None)
        return {
            "localControllerId": lc_id,
            "localControllerAddress": rec.description.control_data_address.to_json(),
            "domain": domain,
            "usedCapacity": rec.vm_usage.get(vm_id),
            "history": [h for h in rec.history][-5:],
        }


class Migrations:
    """Moving a VM between local controllers, possibly of another group manager.

    The destination's capacity is reserved before anything moves (here, or by the destination's
    group manager); the source local controller then migrates; on any failure the reservation
    is released and the VM keeps running at the source. On success the VM's record moves.
    """

    def __init__(self, vms: VirtualMachines) -> None:
        self.vms = vms
        self.role = vms.role

    def register(self) -> None:
        internal = self.role.gm.internal
        internal.on("gm.migrate", self._on_migrate, order=True)
        internal.on("gm.reservation", self._on_reservation, order=True)

    def unregister(self) -> None:
        for kind in ("gm.migrate", "gm.reservation"):
            self.role.gm.internal.handlers.pop(kind, None)

    def fits(self, lc_id: str, requested: Capacity) -> str | None:
        """None if ``requested`` fits on ``lc_id`` now; else why not."""
        rec = self.role.lcs.get(lc_id)
        if rec is None:
            return f"{lc_id} is not managed here"
        if rec.description.status != Status.ACTIVE:
            return f"{lc_id} is {rec.description.status.value}"
        taken = add(self.vms.requested_on(lc_id), self.vms.reserved_on(lc_id))
        mid = self.vms.thresholds.mid
        for i, name in enumerate(("cpu", "memory", "rx", "tx")):
            total = rec.description.total_capacity[i]
            if total > 0 and taken[i] + requested[i] > total * mid[i] + 1e-9:
                return f"{name}: {requested[i]:g} needed, {max(0.0, total * mid[i] - taken[i]):g} free on {lc_id}"
        return None

    async def _on_reservation(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        lc_id, vm_id, op = str(body.get("lcId")), str(body.get("vmId")), body.get("op")
        requested: Capacity = tuple(float(x) for x in body.get("requested", (0, 0, 0, 0)))  # type: ignore[assignment]
        if op == "reserve":
            async with self.vms._lock:
                why = self.fits(lc_id, requested)
                if why is not None:
                    raise ApiError(409, "NOT_ENOUGH_CAPACITY", why, field="localControllerId")
                self.vms.reserved[lc_id][vm_id] = requested
        elif op == "commit":
            self.vms.reserved[lc_id].pop(vm_id, None)
            self._adopt(lc_id, vm_id, requested)
        else:
            self.vms.reserved[lc_id].pop(vm_id, None)
        return {"ok": True}

    def _adopt(self, lc_id: str, vm_id: str, requested: Capacity) -> None:
        rec = self.role.lcs.get(lc_id)
        if rec is not None:
            rec.add_vm(vm_id, requested)

    def _drop(self, lc_id: str, vm_id: str) -> Capacity | None:
        rec = self.role.lcs.get(lc_id)
        return rec.remove_vm(vm_id) if rec is not None else None

    async def _on_migrate(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        return await self.migrate(str(body.get("vmId")), str(body.get("sourceLcId")), dict(body.get("destination") or {}),
                                  body.get("requested"))

    async def migrate(self, vm_id: str, source_lc: str, dest: dict[str, Any], requested_hint: Any = None) -> dict[str, Any]:
        source_lc = self.vms._find(vm_id, source_lc)
        rec = self.role.lcs[source_lc]
        dest_id = str(dest.get("id"))
        if dest_id == source_lc:
            raise ApiError(400, "SAME_LOCAL_CONTROLLER", f"{vm_id} already runs on {dest_id}", field="localControllerId")
        requested: Capacity = rec.vm_requested.get(vm_id) or tuple(  # type: ignore[assignment]
            float(x) for x in (requested_hint or (0, 0, 0, 0)))
        if not any(requested):
            domain = next((d for d in rec.domains if d.get("name") == vm_id), {})
            requested = (float(domain.get("vcpus", 0)), float(domain.get("memory", 0)), 0.0, 0.0)
        gm = self.role.gm
        local = dest_id in self.role.lcs
        dest_gm = NetworkAddress.from_json(dest["groupManagerAddress"]) if not local and dest.get("groupManagerAddress") else None
        if not local and dest_gm is None:
            raise ApiError(409, "LOCAL_CONTROLLER_UNAVAILABLE", f"{dest_id} has no group manager right now", field="localControllerId")
        reservation = {"lcId": dest_id, "vmId": vm_id, "requested": list(requested)}
        if local:
            async with self.vms._lock:
                why = self.fits(dest_id, requested)
                if why is not None:
                    raise ApiError(409, "NOT_ENOUGH_CAPACITY", why, field="localControllerId")
                self.vms.reserved[dest_id][vm_id] = requested
        else:
            assert dest_gm is not None
            try:
                await gm.rpc.call(dest_gm, "gm.reservation", {"op": "reserve", **reservation}, epoch=gm.known_epoch, timeout=10)
            except RpcError as exc:
                raise ApiError(409 if exc.status == 409 else 503, exc.code, exc.message, field="localControllerId") from exc
        migration_timeout = float(((dest.get("hypervisorSettings") or {}).get("migration") or {}).get("timeout", 60.0))
        try:
            reply = await gm.rpc.call(
                rec.description.control_data_address, "lc.migrate",
                {"vmId": vm_id, "destination": {"id": dest_id, "address": dest["address"],
                                                 "hypervisorSettings": dest.get("hypervisorSettings") or {}}},
                epoch=gm.known_epoch, timeout=migration_timeout * 3 + 30,
            )
        except RpcError as exc:
            reply = {"ok": False, "errorCode": "LOCAL_CONTROLLER_UNREACHABLE", "message": str(exc)}
        if not reply.get("ok"):
            await self._release(local, dest_gm, reservation)
            raise ApiError(409, str(reply.get("errorCode") or "MIGRATION_FAILED"),
                           f"{vm_id} stays on {source_lc}: {reply.get('message')}")
        self._drop(source_lc, vm_id)
        if local:
            self.vms.reserved[dest_id].pop(vm_id, None)
            self._adopt(dest_id, vm_id, requested)
        else:
            assert dest_gm is not None
            with contextlib.suppress(RpcError):
                await gm.rpc.call(dest_gm, "gm.reservation", {"op": "commit", **reservation}, epoch=gm.known_epoch, timeout=10)
        details = {k: v for k, v in reply.items() if k != "ok"}
        await self._move_record(vm_id, dest, local, {"from": source_lc, "to": dest_id, **details})
        return {"ok": True, **details}

    async def _release(self, local: bool, dest_gm: NetworkAddress | None, reservation: dict[str, Any]) -> None:
        if local:
            self.vms.reserved[reservation["lcId"]].pop(reservation["vmId"], None)
        elif dest_gm is not None:
            with contextlib.suppress(RpcError):
                await self.role.gm.rpc.call(dest_gm, "gm.reservation", {"op": "release", **reservation},
                                            epoch=self.role.gm.known_epoch, timeout=10)

    async def _move_record(self, vm_id: str, dest: dict[str, Any], local: bool, details: dict[str, Any]) -> None:
        coord = self.role.gm.coord
        if coord is None:
            return
        store = Store(coord)
        try:
            rec = await store.get_vm(vm_id)
            if rec is None:
                return
            rec.update(localControllerId=dest["id"], localControllerControlDataAddress=dest["address"], lastMigration=details)
            if local:
                rec.update(groupManagerId=self.role.gm.id, groupManagerControlDataAddress=self.role.gm.address.to_json())
            else:
                rec.update(groupManagerId=dest.get("groupManagerId"), groupManagerControlDataAddress=dest.get("groupManagerAddress"))
            await store.update_vms([rec], None)
        except CoordinationError as exc:
            log.warning("could not record the move of %s: %s", vm_id, exc)
