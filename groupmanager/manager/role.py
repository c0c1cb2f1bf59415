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
import time
from collections import Counter, deque
from typing import Any, Protocol

from groupmanager.manager.energy import EnergySaver
from groupmanager.manager.hosts import Hosts, LocalControllerRecord
from groupmanager.manager.inventory import Inventory
from groupmanager.manager.reconfiguration import Reconfiguration
from groupmanager.manager.vifs import vif_host_info
from groupmanager.manager.vms import Migrations, VirtualMachines
from groupmanager.thresholds import thresholds_from
from snooze.codes import STARTED, ErrorCode
from snooze.events import EventKind
from snooze.heartbeat import FailureDetector
from snooze.http import ApiError
from snooze.models import (
    ZERO,
    GroupManagerDescription,
    LocalControllerDescription,
    Status,
    add,
)
from snooze.protocol import Envelope
from snooze.protocol.messages import (
    BadMessage,
    DescribeGroupManager,
    GroupManagerHeartbeat,
    GroupManagerJoin,
    LocalControllerHeartbeat,
    LocalControllerJoin,
    Monitoring,
    Rejoin,
    ReleaseLocalControllers,
    Summary,
)
from snooze.ratelimit import RateLimitedLog
from snooze.rpc import RpcError
from snooze.scope import Scope

__all__ = ["LocalControllerRecord", "ManagerNode", "ManagerRole"]

log = logging.getLogger(__name__)

#: A refused join (its ZooKeeper registration not seen yet, the leader settling) is retried after
#: this pause, doubled each time up to JOIN_RETRY_MAX seconds.
JOIN_RETRY_FIRST = 0.1
JOIN_RETRY_MAX = 0.5
#: s a host dropped as silent may come back to this manager directly (LocalControllerJoin
#: ``returning``); after that it asks the leader, as a new host does.
RETURN_WINDOW = 120.0


class ManagerNode(Protocol):
    """What the manager role needs of its group manager process besides its scope."""

    def description(self) -> GroupManagerDescription: ...

    def see_epoch(self, epoch: int) -> bool: ...


class ManagerRole:
    """Wiring: ``start()`` registers everything through ``scope`` (a child of the process
    scope); ``stop()`` closes that scope, so no handler of the role answers afterwards."""

    def __init__(self, scope: Scope, node: ManagerNode) -> None:
        self.scope = scope
        self.node = node
        settings = scope.settings
        self.hosts = Hosts(thresholds_from(settings.groupmanager))
        self.lcs = self.hosts.lcs
        self.detector = FailureDetector(settings.heartbeat.timeout)
        #: Hosts dropped as silent: when (monotonic), and their record. Within RETURN_WINDOW
        #: each may come back directly, without the leader: heard again (a heartbeat or a
        #: report: it still counts itself ours), or by a join ``returning``.
        self.dropped: dict[str, tuple[float, LocalControllerRecord]] = {}
        #: Monitoring reports taken, by form: whole, unchanged (a heartbeat), unmatched.
        self.reports: Counter[str] = Counter()
        self.leader: GroupManagerDescription | None = None
        self.joined_epoch = 0
        self._leader_changed = asyncio.Event()
        self._join_refused = RateLimitedLog(log, interval=10.0)
        self.energy = EnergySaver(scope, self.hosts)
        self.vms = VirtualMachines(scope, self.hosts, self.energy, self.summary)
        self.migrations = Migrations(scope, self.hosts, self.vms)
        self.reconfiguration = Reconfiguration(scope, self.hosts, self.migrations, self.energy)
        self.vms.room = self.reconfiguration  # make_room_before_waking: a migration instead of a wake-up
        self.inventory = Inventory(scope, self.hosts, self.vms, self.migrations)
        self.energy.on_adopted = self._send_summary
        self.energy.on_handed_away = self._forget

    @property
    def running(self) -> bool:
        return not self.scope.closed

    @property
    def id(self) -> str:
        return self.scope.id

    # -- lifecycle (called by GroupManager) ----------------------------------------------
    async def start(self) -> None:
        scope = self.scope
        scope.heartbeat_on("lc.heartbeat", self._on_lc_heartbeat)
        scope.on_message(LocalControllerJoin, self._on_lc_join)
        scope.on_message(Monitoring, self._on_monitoring)
        scope.on_message(DescribeGroupManager, self._on_describe)
        scope.on_message(ReleaseLocalControllers, self._on_release, order=True)
        self.vms.register()
        self.migrations.register()
        self.energy.start()
        self.reconfiguration.start()
        self.inventory.start()
        hb = scope.settings.heartbeat
        scope.spawn("manager.join", self._join_loop())
        scope.every("manager.heartbeat", lambda: hb.interval, self._heartbeat)
        scope.every("manager.failures", lambda: hb.interval / 2, self._check_failures)
        scope.every("manager.summary", lambda: scope.settings.monitoring.summary_interval, self._send_summary)

    async def stop(self, *, handover_epoch: int | None = None, leader: dict[str, Any] | None = None) -> None:
        """Stop managing; with ``handover_epoch``, order the local controllers to re-join."""
        await self.scope.close()
        if handover_epoch is not None and self.lcs:
            await asyncio.gather(
                *(
                    self.scope.rpc.call(
                        r.description.control_data_address, Rejoin.KIND, Rejoin(exclude=True, leader=leader).to_wire(),
                        epoch=handover_epoch, timeout=2,
                    )
                    # Sleeping hosts cannot answer: the leader hands them over (sleeping/<lc>).
                    for r in self.lcs.values() if r.description.status != Status.PASSIVE
                ),
                return_exceptions=True,
            )
        self.lcs.clear()

    # -- the leader ----------------------------------------------------------------------
    def leader_seen(self, leader: GroupManagerDescription) -> None:
        if self.leader is None or self.leader.id != leader.id or leader.epoch > self.joined_epoch:
            if leader.id == self.id:
                return
            self.leader = leader
            self._leader_changed.set()

    async def _join_loop(self) -> None:
        pause = JOIN_RETRY_FIRST
        while self.running:
            await self._leader_changed.wait()
            self._leader_changed.clear()
            leader = self.leader
            if leader is None:
                continue
            try:
                reply = await self.scope.rpc.call(
                    leader.address, GroupManagerJoin.KIND, GroupManagerJoin(self.node.description().to_json()).to_wire(),
                    epoch=self.scope.epoch, timeout=3,
                )
                self.joined_epoch = int(reply.get("epoch", leader.epoch))
                self.node.see_epoch(self.joined_epoch)
                log.info("joined group leader %s (epoch %d)", leader.id, self.joined_epoch)
                pause = JOIN_RETRY_FIRST
                await self._send_summary()
            except RpcError as exc:  # refused or unreachable: said once per 10 s per reason, retried
                self._join_refused(str(exc.code), "could not join group leader %s: %s; retrying", leader.id, exc)
                await asyncio.sleep(pause)
                pause = min(JOIN_RETRY_MAX, 2 * pause)
                self._leader_changed.set()
            except Exception as exc:  # a reply this version cannot read
                log.info("could not join group leader %s: %s; retrying", leader.id, exc, exc_info=True)
                await asyncio.sleep(JOIN_RETRY_MAX)
                self._leader_changed.set()

    # -- local controllers ---------------------------------------------------------------
    def _on_lc_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        rec = self.lcs.get(env.sender) or self._take_back(env.sender)
        if rec is None:
            return
        self.detector.heard(env.sender)
        try:
            beat = LocalControllerHeartbeat.from_wire(env.body)
        except BadMessage:
            return
        if beat.unchanged is None:
            return
        last = rec.last_report
        if last is not None and last.seq == beat.unchanged:
            # In place of a report identical to that one: taken again, as if it had come.
            self.reports["unchanged"] += 1
            self._apply_report(rec, last, time.time())
        else:
            self.reports["unmatched"] += 1  # the next whole report (every full_report_every) settles it

    async def _on_lc_join(self, msg: LocalControllerJoin, _env: Envelope) -> Any:
        try:
            desc = LocalControllerDescription.from_json(msg.local_controller)
            domains = list(msg.domains)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.BAD_JOIN, f"bad join request: {exc}") from exc
        if msg.returning and desc.id not in self.lcs and not self._dropped_lately(desc.id):
            # Not one this manager had: where a host goes is the leader's choice.
            raise ApiError(ErrorCode.NOT_JOINED, f"{desc.id} is not one of this group manager's hosts; ask the group leader")
        self.dropped.pop(desc.id, None)
        host_info = vif_host_info(desc.id, msg.host_info)
        desc.group_manager_id = self.id
        desc.assigned_virtual_machines = [d["name"] for d in domains if d.get("state") in STARTED]
        self.lcs[desc.id] = LocalControllerRecord(
            desc, domains, history=deque(maxlen=self.scope.settings.monitoring.history), host_info=host_info
        )
        self.detector.heard(desc.id)
        self.energy.on_joined(desc.id)
        self.scope.spawn(f"manager.clear-wakeup-{desc.id}", self.energy.clear_wakeup(desc.id))
        # What its hypervisor has is the truth: records that disagree are settled (inventory.py).
        self.inventory.joined(desc.id)
        log.info("local controller %s %s with %d domains", desc.id, "came back" if msg.returning else "joined", len(domains))
        self.scope.emit(EventKind.LOCAL_CONTROLLER_JOINED, localControllerId=desc.id, groupManagerId=self.id,
                        domains=len(domains))
        # monitoringDeltas: reports that did not change may come as heartbeats (``unchanged``).
        return {"groupManagerId": self.id, "epoch": self.scope.epoch, "monitoringDeltas": True}

    async def _on_monitoring(self, msg: Monitoring, _env: Envelope) -> Any:
        rec = self.lcs.get(msg.id) or self._take_back(msg.id)
        if rec is None:
            raise ApiError(ErrorCode.NOT_JOINED, "this group manager does not manage you")
        self.detector.heard(rec.description.id)
        rec.last_report = msg
        self.reports["whole"] += 1
        self._apply_report(rec, msg, msg.timestamp)
        return {"ok": True}

    def _apply_report(self, rec: LocalControllerRecord, msg: Monitoring, timestamp: float | None) -> None:
        usage = msg.host_usage or [0, 0, 0, 0]
        rec.usage = (float(usage[0]), float(usage[1]), float(usage[2]), float(usage[3]))
        rec.domains = list(msg.domains)
        rec.vm_usage = dict(msg.virtual_machines)
        rec.description.assigned_virtual_machines = [
            d["name"] for d in rec.domains if d.get("state") in STARTED
        ]
        self.inventory.seen(rec.description.id, {str(d.get("name")) for d in rec.domains})
        rec.history.append({"timestamp": timestamp, "hostUsage": list(rec.usage)})

    async def _heartbeat(self) -> None:
        peers = [r.description.control_data_address for r in self.lcs.values() if r.description.status == Status.ACTIVE]
        if self.leader is not None and self.joined_epoch:
            peers.append(self.leader.address)
        if peers:
            self.scope.heartbeat.send(GroupManagerHeartbeat.KIND, self.scope.epoch, GroupManagerHeartbeat(self.id).to_wire(), peers)

    def _dropped_lately(self, lc_id: str) -> LocalControllerRecord | None:
        now = time.monotonic()
        for k in [k for k, (t, _r) in self.dropped.items() if now - t > RETURN_WINDOW]:
            del self.dropped[k]
        got = self.dropped.get(lc_id)
        return got[1] if got is not None else None

    def _take_back(self, lc_id: str) -> LocalControllerRecord | None:
        """A host dropped as silent lately is heard again: it stalled (a loaded machine, a
        paused process), and still counts itself ours, so it is ours again at once, its
        domains checked against the records as after a join. Before, it was found out only by
        its next whole report or its own timeout, and 556 hosts of stalled processes took 40 s
        to come back at 2,000 hosts (docs/scale.md)."""
        rec = self._dropped_lately(lc_id)
        if rec is None:
            return None
        del self.dropped[lc_id]
        self.lcs[lc_id] = rec
        self.detector.heard(lc_id)
        self.inventory.joined(lc_id)
        log.info("local controller %s is heard again; taken back", lc_id)
        self.scope.emit(EventKind.LOCAL_CONTROLLER_JOINED, localControllerId=lc_id, groupManagerId=self.id,
                        domains=len(rec.domains))
        return rec

    def _forget(self, lc_id: str) -> None:
        """``lc_id`` is no longer ours (handed to another group manager)."""
        self.dropped.pop(lc_id, None)
        self.detector.forget(lc_id)
        self.energy.idle_since.pop(lc_id, None)
        if self.lcs.pop(lc_id, None) is not None:
            self.inventory.left(lc_id)

    async def _on_release(self, msg: ReleaseLocalControllers, _env: Envelope) -> Any:
        """The leader rebalances: let go of up to ``count`` hosts that can move now. Sleeping
        hosts first (nothing runs there), then active ones with the fewest VMs; never one with
        capacity reserved or a VM migrating (an operation in flight stays with its manager).
        They leave this manager under the placement lock, so no plan chooses them meanwhile."""
        released: list[dict[str, Any]] = []
        moving = set(self.migrations.moving)
        async with self.hosts.reservations.lock:
            def movable(lc_id: str, r: LocalControllerRecord) -> bool:
                if r.description.status == Status.PASSIVE:
                    return True
                if r.description.status != Status.ACTIVE or self.hosts.reservations.any_on(lc_id):
                    return False
                return not any(d.get("name") in moving for d in r.domains)

            candidates = sorted(((k, r) for k, r in self.lcs.items() if movable(k, r)),
                                key=lambda kr: (kr[1].description.status != Status.PASSIVE, len(kr[1].domains), kr[0]))
            for lc_id, r in candidates[: max(0, msg.count)]:
                released.append({"id": lc_id, "status": r.description.status.value,
                                 "localController": r.description.to_json()})
                self._forget(lc_id)
        if released:
            log.info("released %s to group manager %s (rebalancing)", ", ".join(r["id"] for r in released), msg.target)
            # The leader dispatches by summaries: tell it this capacity left now.
            self.scope.spawn("manager.summary-after-release", self._send_summary())
        return {"released": released}

    async def _check_failures(self) -> None:
        for lc_id in self.detector.expired():
            self.detector.forget(lc_id)
            rec = self.lcs.get(lc_id)
            if rec is not None and rec.description.status in (Status.PASSIVE, Status.WAKING):
                continue  # asleep on our order: silent by design, still wakeable capacity
            if rec is not None:
                del self.lcs[lc_id]
                self.inventory.left(lc_id)
                self.dropped[lc_id] = (time.monotonic(), rec)
                log.warning("local controller %s is silent; dropped", lc_id)
                self.scope.emit(EventKind.LOCAL_CONTROLLER_FAILED, localControllerId=lc_id, groupManagerId=self.id)

    def summary(self) -> dict[str, Any]:
        active = passive = used = requested = ZERO
        largest = ZERO
        for lc_id, r in self.lcs.items():
            if r.description.status == Status.ACTIVE:
                active = add(active, r.description.total_capacity)
                used = add(used, r.usage)
                taken = self.hosts.taken_on(lc_id)
                requested = add(requested, taken)
                total = r.description.total_capacity
                free = (max(0.0, total[0] - taken[0]), max(0.0, total[1] - taken[1]),
                        max(0.0, total[2] - taken[2]), max(0.0, total[3] - taken[3]))
                if free[0] * 1e12 + free[1] > largest[0] * 1e12 + largest[1]:
                    largest = free
            elif r.description.status in (Status.PASSIVE, Status.WAKING):
                passive = add(passive, r.description.total_capacity)
        return {
            "activeCapacity": list(active),
            "passiveCapacity": list(passive),
            "usedCapacity": list(used),
            "requestedCapacity": list(requested),
            "largestFreeCapacity": list(largest),
            "reservedCapacity": list(self.hosts.reservations.total()),
            "orphanVirtualMachines": self.inventory.report(),
            "numberOfLocalControllers": len(self.lcs),
        }

    async def _send_summary(self) -> None:
        leader = self.leader
        if leader is None:
            return
        try:
            await self.scope.rpc.call(
                leader.address, Summary.KIND, Summary(self.id, self.summary()).to_wire(),
                epoch=self.scope.epoch, timeout=3,
            )
        except RpcError as exc:
            if exc.code is ErrorCode.NOT_JOINED:
                self._leader_changed.set()
            else:
                log.debug("summary failed: %s", exc)

    async def _on_describe(self, _msg: DescribeGroupManager, _env: Envelope) -> Any:
        return {"groupManager": self.describe()}

    def describe(self) -> dict[str, Any]:
        """This manager's description with its local controllers, their VMs and the summary."""
        desc = self.node.description()
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
            # What its VMs use (monitoring) and what placement counts as taken there (VMs'
            # requests and reservations): the dashboard's capacity bars, beside totalCapacity.
            held = self.lcs.get(lc.get("id"))
            if held is not None:
                lc["usedCapacity"] = list(held.usage)
                lc["requestedCapacity"] = list(self.hosts.taken_on(held.description.id))
        return out
