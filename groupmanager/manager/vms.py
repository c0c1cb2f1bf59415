"""A group manager's virtual machines: placing batches on its local controllers, and
lifecycle actions on them.

Placement is decided by ``groupmanager.placement`` on a snapshot of the local controllers
(requested capacity of the VMs each runs, plus what is reserved for VMs in flight); the plan
is then applied step by step, and each local controller re-checks its own capacity before it
starts a domain. A VM refused for capacity by its local controller is retried once elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from groupmanager.placement import HostView, PowerState, VMRequest, make_placement_policy
from groupmanager.thresholds import thresholds_from
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import ApiError
from snooze.models import ZERO, Capacity, Status, add
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
        for _round in range(2):
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
                    results[vm_id] = {"id": vm_id, "status": "ERROR", "errorCode": "NOT_ENOUGH_CAPACITY",
                                      "message": rejection.reason, "rejections": dict(rejection.filtered)}
            replies = await asyncio.gather(*(self._start_on(lc_id, batch) for lc_id, batch in batches.items()))
            pending = []
            for lc_id, batch, reply in zip(batches, batches.values(), replies, strict=True):
                for vm, res in zip(batch, reply, strict=True):
                    self.reserved[lc_id].pop(vm["id"], None)
                    if res.get("errorCode") == "NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY" and _round == 0:
                        tried[vm["id"]].add(lc_id)
                        pending.append(vm)
                        continue
                    results[vm["id"]] = res
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
                rec.vm_requested[vm["id"]] = tuple(vm["requested"])  # type: ignore[assignment]
                rec.domains = [d for d in rec.domains if d.get("name") != vm["id"]] + [
                    {"name": vm["id"], "state": res["status"], "vcpus": vm["requested"][0], "memory": vm["requested"][1]}
                ]
                if vm["id"] not in rec.description.assigned_virtual_machines:
                    rec.description.assigned_virtual_machines.append(vm["id"])
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
            rec.domains = [d for d in rec.domains if d.get("name") != vm_id]
            rec.vm_requested.pop(vm_id, None)
            if vm_id in rec.description.assigned_virtual_machines:
                rec.description.assigned_virtual_machines.remove(vm_id)
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
