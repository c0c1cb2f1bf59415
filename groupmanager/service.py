"""The group manager process: every one competes in the election; the winner runs the leader
role and stops its manager role, the others run the manager role. Leadership can be lost and
regained at any time, and both roles start and stop cleanly.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiohttp import web

from groupmanager.leader import LeaderRole
from groupmanager.manager import ManagerRole
from groupmanager.manager.vms import client_hypervisor_settings
from groupmanager.placement import make_placement_policy
from groupmanager.thresholds import thresholds_from
from snooze import config as cfg
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError, LeaderElection
from snooze.coordination.store import Store
from snooze.discovery import Advertiser
from snooze.http import ApiError, read_identifier, read_json
from snooze.ids import InvalidId, check_id
from snooze.models import GroupManagerDescription, ListenSettings
from snooze.protocol import Envelope
from snooze.rpc import api_error
from snooze.service import Service

log = logging.getLogger(__name__)


class GroupManager(Service):
    role = "groupmanager"

    def __init__(self, settings: cfg.Settings) -> None:
        gm = settings.groupmanager
        for option in ("placement_policy", "dispatch_policy"):
            try:
                make_placement_policy(getattr(gm, option), thresholds=thresholds_from(gm))
            except ValueError as exc:  # UnknownPolicyError names the known policies
                raise cfg.ConfigError(f"[groupmanager] {option}: {exc}") from exc
        super().__init__(settings)
        self.leader_role: LeaderRole | None = None
        self.manager_role: ManagerRole | None = None
        self.election: LeaderElection | None = None
        self.advertiser: Advertiser | None = None
        self.scope.heartbeat_on("gl.heartbeat", self._on_gl_heartbeat)
        self.routes.add("groupmanager", "getGroupManagerDescription", self._http_describe, ("GET",))
        self.routes.add("groupmanager", "startVirtualCluster", self._http_start_vc, ("POST",))
        self.routes.add("groupmanager", "getVirtualClusterResponse", self._http_vc_response, ("POST",))
        self.routes.add("groupmanager", "migrateVirtualMachine", self._http_migrate, ("POST",))

    def description(self) -> GroupManagerDescription:
        return GroupManagerDescription(
            id=self.id, listen_settings=ListenSettings(self.address), hostname=self.hostname, epoch=self.known_epoch
        )

    def leader_description(self, epoch: int) -> GroupManagerDescription:
        d = self.description()
        d.epoch = epoch
        return d

    @property
    def is_leader(self) -> bool:
        return self.leader_role is not None

    async def on_start(self) -> None:
        assert self.coord is not None
        self.election = LeaderElection(self.coord, self.id, self._elected, self._deposed)
        self.coord.watch_json(self.coord.path("leader"), self._on_leader_znode)
        await self._become_manager()
        self.spawn("election", self.election.run())
        c = self.settings.cluster
        if c.discovery == "zeroconf":
            self.advertiser = Advertiser(c.zeroconf_interfaces)
            await self.advertiser.start(
                f"{c.name}-{self.id}", self.address.address, self.address.port,
                {"cluster": c.name, "zookeeper": c.zookeeper, "role": self.role, "id": self.id},
            )

    async def on_stop(self) -> None:
        if self.advertiser is not None:
            await self.advertiser.stop()
        if self.election is not None:
            await self.election.stop()
        if self.leader_role is not None:
            await self.leader_role.stop()
            assert self.coord is not None
            await self.coord.unregister(self.coord.path("leader"))
        if self.manager_role is not None:
            await self.manager_role.stop()

    # -- role switching ------------------------------------------------------------------
    async def _become_manager(self) -> None:
        assert self.coord is not None
        self.manager_role = ManagerRole(self.scope.child("manager"), self)
        await self.manager_role.start()
        self.keep_registered("groupmanagers", lambda: self.description().to_json())

    async def _elected(self, epoch: int) -> None:
        assert self.coord is not None
        self.see_epoch(epoch)
        role, self.manager_role = self.manager_role, None
        if role is not None:
            self.cancel("register")
            await self.coord.unregister(self.coord.path("groupmanagers", self.id))
        self.leader_role = LeaderRole(self.scope.child("leader"), self, epoch)
        await self.leader_role.start()
        await self.coord.register(self.coord.path("leader"), self.leader_description(epoch).to_json())
        log.info("now group leader (epoch %d)", epoch)
        if role is not None:
            # Only now that the leader is announced: the LCs re-join it at once.
            await role.stop(handover_epoch=epoch, leader=self.leader_description(epoch).to_json())

    async def _deposed(self) -> None:
        assert self.coord is not None
        if self.leader_role is not None:
            await self.leader_role.stop()
            self.leader_role = None
        with contextlib.suppress(CoordinationError):
            await self.coord.unregister(self.coord.path("leader"))
        if self.manager_role is None:
            await self._become_manager()

    # -- who leads -----------------------------------------------------------------------
    def _on_leader_znode(self, value: Any | None) -> None:
        if not value:
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            leader = GroupManagerDescription.from_json(value)
            if self.see_epoch(leader.epoch) and self.manager_role is not None:
                self.manager_role.leader_seen(leader)

    def _on_gl_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if env.sender == self.id or not self.see_epoch(env.epoch):
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            leader = GroupManagerDescription.from_json(env.body)
            if self.manager_role is not None:
                self.manager_role.leader_seen(leader)

    def _leader_only(self) -> LeaderRole:
        if self.leader_role is None or self.leader_role.submissions is None:
            hint = ""
            if self.manager_role is not None and self.manager_role.leader is not None:
                hint = f"; the group leader is at {self.manager_role.leader.address.url}"
            # 409, not the code's 503: the caller asked the wrong process (it is no leader at all).
            raise ApiError(ErrorCode.NOT_GROUP_LEADER, f"this group manager is not the group leader{hint}", status=409)
        return self.leader_role

    async def _http_start_vc(self, request: web.Request) -> Any:
        leader = self._leader_only()
        assert leader.submissions is not None
        task_id = await leader.submissions.submit(await read_json(request))
        return web.Response(text=task_id, content_type="text/plain")

    async def _http_vc_response(self, request: web.Request) -> Any:
        leader = self._leader_only()
        assert leader.submissions is not None
        response = await leader.submissions.response(await read_identifier(request, "taskId"))
        if response is None:
            return web.Response(text="", content_type="application/json")
        return response

    async def _http_migrate(self, request: web.Request) -> Any:
        """The original's MigrationRequest: sourceVirtualMachineLocation,
        destinationVirtualMachineLocation, destinationHypervisorSettings (may be empty), migrated.

        The destination's hypervisor settings are the ones its local controller registered in
        ZooKeeper; the request may only choose migration options (see
        ``client_hypervisor_settings``), never a URI."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "the body must be a MigrationRequest object", field="body")
        locations = {}
        for name in ("sourceVirtualMachineLocation", "destinationVirtualMachineLocation"):
            loc = body.get(name)
            if not isinstance(loc, dict):
                raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, f"{name} must be an object", field=name)
            locations[name] = loc
        src, dst = locations["sourceVirtualMachineLocation"], locations["destinationVirtualMachineLocation"]
        try:
            vm_id = check_id(src.get("virtualMachineId"), "sourceVirtualMachineLocation.virtualMachineId")
            source_lc = check_id(src.get("localControllerId"), "sourceVirtualMachineLocation.localControllerId")
            dest_lc = check_id(dst.get("localControllerId"), "destinationVirtualMachineLocation.localControllerId")
        except InvalidId as exc:
            raise ApiError(ErrorCode.INVALID_ID, str(exc), field=exc.field) from exc
        client_settings = body.get("destinationHypervisorSettings")
        if client_settings is not None and not isinstance(client_settings, dict):
            raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS,
                           f"destinationHypervisorSettings: expected an object, got {type(client_settings).__name__}",
                           field="destinationHypervisorSettings")
        if self.manager_role is None or self.coord is None:
            raise ApiError(ErrorCode.NOT_A_GROUP_MANAGER, "the group leader manages no local controller; ask the VM's group manager")
        try:
            dest = await Store(self.coord).destination(dest_lc)
        except CoordinationError as exc:
            raise api_error(exc) from exc
        if dest is None:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_NOT_FOUND, f"no local controller {dest_lc!r}",
                           field="destinationVirtualMachineLocation.localControllerId")
        dest["hypervisorSettings"] = client_hypervisor_settings(client_settings, dest["hypervisorSettings"])
        await self.manager_role.migrations.migrate(vm_id, source_lc, dest)
        return True

    async def _http_describe(self, _request: web.Request) -> Any:
        d = self.description().to_json()
        d["isGroupLeader"] = self.is_leader
        return d


def main(argv: list[str] | None = None) -> int:
    from snooze.service import main_for

    return main_for("groupmanager", GroupManager, argv)
