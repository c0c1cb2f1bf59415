"""The bootstrap: the clients' entry point.

Stateless. It learns the current group leader from ZooKeeper (a watch on the leader znode)
and from the leader's heartbeats, answers the original's bootstrap queries, and forwards the
rest to the leader.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiohttp import web

from bootstrap.vms import VirtualMachineVerbs
from snooze import config as cfg
from snooze.codes import ErrorCode
from snooze.http import ApiError, read_identifier
from snooze.models import GroupManagerDescription, NetworkAddress
from snooze.protocol import Envelope
from snooze.protocol.messages import EnergySaverSwitch, Hierarchy
from snooze.rpc import RpcError, api_error
from snooze.service import Service

log = logging.getLogger(__name__)


class Bootstrap(Service):
    role = "bootstrap"

    def __init__(self, settings: cfg.Settings) -> None:
        super().__init__(settings)
        self.leader: GroupManagerDescription | None = None
        self.heartbeat.on("gl.heartbeat", self._on_gl_heartbeat)
        r = self.routes
        r.add("bootstrap", "getGroupLeaderDescription", self.get_group_leader_description, ("GET",))
        r.add("bootstrap", "getCompleteHierarchy", self.get_complete_hierarchy, ("GET",))
        r.add("bootstrap", "getLocalControllerList", self.get_local_controller_list, ("GET",))
        self.vms = VirtualMachineVerbs(self)
        r.add("bootstrap", "suspendEnergySaver", self._energy_saver(False), ("POST", "GET"))
        r.add("bootstrap", "resumeEnergySaver", self._energy_saver(True), ("POST", "GET"))

    async def on_start(self) -> None:
        assert self.coord is not None
        self.coord.watch_json(self.coord.path("leader"), self._on_leader)
        self.keep_registered("bootstraps", lambda: {"id": self.id, "controlDataAddress": self.address.to_json()})

    def _set_leader(self, value: Any) -> None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            leader = GroupManagerDescription.from_json(value)
            if self.see_epoch(leader.epoch):
                self.leader = leader

    def _on_leader(self, value: Any | None) -> None:
        if value:
            self._set_leader(value)

    def _on_gl_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if env.epoch >= self.known_epoch:
            self._set_leader(env.body)

    def require_leader(self) -> GroupManagerDescription:
        if self.leader is None:
            raise ApiError(ErrorCode.NO_GROUP_LEADER, "no group leader is known yet; retry shortly")
        return self.leader

    async def leader_rpc(self, kind: str, body: Any = None, timeout: float = 10.0) -> Any:
        """Call the group leader; RpcError on failure (callers map it)."""
        leader = self.require_leader()
        return await self.rpc.call(leader.address, kind, body, epoch=self.known_epoch, timeout=timeout)

    async def leader_call(self, kind: str, body: Any = None, timeout: float = 10.0) -> Any:
        try:
            return await self.leader_rpc(kind, body, timeout)
        except RpcError as exc:
            raise api_error(exc, "group leader") from exc

    def _energy_saver(self, enabled: bool) -> Any:
        """Suspend or resume the energy saver of every group manager (or of the one whose id
        is the body)."""

        async def handle(request: web.Request) -> Any:
            raw = ""
            if (await request.read()).strip():
                raw = await read_identifier(request, "groupManagerId")
            hierarchy = await self.leader_call(Hierarchy.KIND)
            gms = [gm for gm in hierarchy["groupManagerDescriptions"] if not raw or gm["id"] == raw]
            if raw and not gms:
                raise ApiError(ErrorCode.GROUP_MANAGER_NOT_FOUND, f"no group manager {raw!r}", field="groupManagerId")
            done = True
            for gm in gms:
                addr = NetworkAddress.from_json(gm["listenSettings"]["controlDataAddress"])
                try:
                    await self.rpc.call(addr, EnergySaverSwitch.KIND, EnergySaverSwitch(enabled).to_wire(), epoch=self.known_epoch,
                                        timeout=5)
                except RpcError:
                    done = False
            return done

        return handle

    # -- the original's bootstrap API ----------------------------------------------------
    async def get_group_leader_description(self, _request: web.Request) -> Any:
        return self.require_leader().to_json()

    async def get_complete_hierarchy(self, _request: web.Request) -> Any:
        return await self.leader_call(Hierarchy.KIND)

    async def get_local_controller_list(self, _request: web.Request) -> Any:
        hierarchy = await self.leader_call(Hierarchy.KIND)
        lcs = [lc for gm in hierarchy["groupManagerDescriptions"] for lc in gm.get("localControllers", [])]
        return {"localControllers": lcs}


def main(argv: list[str] | None = None) -> int:
    from snooze.service import main_for

    return main_for("bootstrap", Bootstrap, argv)
