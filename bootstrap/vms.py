"""The bootstrap's virtual-machine verbs: submissions are forwarded to the group leader;
lifecycle actions go to the group manager of the VM's local controller, found in ZooKeeper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from snooze.codes import ErrorCode, VMStatus
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import ApiError, bad_request, parse_json, read_body, read_identifier, read_json
from snooze.ids import InvalidId, check_id
from snooze.models import NetworkAddress, Status
from snooze.protocol.messages import Hierarchy, Migrate, VirtualClusterResponse, VmAction, VmInfo
from snooze.records import RecordError, VMRecord
from snooze.rpc import RpcError, api_error

if TYPE_CHECKING:
    from bootstrap.service import Bootstrap

ACTIONS = {
    "suspendVirtualMachine": "suspend",
    "resumeVirtualMachine": "resume",
    "shutdownVirtualMachine": "shutdown",
    "rebootVirtualMachine": "reboot",
    "destroyVirtualMachine": "destroy",
}
MAX_PAGE = 1000
MAX_START = 2**63 - 1


def _id(value: Any, field: str) -> str:
    """A valid id (snooze.ids) or a 400 naming ``field``: checked before it becomes a path."""
    try:
        return check_id(value, field)
    except InvalidId as exc:
        raise bad_request(str(exc), field=field, code=ErrorCode.INVALID_ID) from exc


def _zookeeper_errors(handler: Callable[[web.Request], Awaitable[Any]]) -> Callable[[web.Request], Awaitable[Any]]:
    """ZooKeeper out of reach is a 503 to retry, not a 500 (which says: a bug)."""

    async def handle(request: web.Request) -> Any:
        try:
            return await handler(request)
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc

    return handle


class VirtualMachineVerbs:
    def __init__(self, bootstrap: Bootstrap) -> None:
        self.b = bootstrap
        z = _zookeeper_errors
        r = bootstrap.routes
        r.add("bootstrap", "startVirtualCluster", self.start_virtual_cluster, ("POST",))
        r.add("bootstrap", "getVirtualClusterResponse", self.get_virtual_cluster_response, ("POST",))
        r.add("bootstrap", "getVirtualMachineMetaData", z(self.get_virtual_machine_metadata), ("GET", "POST"))
        r.add("bootstrap", "getVirtualMachineDescriptions", z(self.get_virtual_machine_descriptions), ("GET", "POST"))
        r.add("bootstrap", "getGroupManagerDescriptions", self.get_group_manager_descriptions, ("GET", "POST"))
        r.add("bootstrap", "getLocalControllerDescriptions", self.get_local_controller_descriptions, ("GET", "POST"))
        r.add("bootstrap", "migrateVirtualMachine", z(self.migrate_virtual_machine), ("POST",))
        for verb, action in ACTIONS.items():
            r.add("bootstrap", verb, z(self._action_handler(action)), ("POST",))

    @property
    def store(self) -> Store:
        if self.b.coord is None:
            raise ApiError(ErrorCode.NOT_READY, "the bootstrap is starting")
        return Store(self.b.coord)

    # -- submissions (forwarded to the leader) -------------------------------------------
    async def start_virtual_cluster(self, request: web.Request) -> Any:
        body = await read_json(request)
        try:
            reply = await self.b.leader_rpc("gl.startVirtualCluster", body, timeout=60)
        except RpcError as exc:
            raise api_error(exc, "group leader") from exc
        return web.Response(text=str(reply["taskId"]), content_type="text/plain")

    async def get_virtual_cluster_response(self, request: web.Request) -> Any:
        task_id = await read_identifier(request, "taskId")
        try:
            reply = await self.b.leader_rpc(VirtualClusterResponse.KIND, VirtualClusterResponse(task_id).to_wire(), timeout=30)
        except RpcError as exc:
            raise api_error(exc, "group leader") from exc
        if reply.get("response") is None:
            return web.Response(text="", content_type="application/json")
        return reply["response"]

    # -- finding a VM --------------------------------------------------------------------
    async def _locate(self, vm_id: str) -> tuple[VMRecord, NetworkAddress, str]:
        """(record, its group manager's address, its local controller id) or a 404/409/503."""
        try:
            rec = await self.store.get_vm(vm_id)
            if rec is None:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no virtual machine {vm_id!r}", field="virtualMachineId")
            lc_id = rec.lc_id
            if not lc_id:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_PLACED, f"{vm_id} is {rec.status}, not on a host", field="virtualMachineId")
            coord = self.b.coord
            assert coord is not None
            lc = await coord.get_json(coord.path("localcontrollers", lc_id))
            gm_id = (lc or {}).get("groupManagerId")
            gm = await coord.get_json(coord.path("groupmanagers", gm_id)) if gm_id else None
        except RecordError as exc:
            # Where it runs, if anywhere, cannot be known from it: no order can be sent.
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_PLACED, str(exc), field="virtualMachineId") from exc
        except CoordinationError as exc:
            raise api_error(exc) from exc
        if not gm:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_UNAVAILABLE, f"{vm_id}'s host {lc_id} has no group manager right now; retry")
        return rec, NetworkAddress.from_json(gm["listenSettings"]["controlDataAddress"]), lc_id

    def _action_handler(self, action: str) -> Any:
        async def handle(request: web.Request) -> Any:
            vm_id = await read_identifier(request, "virtualMachineId")
            rec, gm_addr, lc_id = await self._locate(vm_id)
            try:
                # The record's domain UUID (when known): a delayed order never reaches a newer VM
                # of the same name.
                reply = await self.b.rpc.call(gm_addr, VmAction.KIND,
                                              VmAction(action, vm_id=vm_id, local_controller_id=lc_id,
                                                       uuid=rec.uuid).to_wire(),
                                              epoch=self.b.known_epoch, timeout=60)
            except RpcError as exc:
                raise api_error(exc, "group manager") from exc
            return bool(reply.get("ok"))

        return handle

    async def migrate_virtual_machine(self, request: web.Request) -> Any:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise bad_request("body must be {\"virtualMachineId\", \"localControllerId\"}", field="body")
        for name in ("virtualMachineId", "localControllerId"):
            if body.get(name) in (None, ""):
                raise bad_request(f"{name} is missing", field=name)
        vm_id, dest_id = _id(body["virtualMachineId"], "virtualMachineId"), _id(body["localControllerId"], "localControllerId")
        rec, gm_addr, source_lc = await self._locate(vm_id)
        dest = await self.store.destination(dest_id)
        if dest is None:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_NOT_FOUND, f"no local controller {dest_id!r}", field="localControllerId")
        if dest_id == source_lc:
            raise ApiError(ErrorCode.SAME_LOCAL_CONTROLLER, f"{vm_id} already runs on {dest_id}", field="localControllerId")
        if dest.get("status") not in (None, Status.ACTIVE):
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_NOT_ACTIVE, f"{dest_id} is {dest['status']}", field="localControllerId")
        try:
            requested = list(rec.requested) if rec.requested is not None else None
            await self.b.rpc.call(gm_addr, Migrate.KIND,
                                  Migrate(vm_id=vm_id, source_lc_id=source_lc, destination=dest, requested=requested).to_wire(),
                                  epoch=self.b.known_epoch, timeout=300)
        except RpcError as exc:
            raise api_error(exc, "group manager") from exc
        return True

    async def get_virtual_machine_metadata(self, request: web.Request) -> Any:
        if request.method == "GET":
            vm_id = request.query.get("id") or request.query.get("virtualMachineId") or ""
            if not vm_id:
                raise bad_request("give the VM id as ?getVirtualMachineMetaData&id=VM or as the POST body", field="virtualMachineId")
            vm_id = _id(vm_id, "virtualMachineId")
        else:
            vm_id = await read_identifier(request, "virtualMachineId")
        readable = True
        try:
            rec = await self.store.get_vm(vm_id)
        except RecordError as exc:
            # Shown as the group leader reports it: ERROR, with why (and nowhere to ask about it).
            rec, readable = VMRecord.unreadable(exc), False
        if rec is None:
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no virtual machine {vm_id!r}", field="virtualMachineId")
        spec = await self.store.get_spec(vm_id)
        live: dict[str, Any] | None = None
        if rec.lc_id and readable:
            try:
                _rec, gm_addr, lc_id = await self._locate(vm_id)
                live = await self.b.rpc.call(gm_addr, VmInfo.KIND, VmInfo(vm_id=vm_id, local_controller_id=lc_id).to_wire(),
                                             epoch=self.b.known_epoch, timeout=10)
            except (ApiError, RpcError):
                live = None
        meta = rec.metadata(spec, live=live)
        if live is not None:
            domain = live.get("domain")
            if domain is not None:
                meta["status"] = domain.get("state")
            elif rec.status.started:
                meta["status"] = VMStatus.DESTROYED  # gone from its host behind our back
            meta["history"] = live.get("history")
        return meta

    # -- listings ------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> tuple[int, int]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            raw = await read_body(request)
            if raw.strip():
                body = parse_json(raw)
                if not isinstance(body, dict):
                    raise bad_request("body must be a JSON object {\"start\", \"limit\"}", field="body")
                params.update(body)
        out = []
        for name, default in (("start", 0), ("limit", 100)):
            value = params.get(name, default)
            n: int | None = None
            if isinstance(value, int) and not isinstance(value, bool):
                n = value
            elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 19:
                n = int(value)  # from the query string
            if n is None:
                raise bad_request(f"{name} must be a whole number, got {ascii(value)[:40]}", field=name)
            if not 0 <= n <= MAX_START or (name == "limit" and not 1 <= n <= MAX_PAGE):
                raise bad_request(f"{name} out of range (limit 1..{MAX_PAGE}, start 0..{MAX_START})", field=name)
            out.append(n)
        return out[0], out[1]

    async def _live(self) -> tuple[dict[str, Any], dict[str, tuple[str, str, dict[str, Any]]]]:
        """The hierarchy, and vm id -> (lc id, gm id, live info) from it."""
        h = await self.b.leader_call(Hierarchy.KIND)
        live: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for gm in h.get("groupManagerDescriptions", []):
            for lc in gm.get("localControllers", []):
                for name, info in (lc.get("virtualMachineMetaData") or {}).items():
                    live[name] = (lc["id"], gm["id"], info)
        return h, live

    async def get_virtual_machine_descriptions(self, request: web.Request) -> Any:
        start, limit = await self._page(request)
        ids = await self.store.vm_ids()
        page = ids[start : start + limit]
        records = await self.store.get_vms(page)
        try:
            _h, live = await self._live()
        except ApiError:
            live = {}
        vms = []
        for vm_id in page:
            rec = records.get(vm_id)
            if rec is None:
                continue
            meta = rec.metadata()
            if vm_id in live:
                lc_id, gm_id, info = live[vm_id]
                meta["status"] = info.get("status")
                meta["usedCapacity"] = info.get("usedCapacity") or {}
                meta["virtualMachineLocation"]["groupManagerId"] = gm_id
            vms.append(meta)
        return {"virtualMachines": vms, "start": start, "limit": limit, "total": len(ids)}

    async def get_group_manager_descriptions(self, request: web.Request) -> Any:
        start, limit = await self._page(request)
        h = await self.b.leader_call(Hierarchy.KIND)
        gms = h.get("groupManagerDescriptions", [])
        return {"groupManagers": gms[start : start + limit], "start": start, "limit": limit, "total": len(gms)}

    async def get_local_controller_descriptions(self, request: web.Request) -> Any:
        start, limit = await self._page(request)
        h = await self.b.leader_call(Hierarchy.KIND)
        lcs = [lc for gm in h.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", [])]
        lcs.sort(key=lambda lc: lc["id"])
        return {"localControllers": lcs[start : start + limit], "start": start, "limit": limit, "total": len(lcs)}

