"""The manager role of a group manager.

It joins the current group leader (found through ZooKeeper and the leader's heartbeats),
accepts local controllers the leader sends it, heartbeats them, keeps their monitoring data
(bounded), drops the ones that go silent, and sends the leader periodic summaries. Starting and
stopping are clean: a group manager promoted to leader stops this role and tells its local
controllers to re-join elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from groupmanager.manager.energy import EnergySaver
from groupmanager.manager.inventory import Inventory
from groupmanager.manager.reconfiguration import Reconfiguration
from groupmanager.manager.vms import Migrations, VirtualMachines
from snooze.heartbeat import FailureDetector
from snooze.http import ApiError
from snooze.models import (
    ZERO,
    Capacity,
    GroupManagerDescription,
    LocalControllerDescription,
    Status,
    add,
)
from snooze.protocol import Envelope
from snooze.rpc import RpcError

if TYPE_CHECKING:
    from groupmanager.service import GroupManager

log = logging.getLogger(__name__)


@dataclass
class LocalControllerRecord:
    description: LocalControllerDescription
    domains: list[dict[str, Any]] = field(default_factory=list)
    usage: Capacity = ZERO
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))
    vm_usage: dict[str, list[float]] = field(default_factory=dict)
    vm_requested: dict[str, Capacity] = field(default_factory=dict)

    def add_vm(self, vm_id: str, requested: Capacity, state: str = "RUNNING", *, uuid: str | None = None) -> None:
        """Record a VM that now runs here (started, or migrated in), before monitoring shows it."""
        self.vm_requested[vm_id] = requested
        self.domains = [d for d in self.domains if d.get("name") != vm_id] + [
            {"name": vm_id, "uuid": uuid, "state": state, "vcpus": requested[0], "memory": requested[1]}]
        if vm_id not in self.description.assigned_virtual_machines:
            self.description.assigned_virtual_machines.append(vm_id)

    def remove_vm(self, vm_id: str) -> Capacity | None:
        """Forget a VM that left (destroyed, or migrated away); its requested capacity, if known."""
        self.domains = [d for d in self.domains if d.get("name") != vm_id]
        if vm_id in self.description.assigned_virtual_machines:
            self.description.assigned_virtual_machines.remove(vm_id)
        return self.vm_requested.pop(vm_id, None)


class ManagerRole:
    def __init__(self, gm: GroupManager) -> None:
        self.gm = gm
        self.lcs: dict[str, LocalControllerRecord] = {}
        self.detector = FailureDetector(gm.settings.heartbeat.timeout)
        self.leader: GroupManagerDescription | None = None
        self.joined_epoch = 0
        self.running = False
        self._leader_changed = asyncio.Event()
        self.vms = VirtualMachines(self)
        self.migrations = Migrations(self.vms)
        self.energy = EnergySaver(self)
        self.reconfiguration = Reconfiguration(self)
        self.inventory = Inventory(self)

    # -- lifecycle (called by GroupManager) ----------------------------------------------
    async def start(self) -> None:
        self.running = True
        gm = self.gm
        gm.heartbeat.on("lc.heartbeat", self._on_lc_heartbeat)
        gm.internal.on("lc.join", self._on_lc_join)
        gm.internal.on("lc.monitoring", self._on_monitoring)
        gm.internal.on("gm.describe", self._on_describe)
        self.vms.register()
        self.migrations.register()
        self.energy.start()
        self.reconfiguration.start()
        self.inventory.start()
        hb = gm.settings.heartbeat
        gm.spawn("manager.join", self._join_loop())
        gm.every("manager.heartbeat", lambda: hb.interval, self._heartbeat)
        gm.every("manager.failures", lambda: hb.interval / 2, self._check_failures)
        gm.every("manager.summary", lambda: gm.settings.monitoring.summary_interval, self._send_summary)

    async def stop(self, *, handover_epoch: int | None = None, leader: dict[str, Any] | None = None) -> None:
        """Stop managing; with ``handover_epoch``, order the local controllers to re-join."""
        self.running = False
        for name in ("manager.join", "manager.heartbeat", "manager.failures", "manager.summary"):
            self.gm.cancel(name)
        for kind in ("lc.join", "lc.monitoring", "gm.describe"):
            self.gm.internal.handlers.pop(kind, None)
        self.gm.heartbeat.handlers.pop("lc.heartbeat", None)
        self.vms.unregister()
        self.migrations.unregister()
        self.energy.stop()
        self.reconfiguration.stop()
        self.inventory.stop()
        if handover_epoch is not None and self.lcs:
            await asyncio.gather(
                *(
                    self.gm.rpc.call(
                        r.description.control_data_address, "lc.rejoin", {"exclude": True, "leader": leader},
                        epoch=handover_epoch, timeout=2,
                    )
                    for r in self.lcs.values()
                ),
                return_exceptions=True,
            )
        self.lcs.clear()

    # -- the leader ----------------------------------------------------------------------
    def leader_seen(self, leader: GroupManagerDescription) -> None:
        if self.leader is None or self.leader.id != leader.id or leader.epoch > self.joined_epoch:
            if leader.id == self.gm.id:
                return
            self.leader = leader
            self._leader_changed.set()

    async def _join_loop(self) -> None:
        while self.running:
            await self._leader_changed.wait()
            self._leader_changed.clear()
            leader = self.leader
            if leader is None:
                continue
            try:
                reply = await self.gm.rpc.call(
                    leader.address, "gm.join", {"groupManager": self.gm.description().to_json()},
                    epoch=self.gm.known_epoch, timeout=3,
                )
                self.joined_epoch = int(reply.get("epoch", leader.epoch))
                self.gm.see_epoch(self.joined_epoch)
                log.info("joined group leader %s (epoch %d)", leader.id, self.joined_epoch)
                await self._send_summary()
            except RpcError as exc:
                log.info("could not join group leader %s: %s; retrying", leader.id, exc)
                await asyncio.sleep(0.5)
                self._leader_changed.set()

    # -- local controllers ---------------------------------------------------------------
    def _on_lc_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if env.sender in self.lcs:
            self.detector.heard(env.sender)

    async def _on_lc_join(self, env: Envelope) -> Any:
        try:
            desc = LocalControllerDescription.from_json(env.body["localController"])
            domains = list(env.body.get("domains") or [])
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, "BAD_JOIN", f"bad join request: {exc}") from exc
        desc.group_manager_id = self.gm.id
        desc.assigned_virtual_machines = [d["name"] for d in domains if d.get("state") in ("RUNNING", "PAUSED")]
        self.lcs[desc.id] = LocalControllerRecord(
            desc, domains, history=deque(maxlen=self.gm.settings.monitoring.history)
        )
        self.detector.heard(desc.id)
        self.energy.on_joined(desc.id)
        self.gm.spawn(f"manager.clear-wakeup-{desc.id}", self.energy.clear_wakeup(desc.id))
        # What its hypervisor has is the truth: records that disagree are settled (inventory.py).
        self.inventory.joined(desc.id)
        log.info("local controller %s joined with %d domains", desc.id, len(domains))
        return {"groupManagerId": self.gm.id, "epoch": self.gm.known_epoch}

    async def _on_monitoring(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        rec = self.lcs.get(str(body.get("id")))
        if rec is None:
            raise ApiError(404, "NOT_JOINED", "this group manager does not manage you")
        self.detector.heard(rec.description.id)
        usage = body.get("hostUsage") or [0, 0, 0, 0]
        rec.usage = (float(usage[0]), float(usage[1]), float(usage[2]), float(usage[3]))
        rec.domains = list(body.get("domains") or [])
        rec.vm_usage = dict(body.get("virtualMachines") or {})
        rec.description.assigned_virtual_machines = [
            d["name"] for d in rec.domains if d.get("state") in ("RUNNING", "PAUSED")
        ]
        self.inventory.seen(rec.description.id, {str(d.get("name")) for d in rec.domains})
        rec.history.append({"timestamp": body.get("timestamp"), "hostUsage": list(rec.usage)})
        return {"ok": True}

    async def _heartbeat(self) -> None:
        peers = [r.description.control_data_address for r in self.lcs.values() if r.description.status == Status.ACTIVE]
        if self.leader is not None and self.joined_epoch:
            peers.append(self.leader.address)
        if peers:
            self.gm.heartbeat.send("gm.heartbeat", self.gm.known_epoch, {"id": self.gm.id}, peers)

    async def _check_failures(self) -> None:
        for lc_id in self.detector.expired():
            self.detector.forget(lc_id)
            rec = self.lcs.get(lc_id)
            if rec is not None and rec.description.status in (Status.PASSIVE, Status.WAKING):
                continue  # asleep on our order: silent by design, still wakeable capacity
            if self.lcs.pop(lc_id, None) is not None:
                self.inventory.left(lc_id)
                log.warning("local controller %s is silent; dropped", lc_id)

    def summary(self) -> dict[str, Any]:
        active = passive = used = requested = ZERO
        largest = ZERO
        for lc_id, r in self.lcs.items():
            if r.description.status == Status.ACTIVE:
                active = add(active, r.description.total_capacity)
                used = add(used, r.usage)
                taken = add(self.vms.requested_on(lc_id), self.vms.reserved_on(lc_id))
                requested = add(requested, taken)
                free = tuple(max(0.0, t - u) for t, u in zip(r.description.total_capacity, taken, strict=True))
                if free[0] * 1e12 + free[1] > largest[0] * 1e12 + largest[1]:
                    largest = free  # type: ignore[assignment]
            elif r.description.status in (Status.PASSIVE, Status.WAKING):
                passive = add(passive, r.description.total_capacity)
        return {
            "activeCapacity": list(active),
            "passiveCapacity": list(passive),
            "usedCapacity": list(used),
            "requestedCapacity": list(requested),
            "largestFreeCapacity": list(largest),
            "reservedCapacity": list(self.vms.reserved_total()),
            "orphanVirtualMachines": self.inventory.report(),
            "numberOfLocalControllers": len(self.lcs),
        }

    async def _send_summary(self) -> None:
        leader = self.leader
        if leader is None:
            return
        try:
            await self.gm.rpc.call(
                leader.address, "gm.summary", {"id": self.gm.id, "summary": self.summary()},
                epoch=self.gm.known_epoch, timeout=3,
            )
        except RpcError as exc:
            if exc.code == "NOT_JOINED":
                self._leader_changed.set()
            else:
                log.debug("summary failed: %s", exc)

    async def _on_describe(self, env: Envelope) -> Any:
        desc = self.gm.description()
        desc.summary = self.summary()
        desc.local_controllers = {}
        for k, r in self.lcs.items():
            orphans = set(self.inventory.orphans.get(k, ()))
            # Live domain states ride in the original's virtualMachineMetaData field.
            r.description.virtual_machine_metadata = {
                d["name"]: {"status": d.get("state"), "usedCapacity": r.vm_usage.get(d["name"]),
                            **({"orphan": True} if d["name"] in orphans else {})}
                for d in r.domains if "name" in d
            }
            desc.local_controllers[k] = r.description
        out = desc.to_json(with_lcs=True)
        for lc in out.get("localControllers") or []:
            # Domains on the host that no VM record accounts for (see inventory.py).
            lc["orphanVirtualMachines"] = list(self.inventory.orphans.get(lc.get("id"), ()))
        return {"groupManager": out}
