"""The original Snooze's group-manager API on every group manager and the group leader, with
the original's request shapes and answers, so the original libcloud driver, web UI and scripts
work unchanged.

Verbs (``POST /groupmanager?VERB``; bodies and answers as the original's Java classes):

==================================  ===========================================================
getVirtualMachineMetaData           MetaDataRequest ``{virtualMachineLocation,
                                    numberOfMonitoringEntries}`` → VirtualMachineMetaData, or
                                    ``null`` for a VM nobody knows
suspend/resume/shutdown/reboot/     VirtualMachineLocation → ``true``/``false``; ``false`` when
destroyVirtualMachine               the VM is unknown or the order was refused (as the original)
resizeVirtualMachine                ResizeRequest ``{virtualMachineLocation, resizedCapacity}``
                                    (``-1`` keeps a dimension) → the new metadata, or ``null``
hasVirtualMachine                   VirtualMachineLocation (or a VM id) → whether this group
                                    manager manages the VM
discoverVirtualMachine              a VM id → ``{localControllerId, groupManagerAddress}`` or
                                    ``null``
getGroupLeaderRepositoryInformation the number of monitoring entries → ``{groupManagerDescriptions:
                                    [...]}``, each with its local controllers and their VMs
getGroupManagerRepositoryInformation  the number of monitoring entries →
                                    ``{localControllerDescriptions: [...]}`` of this manager
getLocalControllerList              (leader) → ``{localControllers: [...]}``
startReconfiguration                runs this manager's consolidation once → ``true``/``false``
migrateVirtualMachine               MigrationRequest or the 1.1 ClientMigrationRequest
                                    ``{oldLocation, newLocation}``, on the source's manager or on
                                    the leader, which forwards it to the source's manager with the
                                    destination's hypervisor settings → ``true``
==================================  ===========================================================

A VM's group manager is the one whose local controller runs it; a group manager asked about a
VM it does not manage finds the right one in ZooKeeper and forwards the order, so a client may
ask any of them (the original driver asks the one the VM's metadata names, which may be stale).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from groupmanager.manager.vms import client_hypervisor_settings
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import ApiError, parse_json, read_body
from snooze.ids import InvalidId, check_id, is_valid_id
from snooze.models import NetworkAddress
from snooze.protocol.messages import Message, Migrate, Resize, VmAction, VmInfo
from snooze.records import RecordError
from snooze.rpc import RpcError, api_error

if TYPE_CHECKING:
    from groupmanager.service import GroupManager

log = logging.getLogger(__name__)

ACTION_VERBS = {
    "suspendVirtualMachine": "suspend",
    "resumeVirtualMachine": "resume",
    "shutdownVirtualMachine": "shutdown",
    "rebootVirtualMachine": "reboot",
    "destroyVirtualMachine": "destroy",
}
MAX_MONITORING_ENTRIES = 1000


def _vm_id_of(body: Any, field: str = "virtualMachineLocation") -> str | None:
    """The VM id of a VirtualMachineLocation, a MetaDataRequest or a bare id; None when the body
    names none (a malformed body is a 400 naming the field; an id that is not valid is unknown)."""
    if isinstance(body, dict) and isinstance(body.get("virtualMachineLocation"), dict):
        body = body["virtualMachineLocation"]
    if isinstance(body, dict):
        value = body.get("virtualMachineId")
        where = f"{field}.virtualMachineId"
    else:
        value, where = body, "virtualMachineId"
    if value is None or value == "":
        raise ApiError(ErrorCode.BAD_REQUEST, f"{where} is missing", field=where)
    if not isinstance(value, str):
        raise ApiError(ErrorCode.BAD_REQUEST, f"{where} must be a string", field=where)
    return value if is_valid_id(value) else None


def _entries(body: Any) -> int:
    """numberOfMonitoringEntries: a whole number (the original sent it bare or in a MetaDataRequest)."""
    if isinstance(body, dict):
        body = body.get("numberOfMonitoringEntries", 0)
    if isinstance(body, str) and body.strip().isdigit():
        body = int(body.strip())
    if body is None or body == "":
        body = 0
    if isinstance(body, bool) or not isinstance(body, int) or not 0 <= body <= MAX_MONITORING_ENTRIES:
        raise ApiError(ErrorCode.BAD_REQUEST, f"numberOfMonitoringEntries must be a whole number from 0 to "
                                              f"{MAX_MONITORING_ENTRIES}", field="numberOfMonitoringEntries")
    return body


async def _body(request: web.Request) -> Any:
    """The JSON body; a bare word (a VM id or a number sent as text, as the original's clients
    did) is taken as that text."""
    raw = (await read_body(request)).strip()
    if not raw:
        return None
    if raw[:1] in (b"{", b"[", b'"'):
        return parse_json(raw)
    text = raw.decode("utf-8", "replace")
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else text


class OriginalApi:
    """Registers the original's verbs on a group manager process (manager or leader role)."""

    def __init__(self, gm: GroupManager) -> None:
        self.gm = gm
        r = gm.routes
        r.add("groupmanager", "getVirtualMachineMetaData", self.get_metadata, ("POST",))
        for verb, action in ACTION_VERBS.items():
            r.add("groupmanager", verb, self._action(action), ("POST",))
        r.add("groupmanager", "resizeVirtualMachine", self.resize, ("POST",))
        r.add("groupmanager", "migrateVirtualMachine", self._migrate, ("POST",))
        r.add("groupmanager", "hasVirtualMachine", self.has_vm, ("POST",))
        r.add("groupmanager", "discoverVirtualMachine", self.discover, ("POST",))
        r.add("groupmanager", "getGroupLeaderRepositoryInformation", self.leader_repository, ("GET", "POST"))
        r.add("groupmanager", "getGroupManagerRepositoryInformation", self.manager_repository, ("GET", "POST"))
        r.add("groupmanager", "getLocalControllerList", self.local_controller_list, ("GET", "POST"))
        r.add("groupmanager", "startReconfiguration", self.start_reconfiguration, ("GET", "POST"))

    @property
    def store(self) -> Store:
        if self.gm.coord is None:
            raise ApiError(ErrorCode.NOT_READY, "the group manager is starting")
        return Store(self.gm.coord)

    # -- where a VM is ---------------------------------------------------------------------
    async def _where(self, vm_id: str) -> tuple[str, str, NetworkAddress] | None:
        """(local controller, group manager id, its address) of a known, placed VM, or None."""
        try:
            rec = await self.store.get_vm(vm_id)
            if rec is None or not rec.lc_id:
                return None
            coord = self.gm.coord
            assert coord is not None
            lc = await coord.get_json(coord.path("localcontrollers", rec.lc_id))
            gm_id = (lc or {}).get("groupManagerId")
            gm = await coord.get_json(coord.path("groupmanagers", gm_id)) if gm_id else None
        except (RecordError, CoordinationError, InvalidId):
            return None
        if not gm:
            return None
        return rec.lc_id, str(gm_id), NetworkAddress.from_json(gm["listenSettings"]["controlDataAddress"])

    async def _ask(self, address: NetworkAddress, message: Message, timeout: float) -> Any:
        """``message`` to the VM's group manager at ``address``; RpcError on failure."""
        return await self.gm.rpc.call(address, message.KIND, message.to_wire(), epoch=self.gm.known_epoch, timeout=timeout)

    async def _order(self, address: NetworkAddress, message: Message, timeout: float) -> Any:
        """``_ask``, its refusal or failure as the API error it maps to."""
        try:
            return await self._ask(address, message, timeout)
        except RpcError as exc:
            raise api_error(exc, "group manager") from exc

    def _mine(self, vm_id: str) -> str | None:
        """The local controller of this manager that runs ``vm_id``, if any."""
        role = self.gm.manager_role
        if role is None:
            return None
        try:
            return role.vms.find(vm_id, None)
        except ApiError:
            return None

    # -- verbs -----------------------------------------------------------------------------
    async def get_metadata(self, request: web.Request) -> Any:
        body = await _body(request)
        vm_id = _vm_id_of(body)
        entries = _entries(body)
        if vm_id is None:
            return None
        return await self.metadata(vm_id, entries)

    async def metadata(self, vm_id: str, entries: int = 0) -> Any:
        """The VM's metadata (its record, with its live state from its group manager), or None."""
        try:
            rec = await self.store.get_vm(vm_id)
            spec = await self.store.get_spec(vm_id) if rec is not None else None
        except RecordError:
            return None
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc
        if rec is None:
            return None
        live: dict[str, Any] | None = None
        where = await self._where(vm_id)
        if where is not None:
            lc_id, _gm_id, address = where
            try:
                live = await self._ask(address, VmInfo(vm_id=vm_id, local_controller_id=lc_id), 10)
            except RpcError:
                live = None
        meta = rec.metadata(spec, live=live)
        if live is not None:
            if isinstance(live.get("domain"), dict):
                meta["status"] = live["domain"].get("state")
            history = list(live.get("history") or [])
            meta["usedCapacity"] = {str(h.get("timestamp")): h.get("hostUsage") for h in history[-entries:]} if entries else (
                meta.get("usedCapacity") or {})
        return meta

    def _action(self, action: str) -> Any:
        async def handle(request: web.Request) -> Any:
            vm_id = _vm_id_of(await _body(request))
            if vm_id is None:
                return False
            role = self.gm.manager_role
            lc_id = self._mine(vm_id)
            try:
                if role is not None and lc_id is not None:
                    await role.vms.act(vm_id, lc_id, action)
                    return True
                where = await self._where(vm_id)
                if where is None:
                    return False
                lc_id, _gm_id, address = where
                reply = await self._ask(address, VmAction(action, vm_id=vm_id, local_controller_id=lc_id), 60)
                return bool(reply.get("ok"))
            except (ApiError, RpcError) as exc:
                # The original answered false to a refused order; the reason goes to the log.
                log.info("%s %s refused: %s", action, vm_id, exc)
                return False

        return handle

    async def resize(self, request: web.Request) -> Any:
        """ResizeRequest → the VM's new metadata; ``null`` for a VM nobody knows. A size its host
        cannot take is a 409 naming why (the original had no such answer to give)."""
        body = await _body(request)
        vm_id = _vm_id_of(body)
        if vm_id is None:
            return None
        resized = body.get("resizedCapacity") if isinstance(body, dict) else None
        role = self.gm.manager_role
        lc_id = self._mine(vm_id)
        if role is not None and lc_id is not None:
            await role.vms.resize(vm_id, lc_id, resized)
        else:
            where = await self._where(vm_id)
            if where is None:
                return None
            lc_id, _gm_id, address = where
            await self._order(address, Resize(vm_id=vm_id, capacity=resized, local_controller_id=lc_id), 90)
        return await self.metadata(vm_id)

    async def _migrate(self, request: web.Request) -> Any:
        return await self.migrate(await _body(request))

    async def has_vm(self, request: web.Request) -> Any:
        vm_id = _vm_id_of(await _body(request))
        return vm_id is not None and self._mine(vm_id) is not None

    async def discover(self, request: web.Request) -> Any:
        vm_id = _vm_id_of(await _body(request), "virtualMachineId")
        if vm_id is None:
            return None
        where = await self._where(vm_id)
        if where is None:
            return None
        lc_id, _gm_id, address = where
        return {"localControllerId": lc_id, "groupManagerAddress": address.to_json()}

    async def leader_repository(self, request: web.Request) -> Any:
        _entries(await _body(request))
        leader = self.gm.leader_role
        if leader is None:
            raise ApiError(ErrorCode.NOT_GROUP_LEADER, "this group manager is not the group leader", status=409)
        hierarchy = await leader.hierarchy()
        return {"groupManagerDescriptions": hierarchy["groupManagerDescriptions"]}

    async def manager_repository(self, request: web.Request) -> Any:
        _entries(await _body(request))
        role = self.gm.manager_role
        if role is None:
            # The leader manages no local controller: an empty repository, as the original's GL.
            return {"localControllerDescriptions": []}
        return {"localControllerDescriptions": role.describe().get("localControllers") or []}

    async def local_controller_list(self, request: web.Request) -> Any:
        leader = self.gm.leader_role
        if leader is None:
            raise ApiError(ErrorCode.NOT_GROUP_LEADER, "this group manager is not the group leader", status=409)
        hierarchy = await leader.hierarchy()
        lcs = [lc for gm in hierarchy["groupManagerDescriptions"] for lc in gm.get("localControllers", [])]
        return {"localControllers": lcs}

    async def start_reconfiguration(self, request: web.Request) -> Any:
        role = self.gm.manager_role
        if role is None:
            return False
        report = await role.reconfiguration.consolidate_once()
        return not report.get("busy", False)

    # -- migration ---------------------------------------------------------------------------
    async def migrate(self, body: Any) -> bool:
        """A MigrationRequest or a 1.1 ClientMigrationRequest, on the source's manager or the leader."""
        vm_id, source_lc, dest_lc, client_settings = parse_migration(body)
        if dest_lc is None:
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "the destination names no localControllerId",
                           field="destinationVirtualMachineLocation.localControllerId")
        try:
            dest = await self.store.destination(dest_lc)
        except CoordinationError as exc:
            raise api_error(exc) from exc
        if dest is None:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_NOT_FOUND, f"no local controller {dest_lc!r}",
                           field="destinationVirtualMachineLocation.localControllerId")
        dest["hypervisorSettings"] = client_hypervisor_settings(client_settings, dest["hypervisorSettings"])
        role = self.gm.manager_role
        mine = self._mine(vm_id)
        if role is not None and mine is not None:
            await role.migrations.migrate(vm_id, mine, dest)  # from where it runs, whatever the request says
            return True
        where = await self._where(vm_id)
        if where is None:
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no running virtual machine {vm_id!r}",
                           field="sourceVirtualMachineLocation.virtualMachineId")
        lc_id, _gm_id, address = where
        await self._order(address, Migrate(vm_id=vm_id, source_lc_id=lc_id, destination=dest), 300)
        return True


def parse_migration(body: Any) -> tuple[str, str | None, str | None, dict[str, Any] | None]:
    """(VM id, source local controller, destination local controller, client's hypervisor
    settings) of a MigrationRequest (``sourceVirtualMachineLocation``,
    ``destinationVirtualMachineLocation``, ``destinationHypervisorSettings``) or a 1.1
    ClientMigrationRequest (``oldLocation``, ``newLocation``)."""
    if not isinstance(body, dict):
        raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "the body must be a MigrationRequest object", field="body")
    if "oldLocation" in body or "newLocation" in body:
        names = ("oldLocation", "newLocation")
    else:
        names = ("sourceVirtualMachineLocation", "destinationVirtualMachineLocation")
    locations = []
    for name in names:
        loc = body.get(name)
        if not isinstance(loc, dict):
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, f"{name} must be an object", field=name)
        locations.append(loc)
    src, dst = locations
    try:
        vm_id = check_id(src.get("virtualMachineId"), f"{names[0]}.virtualMachineId")
        source_lc = check_id(src["localControllerId"], f"{names[0]}.localControllerId") if src.get("localControllerId") else None
        dest_lc = check_id(dst["localControllerId"], f"{names[1]}.localControllerId") if dst.get("localControllerId") else None
    except InvalidId as exc:
        raise ApiError(ErrorCode.INVALID_ID, str(exc), field=exc.field) from exc
    settings = body.get("destinationHypervisorSettings")
    if settings is not None and not isinstance(settings, dict):
        raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS,
                       f"destinationHypervisorSettings: expected an object, got {type(settings).__name__}",
                       field="destinationHypervisorSettings")
    return vm_id, source_lc, dest_lc, settings


__all__ = ["ACTION_VERBS", "OriginalApi", "parse_migration"]
