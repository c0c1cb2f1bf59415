"""The bootstrap's virtual-machine verbs: submissions are forwarded to the group leader;
lifecycle actions go to the group manager of the VM's local controller, found in ZooKeeper.

A VM's status comes from its host when its host's group manager answers; when nobody can say
(the host is managed by no group manager, or its group manager did not answer, or there is no
live view at all) a VM whose record places it on a host is shown ``UNKNOWN`` with a ``reason``,
never the record's last ``RUNNING``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bootstrap.openapi import ID, id_body, ok
from snooze.auth import Principal
from snooze.auth.guard import ANONYMOUS, principal_of
from snooze.codes import FINISHED, IN_FLIGHT, ErrorCode, VMStatus
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import (
    Access,
    ApiError,
    bad_request,
    parse_json,
    read_body,
    read_identifier,
    read_json,
)
from snooze.ids import InvalidId, check_id
from snooze.migration import order_budget
from snooze.models import NetworkAddress, Status
from snooze.openapi import (
    TEXT,
    Body,
    Operation,
    Param,
    any_of,
    array,
    boolean,
    describe_verb,
    integer,
    nullable,
    number,
    obj,
    ref,
    string,
)
from snooze.protocol.messages import (
    Hierarchy,
    Migrate,
    Reconfigure,
    Resize,
    VirtualClusterResponse,
    VmAction,
    VmInfo,
)
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
#: Seconds a submission's forwarding to the leader waits per VM, over its base timeout.
SUBMISSION_SECONDS_PER_VM = 0.005
#: Seconds a migration's forwarding to its group manager waits at least.
MIGRATE_WAIT = 300.0


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


def _may_see(principal: Principal, rec: VMRecord) -> bool:
    """An admin sees every VM, a user only those submitted with their token."""
    return principal.admin or rec.owner == principal.user


def _on_host(rec: VMRecord) -> bool:
    """The record says what runs on a host (a status only that host's live view can confirm)."""
    return bool(rec.lc_id) and rec.status not in IN_FLIGHT and rec.status not in FINISHED


def _unknown(meta: dict[str, Any], reason: str) -> dict[str, Any]:
    meta["recordedStatus"] = meta.get("status")
    meta["status"] = VMStatus.UNKNOWN
    meta["reason"] = reason
    return meta


def _orphaned(lc_id: str) -> str:
    return f"local controller {lc_id} is not reachable (no group manager manages it)"


def _check_v(v: Any) -> None:
    """``v``: absent, 1 (the original's answers) or 2 (the paged object); else a 400."""
    if isinstance(v, bool) or v not in (None, "1", "2", 1, 2):
        raise bad_request(f"v must be 1 (the original's answer) or 2 (the paged object), got {ascii(v)[:40]}", field="v")


@dataclass
class LiveView:
    """The hierarchy as the VM listing reads it."""

    #: vm id -> (lc id, gm id, live info), from the group managers that answered.
    vms: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    #: Local controllers a group manager that answered manages.
    managed: set[str] = field(default_factory=set)
    #: lc id -> why its VMs' status is unknown (its group manager did not answer in time).
    stale: dict[str, str] = field(default_factory=dict)


@dataclass
class HostList:
    """A listing request: the original's HostListRequest, or the paged ``?v=2`` form."""

    offset: int
    cursor: str | None  # the id of the first entry (the original's ``start``)
    limit: int
    group_manager: str | None
    local_controller: str | None
    paged: bool  # ?v=2: answer {KEY: [...], "start", "limit", "total"}, ``start`` an offset

    def page(self, items: list[dict[str, Any]], key: str = "id") -> list[dict[str, Any]]:
        """The entries of this page, from ``items`` sorted by ``key``."""
        if self.cursor is not None:
            items = [i for i in items if str(i.get(key, "")) >= self.cursor]
        return items[self.offset : self.offset + self.limit]

    def answer(self, name: str, items: list[dict[str, Any]], total: int, *, wrap: bool) -> Any:
        if self.paged:
            return {name: items, "start": self.offset, "limit": self.limit, "total": total}
        return {name: items} if wrap else items


class VirtualMachineVerbs:
    def __init__(self, bootstrap: Bootstrap) -> None:
        self.b = bootstrap
        z = _zookeeper_errors
        r = bootstrap.routes
        u = Access.USER  # a user's token: their own VMs only (checked here, by each VM's owner)
        r.add("bootstrap", "startVirtualCluster", self.start_virtual_cluster, ("POST",), access=u)
        r.add("bootstrap", "getVirtualClusterResponse", self.get_virtual_cluster_response, ("POST",), access=u)
        r.add("bootstrap", "getVirtualMachineMetaData", z(self.get_virtual_machine_metadata), ("GET", "POST"))
        r.add("bootstrap", "getVirtualMachineDescriptions", z(self.get_virtual_machine_descriptions), ("GET", "POST"))
        r.add("bootstrap", "getGroupManagerDescriptions", self.get_group_manager_descriptions, ("GET", "POST"))
        r.add("bootstrap", "getLocalControllerDescriptions", self.get_local_controller_descriptions, ("GET", "POST"))
        r.add("bootstrap", "migrateVirtualMachine", z(self.migrate_virtual_machine), ("POST",))
        r.add("bootstrap", "resizeVirtualMachine", z(self.resize_virtual_machine), ("POST",), access=u)
        r.add("bootstrap", "startReconfiguration", z(self.start_reconfiguration), ("POST",))
        for verb, action in ACTIONS.items():
            r.add("bootstrap", verb, z(self._action_handler(action)), ("POST",), access=u)
        _describe(bootstrap.app)

    @property
    def store(self) -> Store:
        if self.b.coord is None:
            raise ApiError(ErrorCode.NOT_READY, "the bootstrap is starting")
        return Store(self.b.coord)

    # -- submissions (forwarded to the leader) -------------------------------------------
    async def start_virtual_cluster(self, request: web.Request) -> Any:
        body = await read_json(request)
        if isinstance(body, dict):
            body.pop("owner", None)  # never the client's say
            principal = principal_of(request)
            if principal is not ANONYMOUS:
                body["owner"] = principal.user
            if not principal.admin:
                await self._check_networks(principal, body.get("virtualMachineTemplates"))
        # Sent again to the next leader if this one does not answer (cut off from the network):
        # a submission is idempotent (by its requestId, else by its VMs' names and templates),
        # so the next leader answers the same task if the first had recorded it, and nothing
        # is started twice.
        try:
            templates = body.get("virtualMachineTemplates") if isinstance(body, dict) else None
            count = len(templates) if isinstance(templates, list) else 1
            reply = await self.b.leader_rpc("gl.startVirtualCluster", body, timeout=self.submission_timeout(count),
                                            idempotent=True)
        except RpcError as exc:
            raise api_error(exc, "group leader") from exc
        return web.Response(text=str(reply["taskId"]), content_type="text/plain")

    async def _check_networks(self, principal: Principal, templates: Any) -> None:
        """403 for a template on a network (or a subnet of one) not granted to a user's token;
        the leader checks the rest of the submission."""
        if not isinstance(templates, list):
            return
        for i, t in enumerate(templates):
            if not isinstance(t, dict):
                continue
            where = f"virtualMachineTemplates[{i}]"
            net = t.get("network")
            if isinstance(net, str) and net and not principal.may_use_network(net):
                raise ApiError(ErrorCode.FORBIDDEN, f"{where}.network: network {net[:80]!r} is not granted to this token",
                               field=f"{where}.network")
            sub = t.get("subnet")
            if isinstance(sub, str) and sub:
                subnet = await self.b.network.subnet(sub)
                if subnet is not None and not principal.may_use_network(subnet.network):
                    raise ApiError(ErrorCode.FORBIDDEN, f"{where}.subnet: subnet {sub[:80]!r} is on a network not "
                                   "granted to this token", field=f"{where}.subnet")

    def submission_timeout(self, templates: int = 1) -> float:
        """How long a leader has to record a submission of ``templates`` VMs before it is sent
        to a newer one: a few session timeouts (a cut-off leader is replaced within one), at
        least 10 s, and ``SUBMISSION_SECONDS_PER_VM`` more per VM (a leader of 2,000 hosts
        records 5,000 VMs in 4 to 20 s, waiting for another submission's recording first)."""
        return max(10.0, 3 * self.b.settings.cluster.session_timeout) + SUBMISSION_SECONDS_PER_VM * templates

    async def get_virtual_cluster_response(self, request: web.Request) -> Any:
        task_id = await read_identifier(request, "taskId")
        try:
            reply = await self.b.leader_rpc(VirtualClusterResponse.KIND, VirtualClusterResponse(task_id).to_wire(), timeout=30)
        except RpcError as exc:
            raise api_error(exc, "group leader") from exc
        if reply.get("response") is None:
            return web.Response(text="", content_type="text/plain")  # not placed yet: an empty answer
        principal = principal_of(request)
        vms = reply["response"].get("virtualMachineMetaData") if isinstance(reply["response"], dict) else None
        if not principal.admin and any(isinstance(m, dict) and m.get("owner") != principal.user for m in vms or []):
            raise ApiError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", field="taskId")
        return reply["response"]

    # -- finding a VM --------------------------------------------------------------------
    async def _locate(self, vm_id: str, principal: Principal = ANONYMOUS) -> tuple[VMRecord, NetworkAddress, str]:
        """(record, its group manager's address, its local controller id) or a 404/409/503;
        another user's VM is 404, as one that does not exist."""
        try:
            rec = await self.store.get_vm(vm_id)
            if rec is None or not _may_see(principal, rec):
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
            rec, gm_addr, lc_id = await self._locate(vm_id, principal_of(request))
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
        # Stuck in post-copy on its way to (and recorded on) dest_id: its group manager resumes it.
        if dest_id == source_lc and rec.error_code is not ErrorCode.MIGRATION_NEEDS_RECOVERY:
            raise ApiError(ErrorCode.SAME_LOCAL_CONTROLLER, f"{vm_id} already runs on {dest_id}", field="localControllerId")
        if dest.get("status") not in (None, Status.ACTIVE):
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_NOT_ACTIVE, f"{dest_id} is {dest['status']}", field="localControllerId")
        requested = list(rec.requested) if rec.requested is not None else None
        settings = dest.get("hypervisorSettings")
        # As long as the group manager waits for the source (order_budget), and a minute more.
        wait = max(MIGRATE_WAIT, order_budget(settings if isinstance(settings, dict) else {},
                                              requested[1] if requested else 0.0) + 60)
        try:
            await self.b.rpc.call(gm_addr, Migrate.KIND,
                                  Migrate(vm_id=vm_id, source_lc_id=source_lc, destination=dest, requested=requested).to_wire(),
                                  epoch=self.b.known_epoch, timeout=wait)
        except RpcError as exc:
            raise api_error(exc, "group manager") from exc
        return True

    async def resize_virtual_machine(self, request: web.Request) -> Any:
        """The original's ResizeRequest ``{virtualMachineLocation, resizedCapacity}``
        (``[cpu, memory KiB, rx, tx]``, -1 keeps one) → the VM's new metadata."""
        body = await read_json(request)
        location = body.get("virtualMachineLocation") if isinstance(body, dict) else None
        if not isinstance(location, dict):
            raise bad_request("the body must be a ResizeRequest {\"virtualMachineLocation\", \"resizedCapacity\"}",
                              field="virtualMachineLocation")
        vm_id = _id(location.get("virtualMachineId"), "virtualMachineLocation.virtualMachineId")
        _rec, gm_addr, lc_id = await self._locate(vm_id, principal_of(request))
        try:
            await self.b.rpc.call(gm_addr, Resize.KIND,
                                  Resize(vm_id=vm_id, capacity=body.get("resizedCapacity"), local_controller_id=lc_id).to_wire(),
                                  epoch=self.b.known_epoch, timeout=90)
        except RpcError as exc:
            raise api_error(exc, "group manager") from exc
        return await self.metadata_of(vm_id, principal_of(request))

    async def start_reconfiguration(self, request: web.Request) -> Any:
        """Run one group manager's consolidation now (the body: its id, as the original's)."""
        gm_id = await read_identifier(request, "groupManagerId")
        coord = self.b.coord
        assert coord is not None
        gm = await coord.get_json(coord.path("groupmanagers", gm_id))
        if not gm:
            raise ApiError(ErrorCode.GROUP_MANAGER_NOT_FOUND, f"no group manager {gm_id!r} manages local controllers",
                           field="groupManagerId")
        try:
            report = await self.b.rpc.call(NetworkAddress.from_json(gm["listenSettings"]["controlDataAddress"]),
                                           Reconfigure.KIND, Reconfigure("consolidate").to_wire(),
                                           epoch=self.b.known_epoch, timeout=300)
        except RpcError as exc:
            raise api_error(exc, "group manager") from exc
        return not (isinstance(report, dict) and report.get("busy"))

    async def get_virtual_machine_metadata(self, request: web.Request) -> Any:
        if request.method == "GET":
            vm_id = request.query.get("id") or request.query.get("virtualMachineId") or ""
            if not vm_id:
                raise bad_request("give the VM id as ?getVirtualMachineMetaData&id=VM or as the POST body", field="virtualMachineId")
            vm_id = _id(vm_id, "virtualMachineId")
        else:
            vm_id = await read_identifier(request, "virtualMachineId")
        return await self.metadata_of(vm_id, principal_of(request))

    async def metadata_of(self, vm_id: str, principal: Principal = ANONYMOUS) -> dict[str, Any]:
        """The VM's metadata: its record, with its live state from its group manager (UNKNOWN
        with the reason when no group manager can say); 404 for a VM nobody knows."""
        readable = True
        try:
            rec = await self.store.get_vm(vm_id)
        except RecordError as exc:
            # Shown as the group leader reports it: ERROR, with why (and nowhere to ask about it).
            rec, readable = VMRecord.unreadable(exc), False
        if rec is None or not _may_see(principal, rec):
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no virtual machine {vm_id!r}", field="virtualMachineId")
        spec = await self.store.get_spec(vm_id)
        live: dict[str, Any] | None = None
        why = ""
        if rec.lc_id and readable:
            try:
                _rec, gm_addr, lc_id = await self._locate(vm_id)
                live = await self.b.rpc.call(gm_addr, VmInfo.KIND, VmInfo(vm_id=vm_id, local_controller_id=lc_id).to_wire(),
                                             epoch=self.b.known_epoch, timeout=10)
            except ApiError as exc:
                live, why = None, (_orphaned(rec.lc_id) if exc.code is ErrorCode.LOCAL_CONTROLLER_UNAVAILABLE else exc.message)
            except RpcError as exc:
                live, why = None, f"the group manager of local controller {rec.lc_id} did not answer ({exc})"
        meta = rec.metadata(spec, live=live)
        if live is None and readable and _on_host(rec):
            return _unknown(meta, why or _orphaned(str(rec.lc_id)))
        if live is not None:
            domain = live.get("domain")
            if domain is not None:
                meta["status"] = domain.get("state")
            elif rec.status.started:
                meta["status"] = VMStatus.DESTROYED  # gone from its host behind our back
            meta["history"] = live.get("history")
        return meta

    # -- listings ------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> HostList:
        """The original's HostListRequest (``start``, ``limit``, ``numberOfMonitoringEntries``,
        ``groupManagerId``, ``localControllerId``), from a POST body or the query string."""
        params: dict[str, Any] = dict(request.query)
        _check_v(params.get("v"))
        if request.method == "POST":
            raw = await read_body(request)
            if raw.strip():
                body = parse_json(raw)
                if not isinstance(body, dict):
                    raise bad_request("body must be a HostListRequest object {\"start\", \"limit\", ...}", field="body")
                _check_v(body.get("v"))
                params.update(body)
        paged = str(params.get("v")) == "2"
        start = params.get("start")
        offset, cursor = 0, None
        if isinstance(start, bool):
            raise bad_request("start must be an id, empty, or a whole number", field="start")
        if isinstance(start, int) or (isinstance(start, str) and start.strip().isascii() and start.strip().isdigit()
                                      and len(start.strip()) <= 19 and (paged or request.method == "GET")):
            offset = int(start)  # an offset: the project's extension (and ?v=2)
            if not 0 <= offset <= MAX_START:
                raise bad_request(f"start out of range (0..{MAX_START})", field="start")
        elif isinstance(start, str) and start.strip():
            cursor = _id(start.strip(), "start")  # the original's: the id of the first entry
        elif start not in (None, ""):
            raise bad_request(f"start must be an id, empty, or a whole number, got {ascii(start)[:40]}", field="start")
        limit = params.get("limit", 100)
        if isinstance(limit, str) and limit.strip().isascii() and limit.strip().isdigit() and len(limit.strip()) <= 6:
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise bad_request(f"limit must be a whole number from 1 to {MAX_PAGE}, got {ascii(limit)[:40]}", field="limit")
        filters = {}
        for name in ("groupManagerId", "localControllerId"):
            value = params.get(name)
            if value not in (None, ""):
                filters[name] = _id(value, name)
        return HostList(offset, cursor, limit, filters.get("groupManagerId"), filters.get("localControllerId"), paged)

    async def _live(self) -> LiveView:
        """What the group managers that answered the hierarchy say runs where."""
        view = LiveView()
        for gm in (await self.b.leader_call(Hierarchy.KIND)).get("groupManagerDescriptions", []):
            for lc in gm.get("localControllers", []):
                if gm.get("stale"):
                    view.stale[lc["id"]] = (f"group manager {gm['id']} of local controller {lc['id']} did not answer "
                                            f"({gm.get('error', 'no answer')})")
                    continue
                view.managed.add(lc["id"])
                for name, info in (lc.get("virtualMachineMetaData") or {}).items():
                    view.vms[name] = (lc["id"], gm["id"], info)
        for lc_id in view.managed:
            view.stale.pop(lc_id, None)  # a fresh answer from its new group manager wins
        return view

    async def get_virtual_machine_descriptions(self, request: web.Request) -> Any:
        q = await self._page(request)
        principal = principal_of(request)
        ids = sorted(await self.store.vm_ids())
        if q.group_manager is None and q.local_controller is None and principal.admin:
            page = [i["id"] for i in q.page([{"id": vm_id} for vm_id in ids])]
            records = await self.store.get_vms(page)
            total = len(ids)
        else:
            # Filtered by where they run, or by owner: every record is read (the original's UI pages
            # hosts, not VMs).
            every = await self.store.get_vms(ids)
            chosen = [vm_id for vm_id in ids if vm_id in every and _may_see(principal, every[vm_id])
                      and (q.local_controller is None or every[vm_id].lc_id == q.local_controller)
                      and (q.group_manager is None or every[vm_id].gm_id == q.group_manager)]
            page = [i["id"] for i in q.page([{"id": vm_id} for vm_id in chosen])]
            records, total = {vm_id: every[vm_id] for vm_id in page}, len(chosen)
        view: LiveView | None = None
        no_view = ""
        try:
            view = await self._live()
        except ApiError as exc:
            no_view = f"no live view of the hosts: {exc.message}"
        vms = []
        for vm_id in page:
            rec = records.get(vm_id)
            if rec is None:
                continue
            meta = rec.metadata()
            if view is not None and vm_id in view.vms:
                lc_id, gm_id, info = view.vms[vm_id]
                meta["status"] = info.get("status")
                meta["usedCapacity"] = info.get("usedCapacity") or {}
                meta["virtualMachineLocation"]["groupManagerId"] = gm_id
            elif _on_host(rec):
                lc_id = str(rec.lc_id)
                if view is None:
                    _unknown(meta, no_view)
                elif lc_id in view.stale:
                    _unknown(meta, view.stale[lc_id])
                elif lc_id not in view.managed:
                    _unknown(meta, _orphaned(lc_id))
            vms.append(meta)
        return q.answer("virtualMachines", vms, total, wrap=True)

    async def hierarchy_for(self, request: web.Request) -> Any:
        """The leader's hierarchy as the caller may see it: a user sees every group manager and
        local controller, and of the VMs only their own."""
        h = await self.b.leader_call(Hierarchy.KIND)
        principal = principal_of(request)
        if principal.admin or not isinstance(h, dict):
            return h
        try:
            records = await self.store.get_vms(sorted(await self.store.vm_ids()))
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc
        owned = {vm_id for vm_id, rec in records.items() if _may_see(principal, rec)}
        for gm in h.get("groupManagerDescriptions", []):
            for lc in gm.get("localControllers", []) if isinstance(gm, dict) else []:
                vms = lc.get("virtualMachineMetaData") if isinstance(lc, dict) else None
                if isinstance(vms, dict):
                    lc["virtualMachineMetaData"] = {k: v for k, v in vms.items() if k in owned}
        return h

    async def get_group_manager_descriptions(self, request: web.Request) -> Any:
        """GroupManagerDescriptions: a JSON array, as the original's (``?v=2``: the paged object)."""
        q = await self._page(request)
        h = await self.hierarchy_for(request)
        gms = sorted(h.get("groupManagerDescriptions", []), key=lambda gm: str(gm.get("id")))
        if q.group_manager is not None:
            gms = [gm for gm in gms if gm.get("id") == q.group_manager]
        return q.answer("groupManagers", q.page(gms), len(gms), wrap=False)

    async def get_local_controller_descriptions(self, request: web.Request) -> Any:
        """LocalControllerDescriptions: a JSON array, as the original's (``?v=2``: the paged object)."""
        q = await self._page(request)
        h = await self.hierarchy_for(request)
        lcs = [lc for gm in h.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", [])
               if q.group_manager is None or gm.get("id") == q.group_manager]
        if q.local_controller is not None:
            lcs = [lc for lc in lcs if lc.get("id") == q.local_controller]
        lcs.sort(key=lambda lc: str(lc["id"]))
        return q.answer("localControllers", q.page(lcs), len(lcs), wrap=False)



# -- the OpenAPI document's declarations of these verbs (snooze.openapi) ----------------------
def _describe(app: web.Application) -> None:
    vm_id = id_body("virtualMachineId", "The VM's id")
    blank = string(maxLength=0)
    start = any_of(integer(minimum=0, maximum=MAX_START), ID, blank)
    listing = (
        Param("start", "query", start, "A whole number: the offset of the first entry; an id: the first entry's (the original's)"),
        Param("limit", "query", integer(minimum=1, maximum=MAX_PAGE), "Entries per page (default 100)"),
        Param("groupManagerId", "query", any_of(ID, blank), "Only this group manager's"),
        Param("localControllerId", "query", any_of(ID, blank), "Only this local controller's"),
        Param("numberOfMonitoringEntries", "query", {}, "The original's; ignored"),
        Param("v", "query", string(enum=["1", "2"]), "2: a paged object {KEY, start, limit, total} instead of the original's shape"),
    )
    host_list = Body(obj({
        "start": any_of(start, {"type": "null"}),
        "limit": any_of(integer(minimum=1, maximum=MAX_PAGE), string(pattern=r"^\s*[0-9]{1,6}\s*$")),
        "groupManagerId": nullable(any_of(ID, blank)), "localControllerId": nullable(any_of(ID, blank)),
        "numberOfMonitoringEntries": {}, "v": any_of(integer(enum=[1, 2]), string(enum=["1", "2"]), {"type": "null"}),
    }), description="The original's HostListRequest")

    def paged(name: str, item: dict[str, Any], original: dict[str, Any]) -> dict[int, tuple[Body, ...]]:
        v2 = obj({name: array(item), "start": integer(minimum=0), "limit": integer(minimum=1), "total": integer(minimum=0)},
                 required=(name, "start", "limit", "total"))
        return ok(any_of(original, v2), "The original's shape; with v=2 the paged object")

    def listed(summary: str, answers: dict[int, tuple[Body, ...]]) -> dict[str, Operation]:
        return {"GET": Operation(summary, answers=answers, errors=(503,), params=listing),
                "POST": Operation(summary, "The body is the original's HostListRequest (may be empty); "
                                  "`?v=2` asks for the paged object.", answers=answers, errors=(503,),
                                  request=(host_list,), request_required=False, params=listing[-1:])}

    vms = ref("VirtualMachineMetaData")
    describe_verb(app, "bootstrap", "getVirtualMachineDescriptions", listed(
        "The VMs (a user's token: that user's only)",
        paged("virtualMachines", vms, obj({"virtualMachines": array(vms)}, required=("virtualMachines",)))))
    gms = ref("GroupManagerDescription")
    describe_verb(app, "bootstrap", "getGroupManagerDescriptions", listed(
        "The group managers, sorted by id", paged("groupManagers", gms, array(gms))))
    lcs = ref("LocalControllerDescription")
    describe_verb(app, "bootstrap", "getLocalControllerDescriptions", listed(
        "The local controllers, sorted by id", paged("localControllers", lcs, array(lcs))))
    describe_verb(app, "bootstrap", "startVirtualCluster", Operation(
        "Submit a virtual cluster; answers its task id",
        "Checked whole before anything is allocated: a bad template is a 400 naming its field "
        "(`virtualMachineTemplates[2].memory`). Idempotent by `requestId`.",
        request=(Body(ref("VirtualClusterSubmission")),),
        answers={200: (Body(string(minLength=1), TEXT, "The task id, bare (the seed's curl prints it)"),)},
        errors=(404, 409, 503)))
    describe_verb(app, "bootstrap", "getVirtualClusterResponse", Operation(
        "The response of a submitted virtual cluster (the body: its task id)",
        request=id_body("taskId", "The task id"),
        answers={200: (Body(ref("VirtualClusterResponse"), description="The response; an empty text/plain body while it "
                            "is being placed"), Body(string(maxLength=0), TEXT))},
        errors=(404, 503)))
    describe_verb(app, "bootstrap", "getVirtualMachineMetaData", {
        "GET": Operation("A VM's metadata, its live state from its host", answers=ok(vms), errors=(404, 503),
                         params=(Param("id", "query", any_of(ID, blank), "The VM's id (or as virtualMachineId)"),
                                 Param("virtualMachineId", "query", any_of(ID, blank)))),
        "POST": Operation("A VM's metadata, its live state from its host (the body: its id)", answers=ok(vms),
                          errors=(404, 503), request=vm_id),
    })
    describe_verb(app, "bootstrap", "migrateVirtualMachine", Operation(
        "Migrate a VM to another local controller",
        request=(Body(obj({"virtualMachineId": ID, "localControllerId": ID},
                          required=("virtualMachineId", "localControllerId"))),),
        answers=ok(boolean()), errors=(404, 409, 503)))
    describe_verb(app, "bootstrap", "resizeVirtualMachine", Operation(
        "Change a VM's capacity; answers its new metadata",
        "The original's ResizeRequest: `resizedCapacity` is `[cpu, memory KiB, rx, tx]`, -1 keeps one.",
        request=(Body(obj({"virtualMachineLocation": obj({"virtualMachineId": ID}, required=("virtualMachineId",)),
                           "resizedCapacity": array(number(minimum=-1), minItems=4, maxItems=4)},
                          required=("virtualMachineLocation", "resizedCapacity"))),),
        answers=ok(vms), errors=(404, 409, 503)))
    describe_verb(app, "bootstrap", "startReconfiguration", Operation(
        "Run one group manager's consolidation now (the body: its id)",
        "Answers false when a reconfiguration was already under way.",
        request=id_body("groupManagerId", "The group manager's id"), answers=ok(boolean()), errors=(404, 409, 503)))
    for verb, action in ACTIONS.items():
        describe_verb(app, "bootstrap", verb, Operation(
            f"{action.capitalize()} a VM (the body: its id)", "Answers whether its host carried the order out.",
            request=vm_id, answers=ok(boolean()), errors=(404, 409, 503)))
