"""The leader role: knows every group manager, assigns local controllers to them, heartbeats
the whole hierarchy and answers for it.

Orders that need agreement (assignments) are refused while the ZooKeeper session is SUSPENDED:
a leader that cannot prove it still holds the lock gives no orders. Every message it sends
carries its epoch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from groupmanager.leader.assignment import choose_group_manager
from groupmanager.leader.submissions import Submissions, sweep_interval
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import ApiError
from snooze.models import GroupManagerDescription, NetworkAddress
from snooze.protocol import Envelope
from snooze.rpc import RpcError

if TYPE_CHECKING:
    from groupmanager.service import GroupManager

log = logging.getLogger(__name__)


@dataclass
class GroupManagerRecord:
    description: GroupManagerDescription
    summary: dict[str, Any] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    assigned_since_summary: int = 0


class LeaderRole:
    def __init__(self, gm: GroupManager, epoch: int) -> None:
        self.gm = gm
        self.epoch = epoch
        self.gms: dict[str, GroupManagerRecord] = {}
        self.peers: dict[str, NetworkAddress] = {}  # LCs and bootstraps to heartbeat
        self.running = False
        self._rr = 0
        self.submissions: Submissions | None = None
        self.started_at = time.monotonic()

    async def start(self) -> None:
        self.running = True
        gm = self.gm
        assert gm.coord is not None
        gm.internal.on("gm.join", self._on_gm_join)
        gm.internal.on("gm.summary", self._on_summary)
        gm.internal.on("lc.assign", self._on_assign)
        gm.internal.on("gl.hierarchy", self._on_hierarchy)
        gm.heartbeat.on("gm.heartbeat", self._on_gm_heartbeat)
        self.submissions = Submissions(self)
        gm.internal.on("gl.startVirtualCluster", self._on_start_vc)
        gm.internal.on("gl.virtualClusterResponse", self._on_vc_response)
        gm.spawn("leader.resume", self.submissions.resume())
        retention = self.submissions.retention
        gm.every("leader.sweep", lambda: sweep_interval(retention), self.submissions.sweep)
        await gm.coord.watch_children(gm.coord.path("groupmanagers"), self._on_gm_children)
        hb = gm.settings.heartbeat
        gm.every("leader.heartbeat", lambda: hb.interval, self._heartbeat)
        gm.every("leader.peers", lambda: max(hb.interval, 1.0), self._refresh_peers)

    async def stop(self) -> None:
        self.running = False
        for name in ("leader.heartbeat", "leader.peers", "leader.refresh", "leader.resume", "leader.sweep"):
            self.gm.cancel(name)
        for kind in ("gm.join", "gm.summary", "lc.assign", "gl.hierarchy", "gl.startVirtualCluster", "gl.virtualClusterResponse"):
            self.gm.internal.handlers.pop(kind, None)
        self.gm.heartbeat.handlers.pop("gm.heartbeat", None)

    def alive_gms(self) -> list[GroupManagerRecord]:
        limit = self.gm.settings.heartbeat.timeout
        now = time.monotonic()
        return [r for r in self.gms.values() if now - r.last_seen <= limit]

    # -- membership ----------------------------------------------------------------------
    def _on_gm_children(self, names: list[str]) -> None:
        if self.running:
            self.gm.spawn("leader.refresh", self._refresh_gms(set(names)))

    async def _refresh_gms(self, names: set[str]) -> None:
        assert self.gm.coord is not None
        for gone in set(self.gms) - names:
            log.info("group manager %s left", gone)
            del self.gms[gone]
        try:
            current = await self.gm.coord.children_json(self.gm.coord.path("groupmanagers"))
        except CoordinationError:
            return
        for gm_id, data in current.items():
            if gm_id == self.gm.id or gm_id in self.gms:
                continue
            try:
                self.gms[gm_id] = GroupManagerRecord(GroupManagerDescription.from_json(data))
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable group manager znode %s", gm_id)

    async def _refresh_peers(self) -> None:
        coord = self.gm.coord
        assert coord is not None
        peers: dict[str, NetworkAddress] = {}
        try:
            for sub in ("localcontrollers", "bootstraps"):
                for pid, data in (await coord.children_json(coord.path(sub))).items():
                    try:
                        peers[pid] = NetworkAddress.from_json(data["controlDataAddress"])
                    except (KeyError, TypeError, ValueError):
                        continue
        except CoordinationError:
            return
        self.peers = peers

    # -- heartbeats ----------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        body = self.gm.leader_description(self.epoch).to_json()
        targets = [r.description.address for r in self.gms.values()] + list(self.peers.values())
        self.gm.heartbeat.send("gl.heartbeat", self.epoch, body, targets)

    # -- handlers ------------------------------------------------------------------------
    def _on_gm_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        rec = self.gms.get(env.sender)
        if rec is not None:
            rec.last_seen = time.monotonic()

    async def _on_gm_join(self, env: Envelope) -> Any:
        try:
            desc = GroupManagerDescription.from_json(env.body["groupManager"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, "BAD_JOIN", f"bad join: {exc}") from exc
        rec = self.gms.get(desc.id)
        if rec is None:
            self.gms[desc.id] = GroupManagerRecord(desc)
        else:
            rec.description = desc
            rec.last_seen = time.monotonic()
        log.info("group manager %s joined", desc.id)
        return {"epoch": self.epoch, "groupLeaderId": self.gm.id}

    async def _on_summary(self, env: Envelope) -> Any:
        body = env.body if isinstance(env.body, dict) else {}
        rec = self.gms.get(str(body.get("id")))
        if rec is None:
            raise ApiError(404, "NOT_JOINED", "join the group leader first")
        rec.summary = dict(body.get("summary") or {})
        rec.last_seen = time.monotonic()
        rec.assigned_since_summary = 0
        return {"ok": True}

    async def _on_assign(self, env: Envelope) -> Any:
        coord = self.gm.coord
        if coord is None or not coord.connected:
            raise ApiError(503, "LEADER_SUSPENDED", "the group leader has lost ZooKeeper; retry")
        settle = min(1.0, 2 * self.gm.settings.heartbeat.interval)
        if time.monotonic() - self.started_at < settle and len(self.gms) < 2:
            # Just elected: let the group managers join before spreading local controllers.
            raise ApiError(503, "LEADER_SETTLING", "the group leader was just elected; retry")
        body = env.body if isinstance(env.body, dict) else {}
        exclude = set(body.get("exclude") or [])
        candidates = [r for r in self.alive_gms() if r.description.id not in exclude] or self.alive_gms()
        if not candidates:
            raise ApiError(503, "NO_GROUP_MANAGER", "no group manager available; retry")
        lc_id = str((body.get("localController") or {}).get("id", ""))
        home = await self._woken_by(lc_id)
        preferred = [r for r in candidates if r.description.id == home]
        if preferred:
            # It was powered down and woken by that group manager, which is waiting for it.
            chosen = preferred[0]
        else:
            chosen, self._rr = choose_group_manager(self.gm.settings.groupmanager.assignment_policy, candidates, self._rr)
        chosen.assigned_since_summary += 1
        return {"groupManager": chosen.description.to_json(), "epoch": self.epoch}

    async def _on_start_vc(self, env: Envelope) -> Any:
        assert self.submissions is not None
        return {"taskId": await self.submissions.submit(env.body)}

    async def _on_vc_response(self, env: Envelope) -> Any:
        assert self.submissions is not None
        task_id = env.body.get("taskId") if isinstance(env.body, dict) else None
        return {"response": await self.submissions.response(str(task_id))}

    async def _woken_by(self, lc_id: str) -> str | None:
        if self.gm.coord is None:
            return None
        try:
            return await Store(self.gm.coord).woken_by(lc_id)
        except CoordinationError:
            return None

    async def _on_hierarchy(self, _env: Envelope) -> Any:
        return await self.hierarchy()

    async def hierarchy(self) -> dict[str, Any]:
        async def describe(rec: GroupManagerRecord) -> dict[str, Any]:
            try:
                reply = await self.gm.rpc.call(rec.description.address, "gm.describe", None, epoch=self.epoch, timeout=3)
                return dict(reply["groupManager"])
            except (RpcError, KeyError, TypeError) as exc:
                d = rec.description.to_json(with_lcs=True)
                d["error"] = str(exc)
                return d

        records = sorted(self.alive_gms(), key=lambda r: r.description.id)
        gms = await asyncio.gather(*(describe(r) for r in records))
        return {
            "groupLeaderDescription": self.gm.leader_description(self.epoch).to_json(),
            "groupManagerDescriptions": list(gms),
        }
