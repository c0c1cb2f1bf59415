"""The leader role: knows every group manager, assigns local controllers to them, heartbeats
the whole hierarchy and answers for it.

Orders that need agreement (assignments, group managers' joins) are refused while the leader
does not present itself as leader (its ZooKeeper session SUSPENDED: ``LeaderElection``): a
leader that cannot prove it still holds the lock gives no orders and sends no heartbeat. Every
message it sends carries its epoch.

Only group managers registered in ZooKeeper (``groupmanagers/<id>``, at the address they join
from) may join and be given local controllers: one that never reached ZooKeeper but heard the
leader's heartbeats is refused (``GROUP_MANAGER_NOT_REGISTERED``, retryable).

The leader manages no local controller itself, so a cluster needs at least two group managers
(three to survive the loss of one); with none alive besides the leader, every local controller
is refused with ``NO_GROUP_MANAGER``, saying so, and the leader logs it (rate-limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Protocol

from groupmanager.leader.assignment import choose_group_manager
from groupmanager.leader.balance import Placement
from groupmanager.leader.members import GroupManagerRecord, GroupManagers
from groupmanager.leader.publisher import EventPublisher
from groupmanager.leader.submissions import Submissions, sweep_interval
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError
from snooze.events import EventKind
from snooze.events import trim as trim_events
from snooze.http import ApiError
from snooze.models import GroupManagerDescription, NetworkAddress
from snooze.protocol import Envelope
from snooze.protocol.messages import (
    AssignLocalController,
    DescribeGroupManager,
    GroupManagerJoin,
    Hierarchy,
    Summary,
    VirtualClusterResponse,
)
from snooze.ratelimit import RateLimitedLog
from snooze.rpc import RpcError
from snooze.scope import Scope

__all__ = ["GroupManagerRecord", "LeaderNode", "LeaderRole"]

log = logging.getLogger(__name__)


#: Why a lone leader cannot host local controllers (NO_GROUP_MANAGER's message, the warnings).
#: Every this many rounds the leader reads every host's registration again, not only new ones.
PEERS_FULL_READ = 10

TOPOLOGY_ADVICE = ("the group leader does not manage local controllers: run at least 2 group managers, "
                   "3 to survive the loss of one")


class LeaderNode(Protocol):
    """What the leader role needs of its group manager process besides its scope."""

    def leader_description(self, epoch: int) -> GroupManagerDescription: ...

    @property
    def is_leader(self) -> bool:
        """Leads and may say so (its ZooKeeper session CONNECTED, its term not over)."""


class LeaderRole:
    """Wiring: ``start()`` registers everything through ``scope`` (a child of the process
    scope); ``stop()`` closes that scope, so none of its ``gl.*``/``gm.join``/``lc.assign``
    handlers answers afterwards."""

    def __init__(self, scope: Scope, node: LeaderNode, epoch: int) -> None:
        self.scope = scope
        self.node = node
        self.epoch = epoch
        self.members = GroupManagers(scope.settings.heartbeat.timeout)
        self.gms = self.members.records
        self.peers: dict[str, NetworkAddress] = {}  # LCs and bootstraps to heartbeat
        self._peer_cache: dict[str, dict[str, NetworkAddress]] = {}  # folder -> id -> address
        self._peer_rounds = 0
        self._rr = 0
        self.submissions: Submissions | None = None
        self.started_at = time.monotonic()
        self.report = RateLimitedLog(log)
        #: Sleeping hosts of lost group managers handed over; local controllers rebalanced.
        self.placement = Placement(self)

    @property
    def running(self) -> bool:
        return not self.scope.closed

    @property
    def id(self) -> str:
        return self.scope.id

    async def start(self) -> None:
        scope = self.scope
        coord = scope.coord
        assert coord is not None
        scope.on_message(GroupManagerJoin, self._on_gm_join)
        scope.on_message(Summary, self._on_summary)
        scope.on_message(AssignLocalController, self._on_assign)
        scope.on_message(Hierarchy, self._on_hierarchy)
        scope.heartbeat_on("gm.heartbeat", self._on_gm_heartbeat)
        self.submissions = Submissions(scope, self.members, self.epoch)
        scope.on("gl.startVirtualCluster", self._on_start_vc)
        scope.on_message(VirtualClusterResponse, self._on_vc_response)
        scope.spawn("leader.resume", self.submissions.resume())
        retention = self.submissions.retention
        scope.every("leader.sweep", lambda: sweep_interval(retention), self.submissions.sweep)
        await coord.watch_children(coord.path("groupmanagers"), self._on_gm_children)
        hb = scope.settings.heartbeat
        scope.every("leader.heartbeat", lambda: hb.interval, self._heartbeat)
        scope.every("leader.peers", lambda: max(hb.interval, 1.0), self._refresh_peers)
        self.placement.start()
        scope.every("leader.events-trim", lambda: 60.0, self._trim_events)
        events = scope.settings.events
        if events.amqp_url:
            # The event log to RabbitMQ, from where the previous leader stopped (publisher.py).
            scope.spawn("leader.events-publish", EventPublisher(coord, events.amqp_url, events.amqp_exchange).run())
        scope.emit(EventKind.GROUP_LEADER_ELECTED, groupManagerId=self.id, epoch=self.epoch,
                   address=scope.address.to_json())

    async def stop(self) -> None:
        await self.scope.close()

    def alive_gms(self) -> list[GroupManagerRecord]:
        return self.members.alive()

    # -- membership ----------------------------------------------------------------------
    def _on_gm_children(self, names: list[str]) -> None:
        if self.running:  # the watch outlives the role: ZooKeeper watches cannot be removed
            self.scope.spawn("leader.refresh", self._refresh_gms(set(names)))

    async def _refresh_gms(self, names: set[str]) -> None:
        coord = self.scope.coord
        assert coord is not None
        for gone in set(self.gms) - names:
            log.info("group manager %s left", gone)
            self.scope.emit(EventKind.GROUP_MANAGER_FAILED, groupManagerId=gone)
            del self.gms[gone]
            self.placement.membership_change()
            # Its sleeping hosts go to another group manager now, not at the next round.
            self.scope.spawn("leader.sleeping-now", self.placement.hand_over())
        try:
            current = await coord.children_json(coord.path("groupmanagers"))
        except CoordinationError:
            return
        for gm_id, data in current.items():
            if gm_id == self.id or gm_id in self.gms:
                continue
            try:
                desc = GroupManagerDescription.from_json(data)
                self.gms[gm_id] = GroupManagerRecord(desc)
                self.placement.membership_change()
                self.scope.emit(EventKind.GROUP_MANAGER_JOINED, groupManagerId=gm_id, address=desc.address.to_json())
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable group manager znode %s", gm_id)

    async def _refresh_peers(self) -> None:
        """The processes the leader's heartbeat goes to: every registered local controller and
        bootstrap. Each round lists the registrations and reads only the new ones (2,000 hosts
        are 2,000 reads); every PEERS_FULL_READ-th round reads them all again, in case one
        re-registered with another address between two rounds."""
        coord = self.scope.coord
        assert coord is not None
        self._peer_rounds += 1
        full = self._peer_rounds % PEERS_FULL_READ == 1
        peers: dict[str, NetworkAddress] = {}
        try:
            for sub in ("localcontrollers", "bootstraps"):
                base = coord.path(sub)
                names = await coord.children(base)
                known = {} if full else self._peer_cache.get(sub, {})
                new = [n for n in names if n not in known]
                got = await coord.call(coord.fetch, [f"{base}/{n}" for n in new]) if new else {}
                current: dict[str, NetworkAddress] = {n: known[n] for n in names if n in known}
                for n in new:
                    entry = got.get(f"{base}/{n}")
                    if entry is None:
                        continue
                    try:
                        current[n] = NetworkAddress.from_json(json.loads(entry[0])["controlDataAddress"])
                    except (KeyError, TypeError, ValueError):
                        continue
                self._peer_cache[sub] = current
                peers.update(current)
        except CoordinationError:
            return
        self.peers = peers

    # -- heartbeats ----------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        if not self.node.is_leader:
            return  # cut off from ZooKeeper: another may be elected; claim nothing
        body = self.node.leader_description(self.epoch).to_json()
        warning = self.topology_warning()
        if warning:
            body["warnings"] = [warning]
        targets = [r.description.address for r in self.gms.values()] + list(self.peers.values())
        self.scope.heartbeat.send("gl.heartbeat", self.epoch, body, targets)

    # -- handlers ------------------------------------------------------------------------
    def _on_gm_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        rec = self.gms.get(env.sender)
        if rec is not None:
            rec.last_seen = time.monotonic()

    def _require_leading(self) -> None:
        if not self.node.is_leader:
            raise ApiError(ErrorCode.LEADER_SUSPENDED, "the group leader has lost ZooKeeper; retry")

    async def _registered(self, desc: GroupManagerDescription) -> None:
        """Refuse (GROUP_MANAGER_NOT_REGISTERED) a group manager ZooKeeper does not list at the
        address it joins from."""
        coord = self.scope.coord
        assert coord is not None
        try:
            data = await coord.get_json(coord.path("groupmanagers", desc.id))
        except CoordinationError as exc:
            raise ApiError(ErrorCode.LEADER_SUSPENDED, f"the group leader cannot read ZooKeeper ({exc}); retry") from exc
        if not data:
            raise ApiError(ErrorCode.GROUP_MANAGER_NOT_REGISTERED,
                           f"group manager {desc.id} is not registered in ZooKeeper (groupmanagers/{desc.id}): "
                           "it must reach ZooKeeper before joining; retry", field="groupManager.id")
        try:
            registered = GroupManagerDescription.from_json(data).address
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.GROUP_MANAGER_NOT_REGISTERED,
                           f"group manager {desc.id}'s ZooKeeper entry is unreadable ({exc}); retry") from exc
        if (registered.address, registered.port) != (desc.address.address, desc.address.port):
            raise ApiError(ErrorCode.GROUP_MANAGER_NOT_REGISTERED,
                           f"group manager {desc.id} joins from {desc.address.address}:{desc.address.port} but ZooKeeper "
                           f"registers it at {registered.address}:{registered.port}; retry",
                           field="groupManager.listenSettings")

    async def _on_gm_join(self, msg: GroupManagerJoin, _env: Envelope) -> Any:
        try:
            desc = GroupManagerDescription.from_json(msg.group_manager)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.BAD_JOIN, f"bad join: {exc}") from exc
        self._require_leading()
        await self._registered(desc)
        rec = self.gms.get(desc.id)
        if rec is None:
            self.gms[desc.id] = GroupManagerRecord(desc)
            self.placement.membership_change()
            self.scope.emit(EventKind.GROUP_MANAGER_JOINED, groupManagerId=desc.id, address=desc.address.to_json())
        else:
            rec.description = desc
            rec.last_seen = time.monotonic()
        log.info("group manager %s joined", desc.id)
        return {"epoch": self.epoch, "groupLeaderId": self.id}

    async def _on_summary(self, msg: Summary, _env: Envelope) -> Any:
        rec = self.gms.get(msg.id)
        if rec is None:
            raise ApiError(ErrorCode.NOT_JOINED, "join the group leader first")
        rec.summary = dict(msg.summary)
        rec.last_seen = time.monotonic()
        rec.assigned_since_summary = 0
        return {"ok": True}

    async def _on_assign(self, msg: AssignLocalController, _env: Envelope) -> Any:
        self._require_leading()
        settle = min(1.0, 2 * self.scope.settings.heartbeat.interval)
        if time.monotonic() - self.started_at < settle and len(self.gms) < 2:
            # Just elected: let the group managers join before spreading local controllers. (Not
            # shortened once the only one known joined: another may not have registered yet, and
            # every local controller would go to the first.)
            raise ApiError(ErrorCode.LEADER_SETTLING, "the group leader was just elected; retry")
        exclude = set(msg.exclude)
        candidates = [r for r in self.alive_gms() if r.description.id not in exclude] or self.alive_gms()
        if not candidates:
            lc = str(msg.local_controller.get("id", "?"))
            if not self.gms:
                self.report("alone", "local controller %s asks for a group manager but none is alive besides the "
                            "group leader; %s", lc, TOPOLOGY_ADVICE)
                raise ApiError(ErrorCode.NO_GROUP_MANAGER, f"no group manager available ({TOPOLOGY_ADVICE}); retry")
            self.report("none-alive", "local controller %s asks for a group manager but none of %s is alive",
                        lc, ", ".join(sorted(self.gms)))
            raise ApiError(ErrorCode.NO_GROUP_MANAGER,
                           f"no group manager available: none of {', '.join(sorted(self.gms))} is alive "
                           f"({TOPOLOGY_ADVICE}); retry")
        lc_id = str(msg.local_controller.get("id", ""))
        home = await self._woken_by(lc_id)
        preferred = [r for r in candidates if r.description.id == home]
        moved_to = self.placement.target_for(lc_id, [r.description.id for r in candidates])
        if preferred:
            # It was powered down and woken by that group manager, which is waiting for it.
            chosen = preferred[0]
        elif moved_to is not None:
            # Rebalancing ordered it to move there.
            chosen = next(r for r in candidates if r.description.id == moved_to)
        else:
            chosen, self._rr = choose_group_manager(self.scope.settings.groupmanager.assignment_policy, candidates, self._rr)
        chosen.assigned_since_summary += 1
        self.scope.emit(EventKind.LOCAL_CONTROLLER_ASSIGNED, localControllerId=lc_id, groupManagerId=chosen.description.id)
        return {"groupManager": chosen.description.to_json(), "epoch": self.epoch}

    async def _trim_events(self) -> None:
        coord = self.scope.coord
        if coord is not None:
            with contextlib.suppress(CoordinationError):
                await trim_events(coord)

    async def _on_start_vc(self, env: Envelope) -> Any:
        assert self.submissions is not None
        return {"taskId": await self.submissions.submit(env.body)}

    async def _on_vc_response(self, msg: VirtualClusterResponse, _env: Envelope) -> Any:
        assert self.submissions is not None
        return {"response": await self.submissions.response(msg.task_id)}

    async def _woken_by(self, lc_id: str) -> str | None:
        store = self.scope.store
        if store is None:
            return None
        try:
            return await store.woken_by(lc_id)
        except CoordinationError:
            return None

    async def _on_hierarchy(self, _msg: Hierarchy, _env: Envelope) -> Any:
        return await self.hierarchy()

    def topology_warning(self) -> str | None:
        """What is wrong with the number of group managers alive besides the leader, if anything."""
        alive = len(self.alive_gms())
        if alive == 0:
            return f"no group manager is alive besides the group leader, so no local controller can be hosted ({TOPOLOGY_ADVICE})"
        if alive == 1:
            return f"one group manager besides the group leader: losing it orphans every local controller ({TOPOLOGY_ADVICE})"
        return None

    def describe_timeout(self) -> float:
        """How long the hierarchy waits for one group manager: about a heartbeat interval, kept
        within 1..2 s (a describe is answered from memory; one that takes longer is shown as
        last known, marked stale)."""
        return min(2.0, max(1.0, self.scope.settings.heartbeat.interval))

    async def hierarchy(self) -> dict[str, Any]:
        timeout = self.describe_timeout()

        async def describe(rec: GroupManagerRecord) -> dict[str, Any]:
            try:
                reply = await self.scope.rpc.call(rec.description.address, DescribeGroupManager.KIND,
                                                  DescribeGroupManager().to_wire(), epoch=self.epoch, timeout=timeout)
                d = dict(reply["groupManager"])
            except (RpcError, KeyError, TypeError) as exc:
                # Cut off or slow: what it last said, marked, rather than waiting for it.
                d = dict(rec.last_description) if rec.last_description else rec.description.to_json(with_lcs=True)
                d["stale"] = True
                d["error"] = str(exc)
                if rec.last_answer is not None:
                    d["staleForSeconds"] = round(time.monotonic() - rec.last_answer, 1)
                return d
            rec.last_description = d
            rec.last_answer = time.monotonic()
            return d

        # Only the group managers heard from within the heartbeat timeout: a silent one is on
        # its way out (ZooKeeper or the failure detector drops it) and is not waited for.
        records = sorted(self.alive_gms(), key=lambda r: r.description.id)
        gms = await asyncio.gather(*(describe(r) for r in records))
        out: dict[str, Any] = {
            "groupLeaderDescription": self.node.leader_description(self.epoch).to_json(),
            "groupManagerDescriptions": list(gms),
        }
        warning = self.topology_warning()
        if warning:
            out["warnings"] = [warning]
        return out
