"""A group manager's virtual machines: placing batches on its local controllers, lifecycle
actions on them, and moving them between local controllers.

Placement is decided by ``groupmanager.placement`` on a snapshot of the local controllers
(requested capacity of the VMs each runs, plus what is reserved for VMs in flight); the plan
is then applied step by step, and each local controller re-checks its own capacity before it
starts a domain. A VM refused for capacity by its local controller is retried once elsewhere.

Every capacity reservation made here is released on every path out of the code that made it
(success, refusal, unreachable peer, timeout, cancellation); a reservation a peer group manager
holds for us expires on its own if we never come back to commit or release it.

Orders to a local controller name their target by the domain's libvirt UUID as well as its
name, so an order can only ever act on the domain it was meant for, never on a later VM that
reuses the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from groupmanager.manager.hosts import Hosts, LocalControllerRecord, Reservations
from groupmanager.manager.vifs import vif_for
from groupmanager.placement import HostView, PowerState, VMRequest, make_placement_policy
from snooze.codes import STARTED, ErrorCode, VMStatus
from snooze.coordination import CoordinationError
from snooze.coordination.store import DEFAULT_SUBNET
from snooze.events import EventKind
from snooze.http import ApiError
from snooze.ids import InvalidId, check_id
from snooze.migration import DEFAULT_MIGRATION_TIMEOUT, MAX_MIGRATION_TIMEOUT, order_budget
from snooze.models import ZERO, Capacity, NetworkAddress, Status
from snooze.network.store import NetworkStore
from snooze.network.vms import place_guest
from snooze.protocol import Envelope
from snooze.protocol.messages import (
    DescribeLocalController,
    LocalControllerMigrate,
    LocalControllerResize,
    LocalControllerStartVirtualMachines,
    LocalControllerVmAction,
    Migrate,
    Reservation,
    Resize,
    StartVirtualMachines,
    VmAction,
    VmInfo,
)
from snooze.records import RecordError
from snooze.rpc import RpcError, api_error
from snooze.scope import Scope
from snooze.vif.errors import NoMatchingPlugin, ObjectError

log = logging.getLogger(__name__)

ACTIONS = ("suspend", "resume", "shutdown", "reboot", "destroy")

#: The local controller's migration methods (localcontroller/hypervisor/migration.py has the
#: same tuple; roles do not import each other, a unit test keeps the two equal).
MIGRATION_METHODS = ("live", "nonshared-incremental", "nonshared-full")
MAX_CAPACITY = 1e18  # any capacity figure above this is garbage (memory is in KiB)
#: Hypervisor settings a request may choose for one migration; everything else in a
#: destination's settings (its URIs above all) comes only from its own registration.
CLIENT_MIGRATION_OPTIONS = ("method", "timeout", "autoConverge", "postCopy")

def _id(value: Any, field: str) -> str:
    try:
        return check_id(value, field)
    except InvalidId as exc:
        raise ApiError(ErrorCode.INVALID_ID, str(exc), field=exc.field) from exc


def _number(value: Any, field: str, low: float, high: float) -> float:
    # Bounds first: an int too large for a float compares fine, and NaN or infinity fail them.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, f"{field}: expected a number from {low:g} to {high:g}, got {value!r}",
                       field=field)
    return float(value)


def _vector(value: Any) -> Capacity:
    """A capacity vector already checked by ``capacity_of`` (a list of four floats), as a tuple."""
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def capacity_of(value: Any, field: str) -> Capacity:
    """A ``[cpu, memory, rx, tx]`` vector of finite, non-negative numbers, or a 400 naming ``field``."""
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
        not isinstance(x, bool) and isinstance(x, (int, float)) and 0 <= x <= MAX_CAPACITY for x in value
    ):
        raise ApiError(ErrorCode.BAD_CAPACITY, f"{field}: expected [cpu, memory, rx, tx] as 4 non-negative numbers", field=field)
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def migration_timeout(settings: dict[str, Any], field: str = "destinationHypervisorSettings") -> float:
    """The migration timeout in a destination's hypervisorSettings (checked: a 400 otherwise)."""
    mig = settings.get("migration")
    if mig is None:
        return DEFAULT_MIGRATION_TIMEOUT
    if not isinstance(mig, dict):
        raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, f"{field}.migration: expected an object", field=f"{field}.migration")
    return _number(mig.get("timeout", DEFAULT_MIGRATION_TIMEOUT), f"{field}.migration.timeout", 0.0, MAX_MIGRATION_TIMEOUT)


def client_hypervisor_settings(value: Any, registered: dict[str, Any]) -> dict[str, Any]:
    """The settings one migration uses: the destination's ``registered`` ones (from ZooKeeper),
    with the migration options a request may choose (method, timeout, autoConverge, postCopy).

    The original's MigrationRequest carries ``destinationHypervisorSettings``; a client may
    echo the destination's settings there, but never change where the migration goes: a
    ``remoteUri``, ``migrationUri``, driver, transport or port that differs from the
    registered one is refused (400 naming the field), as is any key this API does not know.
    """
    top = "destinationHypervisorSettings"
    if value is None:
        return dict(registered)
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, f"{top}: expected an object, got {type(value).__name__}", field=top)
    out = dict(registered)
    for key, given in value.items():
        where = f"{top}.{key}"
        if key == "migration":
            if given is None:
                continue
            if not isinstance(given, dict):
                raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, f"{where}: expected an object, got {type(given).__name__}",
                               field=where)
            mig = dict(registered.get("migration") or {})
            for opt, x in given.items():
                at = f"{where}.{opt}"
                if opt == "method":
                    if x not in MIGRATION_METHODS:
                        raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, f"{at}: expected one of {', '.join(MIGRATION_METHODS)}",
                                       field=at)
                elif opt == "timeout":
                    x = _number(x, at, 0.0, MAX_MIGRATION_TIMEOUT)
                elif opt in ("autoConverge", "postCopy"):
                    if not isinstance(x, bool):
                        raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, f"{at}: expected true or false", field=at)
                elif opt in mig and x == mig[opt]:
                    continue  # a registered option (bandwidth, recoveryTimeout) echoed back unchanged
                else:
                    raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS,
                                   f"{at}: unknown migration option; a request may set {', '.join(CLIENT_MIGRATION_OPTIONS)}",
                                   field=at)
                mig[opt] = x
            out["migration"] = mig
        elif not isinstance(key, str) or key.lower().endswith("uri") or (isinstance(given, str) and "://" in given):
            if key in registered and given == registered[key]:
                continue  # the registered value echoed back: harmless
            raise ApiError(ErrorCode.CLIENT_URI_REFUSED,
                           f"{where}: hypervisor URIs come only from the destination's own registration, never from a request",
                           field=where)
        elif key in registered:
            if given != registered[key]:
                raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS,
                               f"{where}: the destination registered {registered[key]!r}; a request cannot change it",
                               field=where)
        else:
            raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS,
                           f"{where}: unknown setting; a request may only set migration options "
                           f"({', '.join(CLIENT_MIGRATION_OPTIONS)})", field=where)
    return out


def _after_refusal(last: dict[str, Any], why: str) -> dict[str, Any]:
    """A VM's result when the host that refused it last (retryably) was its last chance: its
    refusal and host, with why no other host took it. A host's own capacity refusal stays the
    cluster's NOT_ENOUGH_CAPACITY; any other (unreachable, gone, busy) is that code, not a
    capacity error that would hide it."""
    code = last.get("errorCode")
    if code == ErrorCode.NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY:
        code = ErrorCode.NOT_ENOUGH_CAPACITY
    return {**last, "status": VMStatus.ERROR, "errorCode": code,
            "message": f"{last.get('message') or code} (on {last.get('localControllerId', '?')}); {why}"}


class Waker(Protocol):
    """What starting VMs needs of the energy saver: waking sleeping hosts."""

    async def wake(self, lc_ids: list[str]) -> dict[str, str | None]: ...


class RoomMaker(Protocol):
    """What starting VMs needs of the reconfiguration: making room on an active host with one
    migration instead of waking a sleeping one (``make_room_before_waking``)."""

    async def make_room(self, vm_id: str, requested: Capacity) -> str | None: ...


class VirtualMachines:
    """Placing and starting batches of VMs on this group manager's local controllers, and the
    lifecycle orders for them. Wiring: ``register()`` once its role's scope is open; the scope
    closes the handlers."""

    def __init__(self, scope: Scope, hosts: Hosts, waker: Waker,
                 summary: Callable[[], dict[str, Any]] = dict) -> None:
        self.scope = scope
        self.hosts = hosts
        self.waker = waker
        #: Set by the role once its reconfiguration exists; None: sleeping hosts are woken.
        self.room: RoomMaker | None = None
        self.summary = summary  # sent back with each batch's results, so the leader's view is fresh
        gm_settings = scope.settings.groupmanager
        self.policy = make_placement_policy(gm_settings.placement_policy, thresholds=hosts.thresholds)

    def register(self) -> None:
        self.scope.on_message(StartVirtualMachines, self._on_start, order=True)
        self.scope.on_message(VmAction, self._on_action)
        self.scope.on_message(VmInfo, self._on_info)
        self.scope.on_message(Resize, self._on_resize, order=True)

    @property
    def lcs(self) -> dict[str, LocalControllerRecord]:
        return self.hosts.lcs

    @property
    def reservations(self) -> Reservations:
        return self.hosts.reservations

    # -- capacity ------------------------------------------------------------------------
    def host_views(self, exclude: set[str] | None = None,
                   serving: dict[str, set[str]] | None = None) -> list[HostView]:
        """The local controllers as placement sees them; ``serving``: subnet -> the hosts that
        serve it, for the subnets of the VMs to place that some hosts serve and others not."""
        views = []
        for lc_id, rec in self.lcs.items():
            if exclude and lc_id in exclude:
                continue
            status = rec.description.status
            power = {Status.ACTIVE: PowerState.ACTIVE, Status.PASSIVE: PowerState.PASSIVE,
                     Status.WAKING: PowerState.WAKING}.get(status, PowerState.ACTIVE)
            subnets = frozenset(s for s, hosts in serving.items() if lc_id in hosts) if serving else None
            views.append(HostView(lc_id, rec.description.total_capacity, rec.requested(),
                                  self.hosts.reserved_on(lc_id), power, status != Status.OFFLINE, subnets=subnets))
        return views

    async def serving(self, vms: list[dict[str, Any]]) -> dict[str, set[str]]:
        """subnet id -> the local controllers that serve it, for the subnets ``vms`` name that
        some hosts serve (a subnet no host serves is served by all: not listed). ZooKeeper
        out of reach: nothing is known to restrict them (the leader checked when it placed)."""
        subnets = sorted({str(v["subnetId"]) for v in vms if isinstance(v.get("subnetId"), str)})
        coord = self.scope.coord
        if not subnets or coord is None:
            return {}
        store = NetworkStore(coord.client, coord.root)
        try:
            found = await coord.call(lambda: {s: store.hypervisors_serving(s) for s in subnets})
        except CoordinationError as exc:
            log.warning("which hosts serve %s is unknown (%s): placing as if all did", ", ".join(subnets), exc)
            return {}
        return {s: set(hosts) for s, hosts in found.items() if hosts}

    # -- which domain ----------------------------------------------------------------------
    def domain_of(self, lc_id: str, vm_id: str) -> dict[str, Any] | None:
        rec = self.lcs.get(lc_id)
        if rec is None:
            return None
        return next((d for d in rec.domains if d.get("name") == vm_id), None)

    async def refresh(self, lc_id: str) -> list[dict[str, Any]]:
        """Ask ``lc_id`` which domains its hypervisor has now; updates this group manager's view."""
        rec = self.lcs.get(lc_id)
        if rec is None:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_GONE, f"{lc_id} is not managed here", field="localControllerId")
        try:
            reply = await self.scope.rpc.call(rec.description.control_data_address, DescribeLocalController.KIND, DescribeLocalController().to_wire(),
                                              epoch=self.scope.epoch, timeout=10)
            domains = [d for d in reply["domains"] if isinstance(d, dict) and isinstance(d.get("name"), str)]
        except (RpcError, KeyError, TypeError) as exc:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_UNREACHABLE, f"{lc_id}: {exc}") from exc
        if self.lcs.get(lc_id) is rec:
            rec.domains = domains
            rec.description.assigned_virtual_machines = [d["name"] for d in domains if d.get("state") in STARTED]
        return domains

    async def uuid_for(self, lc_id: str, vm_id: str) -> str | None:
        """The libvirt UUID of the domain named ``vm_id`` on ``lc_id`` (asked afresh if this
        group manager's view does not have it), or None if that host has no such domain."""
        domain = self.domain_of(lc_id, vm_id)
        if domain is None or not domain.get("uuid"):
            domain = next((d for d in await self.refresh(lc_id) if d.get("name") == vm_id), None)
        uuid = (domain or {}).get("uuid")
        return str(uuid) if uuid else None

    # -- starting VMs --------------------------------------------------------------------
    async def _on_start(self, msg: StartVirtualMachines, _env: Envelope) -> Any:
        vms = [v for v in msg.vms if isinstance(v, dict) and v.get("id")]
        results = await self.start(vms)  # their states are events of the leader, which records them
        return {"results": results, "summary": self.summary()}

    async def start(self, vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        pending: list[dict[str, Any]] = []
        for vm in vms:
            try:
                vm["requested"] = list(capacity_of(vm.get("requested"), "requested"))
                pending.append(vm)
            except ApiError as exc:
                results[vm["id"]] = {"id": vm["id"], "status": VMStatus.ERROR, "errorCode": ErrorCode.BAD_SPECIFICATION,
                                     "message": exc.message}
        tried: dict[str, set[str]] = defaultdict(set)
        wake_failures: dict[str, str] = {}
        # The last retryable refusal of each VM by a host: what it ends with when no other host
        # can take it (not a bare NOT_ENOUGH_CAPACITY that hides an unreachable host).
        refused: dict[str, dict[str, Any]] = {}
        serving = await self.serving(pending)
        for _round in range(3):
            if not pending:
                break
            made: list[tuple[str, str]] = []
            try:
                pending = await self._start_round(pending, _round, tried, wake_failures, results, made, serving, refused)
            finally:
                # Whatever happened in the round (even an exception or a cancellation),
                # nothing it reserved outlives it.
                for lc_id, vm_id in made:
                    self.reservations.release(lc_id, vm_id)
        for vm in pending:
            if vm["id"] in refused and vm["id"] not in wake_failures:
                results.setdefault(vm["id"], _after_refusal(refused[vm["id"]], "no round left to try another host"))
                continue
            code = ErrorCode.LOCAL_CONTROLLER_WAKEUP_FAILED if vm["id"] in wake_failures else ErrorCode.NOT_ENOUGH_CAPACITY
            results.setdefault(vm["id"], {"id": vm["id"], "status": VMStatus.ERROR, "errorCode": code,
                                          "message": wake_failures.get(vm["id"], "no local controller could host it")})
        return [results[v["id"]] for v in vms if v["id"] in results]

    async def _start_round(self, pending: list[dict[str, Any]], round_: int, tried: dict[str, set[str]],
                           wake_failures: dict[str, str], results: dict[str, dict[str, Any]],
                           made: list[tuple[str, str]], serving: dict[str, set[str]] | None = None,
                           refused: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One placement round; returns the VMs to try again. Reservations go into ``made``."""
        async with self.reservations.lock:
            # Decide and reserve atomically, so two batches never count the same free capacity.
            requests = [
                VMRequest(v["id"], _vector(v["requested"]), pinned_host=v.get("hostId"),
                          affinity_group=(v.get("extra") or {}).get("affinityGroup"),
                          anti_affinity_group=(v.get("extra") or {}).get("antiAffinityGroup"),
                          excluded_hosts=frozenset(tried[v["id"]]),
                          network=v.get("subnetId") if serving and v.get("subnetId") in serving else None)
                for v in pending
            ]
            plan = self.policy.place(requests, self.host_views(serving=serving))
            by_id = {v["id"]: v for v in pending}
            batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for p in plan.placements:
                vm = by_id[p.vm_id]
                self.reservations.reserve(p.host_id, p.vm_id, _vector(vm["requested"]))
                made.append((p.host_id, p.vm_id))
                batches[p.host_id].append(vm)
            for vm_id, rejection in plan.unplaced.items():
                if vm_id in wake_failures:
                    results[vm_id] = {"id": vm_id, "status": VMStatus.ERROR, "errorCode": ErrorCode.LOCAL_CONTROLLER_WAKEUP_FAILED,
                                      "message": wake_failures[vm_id]}
                    continue
                if refused is not None and vm_id in refused:
                    results[vm_id] = {**_after_refusal(refused[vm_id], f"no other host: {rejection.reason}"),
                                      "rejections": dict(rejection.filtered)}
                    continue
                results[vm_id] = {"id": vm_id, "status": VMStatus.ERROR, "errorCode": ErrorCode.NOT_ENOUGH_CAPACITY,
                                  "message": rejection.reason, "rejections": dict(rejection.filtered)}
        again: list[dict[str, Any]] = []
        if plan.wake_up and self.room is not None:
            await self._make_room(plan.wake_up, batches, made, serving)
        if plan.wake_up:
            # Capacity is asleep: wake it (outside the lock; its reservations keep it ours).
            woken = await self.waker.wake(list(plan.wake_up))
            for lc_id, failure in woken.items():
                if failure is None:
                    continue
                for vm in batches.pop(lc_id, []):
                    self.reservations.release(lc_id, vm["id"])
                    tried[vm["id"]].add(lc_id)
                    before = wake_failures.get(vm["id"])
                    wake_failures[vm["id"]] = (before + "; " if before else "") + f"waking {lc_id} failed: {failure}"
                    again.append(vm)
        replies = await asyncio.gather(*(self._start_on(lc_id, batch) for lc_id, batch in batches.items()))
        for lc_id, batch, reply in zip(batches, batches.values(), replies, strict=True):
            for vm, res in zip(batch, reply, strict=True):
                self.reservations.release(lc_id, vm["id"])
                # Refused for a reason that leaves nothing started (its host was full, or left):
                # another host may take it.
                if res.get("errorCode") and ErrorCode.parse(res["errorCode"]).retryable and round_ < 2:
                    if refused is not None:
                        refused[vm["id"]] = res
                    tried[vm["id"]].add(lc_id)
                    again.append(vm)
                    continue
                results[vm["id"]] = res
        return again

    async def _make_room(self, wake_up: list[str], batches: dict[str, list[dict[str, Any]]],
                         made: list[tuple[str, str]], serving: dict[str, set[str]] | None) -> None:
        """Before waking hosts: move each plain VM placed on one of ``wake_up`` to an active
        host where one migration made room for it; a host left with no VM is not woken. A host
        that holds a pinned VM, one of an affinity group or one in a subnet some hosts do not
        serve is woken without trying (the shift planner knows none of these constraints, and
        moving the others would not spare the wake-up)."""
        assert self.room is not None

        def constrained(vm: dict[str, Any]) -> bool:
            extra = vm.get("extra") or {}
            return bool(vm.get("hostId") or extra.get("affinityGroup") or extra.get("antiAffinityGroup")
                        or (serving and vm.get("subnetId") in serving))

        for lc_id in list(wake_up):
            if any(constrained(vm) for vm in batches.get(lc_id, [])):
                continue  # woken anyway: no migration would spare the wake-up
            for vm in list(batches.get(lc_id, [])):
                requested = _vector(vm["requested"])
                host = await self.room.make_room(vm["id"], requested)
                if host is None:
                    break  # no shift for this one: the host is woken anyway, the rest go with it
                async with self.reservations.lock:
                    why = self.hosts.fits(host, requested)
                    if why is not None:
                        log.info("room made on %s for %s was taken meanwhile (%s); %s is woken", host, vm["id"], why, lc_id)
                        break
                    self.reservations.release(lc_id, vm["id"])
                    self.reservations.reserve(host, vm["id"], requested)
                    made.append((host, vm["id"]))
                batches[lc_id].remove(vm)
                batches[host].append(vm)
            if not batches.get(lc_id):
                batches.pop(lc_id, None)
                wake_up.remove(lc_id)
                log.info("%s is not woken: its VMs fit on active hosts after making room", lc_id)

    async def _start_on(self, lc_id: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rec = self.lcs.get(lc_id)
        if rec is None:
            return [{"id": v["id"], "status": VMStatus.ERROR, "errorCode": ErrorCode.LOCAL_CONTROLLER_GONE, "message": lc_id}
                    for v in batch]
        addr = rec.description.control_data_address
        # The subnet tells the local controller the prefix and gateway (its first address) of
        # each VM's address, for the guest's config drive: the VM's own subnet's CIDR (the
        # network model's), else the default one.
        gm = self.scope.settings.groupmanager
        subnet = gm.virtual_machine_subnet
        orders: list[dict[str, Any]] = []
        refused: dict[str, dict[str, Any]] = {}
        for v in batch:
            order = {**v, "subnet": v.get("cidr") or subnet}
            if gm.vif_plugins and rec.host_info is not None:
                # The host plugs: its VIF, with the plugin and versions chosen within its HostInfo.
                try:
                    order["vif"] = vif_for(order, lc_id, rec.host_info, gm)
                except (NoMatchingPlugin, ObjectError) as exc:
                    refused[v["id"]] = {"id": v["id"], "status": VMStatus.ERROR, "errorCode": exc.code, "message": exc.message}
                    continue
            orders.append(order)
        if refused:
            sent = await self._start_on_orders(lc_id, addr, orders) if orders else []
            by_id = {r["id"]: r for r in sent}
            return [refused.get(v["id"]) or by_id[v["id"]] for v in batch]
        return await self._start_on_orders(lc_id, addr, orders)

    async def _start_on_orders(self, lc_id: str, addr: NetworkAddress, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            reply = await self.scope.rpc.call(addr, LocalControllerStartVirtualMachines.KIND,
                                              LocalControllerStartVirtualMachines(batch).to_wire(),
                                              epoch=self.scope.epoch, timeout=30 + len(batch) * 0.2)
            results = [r if isinstance(r, dict) else {} for r in reply["results"]]
            if len(results) != len(batch):
                raise TypeError(f"{len(results)} results for {len(batch)} VMs")
        except (RpcError, KeyError, TypeError) as exc:
            return [{"id": v["id"], "status": VMStatus.ERROR, "errorCode": ErrorCode.LOCAL_CONTROLLER_UNREACHABLE,
                     "message": str(exc)} for v in batch]
        for vm, res in zip(batch, results, strict=True):
            res["id"] = vm["id"]
            res["localControllerId"] = lc_id
            res["localControllerAddress"] = addr.to_json()
            if res.get("status") in STARTED:
                # At once, not when the round's other hosts answer (``Hosts.adopt``).
                self.hosts.adopt(lc_id, vm["id"], _vector(vm["requested"]), res.get("uuid"), res["status"])
        return results

    # -- lifecycle -----------------------------------------------------------------------
    def find(self, vm_id: str, lc_id: str | None) -> str:
        """The local controller of this group manager that runs ``vm_id`` (``lc_id`` if it is
        one of them); 404 if none does."""
        if lc_id and lc_id in self.lcs:
            return lc_id
        for other, rec in self.lcs.items():
            if any(d.get("name") == vm_id for d in rec.domains):
                return other
        raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no local controller of this group manager runs {vm_id}",
                       field="virtualMachineId")

    async def _on_action(self, msg: VmAction, _env: Envelope) -> Any:
        vm_id = _id(msg.vm_id, "virtualMachineId")
        action = msg.action
        if action not in ACTIONS:
            raise ApiError(ErrorCode.UNKNOWN_ACTION, f"action must be one of {', '.join(ACTIONS)}", field="action")
        hint = msg.local_controller_id
        lc_id = self.find(vm_id, _id(hint, "localControllerId") if hint is not None else None)
        # msg.uuid: the caller's own idea of which domain it means, if it has one
        return await self.act(vm_id, lc_id, action, msg.uuid)

    async def act(self, vm_id: str, lc_id: str, action: str, expected_uuid: str | None = None) -> dict[str, Any]:
        """Order ``action`` on ``vm_id`` at ``lc_id``; a refusal is an ApiError with its reason."""
        rec = self.lcs[lc_id]
        uuid = await self.uuid_for(lc_id, vm_id)
        if uuid is None:
            if action == "destroy":
                # Already gone (destroyed behind our back, or lost with its host): forgetting it is the destroy.
                return await self._gone(lc_id, vm_id)
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"{vm_id} is not on {lc_id}", field="virtualMachineId")
        if expected_uuid is not None and expected_uuid != uuid:
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_MISMATCH,
                           f"{vm_id} on {lc_id} is domain {uuid}, not {expected_uuid}: the order was meant for another VM",
                           field="uuid")
        try:
            reply = await self.scope.rpc.call(rec.description.control_data_address, LocalControllerVmAction.KIND,
                                              LocalControllerVmAction(action, vm_id=vm_id, uuid=uuid).to_wire(),
                                              epoch=self.scope.epoch, timeout=30)
        except RpcError as exc:
            if action == "destroy" and exc.code is ErrorCode.VIRTUAL_MACHINE_NOT_FOUND:
                return await self._gone(lc_id, vm_id)
            # Its refusal or its hypervisor's failure as it named them (INVALID_STATE 409,
            # HYPERVISOR_ERROR 502 …); no answer at all: LOCAL_CONTROLLER_UNREACHABLE.
            raise api_error(exc, f"{action} {vm_id} on {lc_id}", unreachable=ErrorCode.LOCAL_CONTROLLER_UNREACHABLE,
                            failure_status=None, field="virtualMachineId") from exc
        if not isinstance(reply, dict):
            raise ApiError(ErrorCode.BAD_REPLY, f"{lc_id} answered {type(reply).__name__} to {action}")
        if not reply.get("ok"):
            raise ApiError(ErrorCode.ACTION_FAILED, f"{action} {vm_id} on {lc_id}: {reply.get('message')}",
                           field="virtualMachineId")
        if action == "destroy":
            return await self._gone(lc_id, vm_id)
        if isinstance(reply.get("domain"), dict):
            rec.domains = [d for d in rec.domains if d.get("name") != vm_id] + [reply["domain"]]
            self.scope.emit(EventKind.VIRTUAL_MACHINE_STATE, virtualMachineId=vm_id, status=reply["domain"].get("state"),
                            action=action, localControllerId=lc_id, groupManagerId=self.scope.id)
            await self.scope.flush_events()  # in the log before the caller hears of it
        return reply

    async def _on_resize(self, msg: Resize, _env: Envelope) -> Any:
        vm_id = _id(msg.vm_id, "virtualMachineId")
        hint = msg.local_controller_id
        lc_id = self.find(vm_id, _id(hint, "localControllerId") if hint is not None else None)
        return await self.resize(vm_id, lc_id, msg.capacity)

    async def resize(self, vm_id: str, lc_id: str, resized: Any) -> dict[str, Any]:
        """Give ``vm_id`` the original's ``resizedCapacity`` (``[cpu, memory KiB, rx, tx]``, -1
        keeps a dimension): checked against its host's room without its present size (under
        the placement lock, so no placement counts the same room), ordered to the host, then
        its requested capacity changed here (placement, summaries, the energy saver read it)
        and in its record."""
        rec = self.lcs[lc_id]
        old = rec.vm_requested.get(vm_id)
        if old is None:
            domain = self.domain_of(lc_id, vm_id) or {}
            old = (float(domain.get("vcpus", 0)), float(domain.get("memory", 0)), 0.0, 0.0)
        new = resized_capacity(resized, old)
        uuid = await self.uuid_for(lc_id, vm_id)
        if uuid is None:
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"{vm_id} is not on {lc_id}", field="virtualMachineId")
        async with self.reservations.lock:
            # Its host's room as if it held nothing there, then the new size must fit in it.
            rec.vm_requested[vm_id] = ZERO
            try:
                why = self.hosts.fits(lc_id, new)
            finally:
                rec.vm_requested[vm_id] = old
            if why is not None:
                raise ApiError(ErrorCode.NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY, f"cannot resize {vm_id}: {why}",
                               field="resizedCapacity")
            try:
                reply = await self.scope.rpc.call(
                    rec.description.control_data_address, LocalControllerResize.KIND,
                    LocalControllerResize(vm_id=vm_id, vcpus=int(new[0]), memory=int(new[1]), requested=list(new),
                                          uuid=uuid).to_wire(),
                    epoch=self.scope.epoch, timeout=60)
            except RpcError as exc:
                raise api_error(exc, f"resize {vm_id} on {lc_id}", unreachable=ErrorCode.LOCAL_CONTROLLER_UNREACHABLE,
                                failure_status=None, field="resizedCapacity") from exc
            state = (reply.get("domain") or {}).get("state", VMStatus.RUNNING) if isinstance(reply, dict) else VMStatus.RUNNING
            rec.add_vm(vm_id, new, state, uuid=uuid)
        store = self.scope.store
        if store is not None:
            try:
                record = await store.get_vm(vm_id)
                if record is not None:
                    record.resize(new)
                    await store.update_vms([record], None)
            except (CoordinationError, RecordError) as exc:
                log.warning("could not record the new size of %s: %s", vm_id, exc)
        return {"ok": True, "requested": list(new)}

    async def _gone(self, lc_id: str, vm_id: str) -> dict[str, Any]:
        rec = self.lcs.get(lc_id)
        if rec is not None:
            rec.remove_vm(vm_id)
        self.reservations.release_vm(vm_id)
        await self.forget(vm_id)
        self.scope.emit(EventKind.VIRTUAL_MACHINE_STATE, virtualMachineId=vm_id, status=VMStatus.DESTROYED,
                        localControllerId=lc_id, groupManagerId=self.scope.id)
        await self.scope.flush_events()  # in the log before the caller hears of it
        return {"ok": True, "domain": None}

    async def forget(self, vm_id: str) -> None:
        store = self.scope.store
        if store is None:
            return
        try:
            await store.delete_vm(vm_id, self.scope.settings.groupmanager.virtual_machine_subnet)
        except CoordinationError as exc:
            log.warning("could not forget %s in ZooKeeper: %s", vm_id, exc)

    async def _on_info(self, msg: VmInfo, _env: Envelope) -> Any:
        vm_id = _id(msg.vm_id, "virtualMachineId")
        hint = msg.local_controller_id
        lc_id = self.find(vm_id, _id(hint, "localControllerId") if hint is not None else None)
        rec = self.lcs[lc_id]
        domain = next((d for d in rec.domains if d.get("name") == vm_id), None)
        return {
            "localControllerId": lc_id,
            "localControllerAddress": rec.description.control_data_address.to_json(),
            "domain": domain,
            "usedCapacity": rec.vm_usage.get(vm_id),
            "history": [h for h in rec.history][-5:],
        }


class Domains(Protocol):
    """What moving a VM needs to know of the domains on this group manager's hosts."""

    def find(self, vm_id: str, lc_id: str | None) -> str: ...

    async def uuid_for(self, lc_id: str, vm_id: str) -> str | None: ...


class Migrations:
    """Moving a VM between local controllers, possibly of another group manager.

    The destination's capacity is reserved before anything moves (here, or by the destination's
    group manager, for at most a deadline); the source local controller then migrates; on any
    failure the reservation is released and the VM keeps running at the source. On success the
    VM's record moves. The destination's hypervisor settings come from its registration in
    ZooKeeper (or its join here), never from a client.
    """

    def __init__(self, scope: Scope, hosts: Hosts, domains: Domains) -> None:
        self.scope = scope
        self.hosts = hosts
        self.domains = domains
        self.moving: set[str] = set()  # VMs this group manager is migrating right now

    def register(self) -> None:
        self.scope.on_message(Migrate, self._on_migrate, order=True)
        self.scope.on_message(Reservation, self._on_reservation, order=True)

    @property
    def lcs(self) -> dict[str, LocalControllerRecord]:
        return self.hosts.lcs

    @property
    def reservations(self) -> Reservations:
        return self.hosts.reservations

    def fits(self, lc_id: str, requested: Capacity) -> str | None:
        """None if ``requested`` fits on ``lc_id`` now; else why not (``Hosts.fits``: the one
        capacity rule, up to the MID threshold)."""
        return self.hosts.fits(lc_id, requested)

    async def _on_reservation(self, msg: Reservation, _env: Envelope) -> Any:
        op = msg.op
        if op not in ("reserve", "commit", "release"):
            raise ApiError(ErrorCode.BAD_RESERVATION, "op must be reserve, commit or release", field="op")
        lc_id, vm_id = _id(msg.lc_id, "lcId"), _id(msg.vm_id, "vmId")
        if op == "release":
            self.reservations.release(lc_id, vm_id)
            return {"ok": True}
        requested = capacity_of(msg.requested, "requested")
        if op == "reserve":
            # Held for the asking group manager at most ``ttl`` seconds: if it dies mid-way,
            # nobody would ever release it.
            ttl = _number(3 * DEFAULT_MIGRATION_TIMEOUT + 60 if msg.ttl is None else msg.ttl, "ttl", 1.0,
                          4 * MAX_MIGRATION_TIMEOUT)
            async with self.reservations.lock:
                why = self.fits(lc_id, requested)
                if why is not None:
                    raise ApiError(ErrorCode.NOT_ENOUGH_CAPACITY, why, field="localControllerId")
                self.reservations.reserve(lc_id, vm_id, requested, ttl)
        else:
            self.hosts.adopt(lc_id, vm_id, requested, msg.uuid)
        return {"ok": True}

    def _drop(self, lc_id: str, vm_id: str) -> Capacity | None:
        rec = self.lcs.get(lc_id)
        return rec.remove_vm(vm_id) if rec is not None else None

    async def _on_migrate(self, msg: Migrate, _env: Envelope) -> Any:
        vm_id = _id(msg.vm_id, "virtualMachineId")
        source = msg.source_lc_id
        source_lc = _id(source, "sourceLcId") if source is not None else None
        dest = msg.destination
        if not isinstance(dest, dict):
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "destination must be an object", field="destination")
        dest_id = _id(dest.get("id"), "localControllerId")
        store = self.scope.store
        if store is not None:
            # The destination as it registered itself: its settings never come from the message.
            try:
                fresh = await store.destination(dest_id)
            except CoordinationError as exc:
                raise api_error(exc) from exc
            if fresh is None:
                raise ApiError(ErrorCode.LOCAL_CONTROLLER_NOT_FOUND, f"no local controller {dest_id!r}", field="localControllerId")
            dest = fresh
        return await self.migrate(vm_id, source_lc or "", dest, msg.requested, expected_uuid=msg.uuid)

    def _destination(self, dest: dict[str, Any]) -> tuple[str, NetworkAddress, dict[str, Any], NetworkAddress | None]:
        """(id, address, hypervisorSettings, its group manager's address) of a destination, checked."""
        dest_id = _id(dest.get("id"), "localControllerId")
        try:
            address = NetworkAddress.from_json(dest["address"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_UNAVAILABLE, f"{dest_id} has no usable address", field="localControllerId",
                           status=409) from exc
        settings = dest.get("hypervisorSettings") or {}
        if not isinstance(settings, dict):
            raise ApiError(ErrorCode.BAD_HYPERVISOR_SETTINGS, "hypervisorSettings must be an object", field="destinationHypervisorSettings")
        dest_gm = None
        if dest.get("groupManagerAddress"):
            try:
                dest_gm = NetworkAddress.from_json(dest["groupManagerAddress"])
            except (KeyError, TypeError, ValueError):
                dest_gm = None
        return dest_id, address, settings, dest_gm

    def _requested(self, rec: LocalControllerRecord, vm_id: str, hint: Any) -> Capacity:
        requested: Capacity | None = rec.vm_requested.get(vm_id)
        if not requested and hint is not None:
            with contextlib.suppress(ApiError):
                requested = capacity_of(hint, "requested")
        if not requested or not any(requested):
            domain: dict[str, Any] = next((d for d in rec.domains if d.get("name") == vm_id), {})
            try:
                requested = (float(domain.get("vcpus", 0)), float(domain.get("memory", 0)), 0.0, 0.0)
            except (TypeError, ValueError):
                requested = ZERO
        return requested

    async def _check_subnet(self, vm_id: str, dest_id: str) -> None:
        """A VM of a subnet that only some hosts serve moves only to one of them: its guest (and
        so its firewall rules) could not follow it elsewhere (issue 12). A record or a network
        model that cannot be read does not stop the move: the leader placed the VM on a host
        that served its subnet, and this check only guards operators' and planners' choices."""
        store, coord = self.scope.store, self.scope.coord
        if store is None or coord is None:
            return
        try:
            rec = await store.get_vm(vm_id)
        except (CoordinationError, RecordError):
            return
        if rec is None or not rec.subnet or rec.subnet == DEFAULT_SUBNET:
            return
        network = NetworkStore(coord.client, coord.root)
        try:
            served = await coord.call(network.serves, dest_id, rec.subnet)
        except CoordinationError:
            return
        if not served:
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, f"{dest_id} does not serve subnet {rec.subnet} of {vm_id}; "
                                                            "it stays where it is", field="localControllerId")

    async def migrate(self, vm_id: str, source_lc: str, dest: dict[str, Any], requested_hint: Any = None, *,
                      expected_uuid: str | None = None) -> dict[str, Any]:
        """Live-migrate ``vm_id`` from ``source_lc`` to ``dest``; its start and its end (finished,
        or failed with the code) are events of the cluster's stream."""
        where = {"virtualMachineId": vm_id, "fromLocalControllerId": source_lc,
                 "toLocalControllerId": str(dest.get("id")) if isinstance(dest, dict) else None, "groupManagerId": self.scope.id}
        self.scope.emit(EventKind.MIGRATION_STARTED, **where)
        began = time.monotonic()
        try:
            result = await self._migrate(vm_id, source_lc, dest, requested_hint, expected_uuid=expected_uuid)
        except ApiError as exc:
            self.scope.emit(EventKind.MIGRATION_FAILED, **where, errorCode=exc.code, message=exc.message)
            await self.scope.flush_events()
            raise
        self.scope.emit(EventKind.MIGRATION_FINISHED, **where, seconds=round(time.monotonic() - began, 3))
        await self.scope.flush_events()  # in the log before the caller hears of it
        return result

    async def _migrate(self, vm_id: str, source_lc: str, dest: dict[str, Any], requested_hint: Any = None, *,
                       expected_uuid: str | None = None) -> dict[str, Any]:
        # Everything that can refuse the request is checked before anything is reserved.
        dest_id, dest_addr, settings, dest_gm = self._destination(dest)
        timeout = migration_timeout(settings)
        source_lc = self.domains.find(vm_id, source_lc)
        rec = self.lcs[source_lc]
        if dest_id == source_lc:
            resumed = await self._resume_stuck(vm_id, dest_id, dest_addr, settings, timeout)
            if resumed is not None:
                return resumed
            raise ApiError(ErrorCode.SAME_LOCAL_CONTROLLER, f"{vm_id} already runs on {dest_id}", field="localControllerId")
        if vm_id in self.moving:
            raise ApiError(ErrorCode.MIGRATION_IN_PROGRESS, f"{vm_id} is already being migrated", field="virtualMachineId")
        await self._check_subnet(vm_id, dest_id)
        local = dest_id in self.lcs
        if not local and dest_gm is None:
            raise ApiError(ErrorCode.LOCAL_CONTROLLER_UNAVAILABLE, f"{dest_id} has no group manager right now", field="localControllerId",
                           status=409)
        self.moving.add(vm_id)
        try:
            uuid = await self.domains.uuid_for(source_lc, vm_id)
            if uuid is None:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"{vm_id} is not on {source_lc}", field="virtualMachineId")
            if expected_uuid is not None and expected_uuid != uuid:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_MISMATCH,
                               f"{vm_id} on {source_lc} is domain {uuid}, not {expected_uuid}", field="uuid")
            requested = self._requested(rec, vm_id, requested_hint)
            budget = order_budget(settings, requested[1], timeout)
            reservation = Reservation("reserve", lc_id=dest_id, vm_id=vm_id, requested=list(requested), uuid=uuid)
            await self._reserve(local, dest_gm, reservation, budget)
            settled = False
            try:
                try:
                    reply = await self._order(source_lc, vm_id, uuid, dest_id, dest_addr, settings, budget)
                except ApiError as exc:
                    if exc.code is ErrorCode.MIGRATION_NEEDS_RECOVERY:
                        # Paused at both hosts, its running state at the destination, where it
                        # will end: counted and recorded there, reservation kept as its place.
                        settled = await self._settle_at(local, dest_gm, source_lc, reservation, requested)
                        if local:
                            exc = ApiError(exc.code, f"{exc.message} Or, once that works again, migrate {vm_id} to "
                                                     f"{dest_id} again (migrateVirtualMachine): the source resumes it.",
                                           field="virtualMachineId", status=exc.status)
                        await self._record_stuck(vm_id, uuid, dest_id, dest, local, source_lc, exc)
                        raise exc from None
                    if exc.code is ErrorCode.MIGRATION_GUEST_LOST:
                        # Only the stale copy paused at the source remains, and holds its memory
                        # there until an operator destroys it; the reservation goes.
                        await self._record_stuck(vm_id, uuid, dest_id, None, local, source_lc, exc)
                    raise
                self._drop(source_lc, vm_id)
                if local:
                    self.hosts.adopt(dest_id, vm_id, requested, uuid)
                else:
                    assert dest_gm is not None
                    settled = True  # from here the destination holds the VM itself
                    with contextlib.suppress(RpcError):
                        await self.scope.rpc.call(dest_gm, Reservation.KIND,
                                                  dataclasses.replace(reservation, op="commit").to_wire(),
                                                  epoch=self.scope.epoch, timeout=10)
                settled = True
            finally:
                if not settled:
                    await asyncio.shield(self._release(local, dest_gm, reservation))
            details = {k: v for k, v in reply.items() if k != "ok"}
            await self._move_record(vm_id, uuid, dest, local, {"from": source_lc, "to": dest_id, **details})
            return {"ok": True, **details}
        finally:
            # Only once its record names the destination: until then the VM is in flight.
            self.moving.discard(vm_id)

    async def _reserve(self, local: bool, dest_gm: NetworkAddress | None, reservation: Reservation, budget: float) -> None:
        dest_id, vm_id = reservation.lc_id or "", reservation.vm_id or ""
        requested = _vector(reservation.requested)
        if local:
            async with self.reservations.lock:
                why = self.fits(dest_id, requested)
                if why is not None:
                    raise ApiError(ErrorCode.NOT_ENOUGH_CAPACITY, why, field="localControllerId")
                self.reservations.reserve(dest_id, vm_id, requested)
            return
        assert dest_gm is not None
        try:
            await self.scope.rpc.call(dest_gm, Reservation.KIND,
                                      dataclasses.replace(reservation, ttl=budget + 60).to_wire(),
                                      epoch=self.scope.epoch, timeout=10)
        except RpcError as exc:
            if exc.code is ErrorCode.TIMEOUT:
                # It may have been made after all: release it (it would expire anyway).
                await asyncio.shield(self._release(False, dest_gm, reservation))
            raise api_error(exc, field="localControllerId") from exc

    async def _order(self, source_lc: str, vm_id: str, uuid: str, dest_id: str, dest_addr: NetworkAddress,
                     settings: dict[str, Any], budget: float) -> dict[str, Any]:
        """Order the source to migrate (waiting ``budget`` seconds, ``order_budget``); its reply
        if the VM moved, else an ApiError saying why."""
        source_addr = self.lcs[source_lc].description.control_data_address
        try:
            reply = await self.scope.rpc.call(
                source_addr, LocalControllerMigrate.KIND,
                LocalControllerMigrate(
                    vm_id=vm_id, uuid=uuid,
                    destination={"id": dest_id, "address": dest_addr.to_json(), "hypervisorSettings": settings},
                ).to_wire(),
                epoch=self.scope.epoch, timeout=budget,
            )
        except RpcError as exc:
            if exc.code is ErrorCode.TIMEOUT:
                return await self._after_timeout(source_lc, source_addr, vm_id, uuid, dest_id, dest_addr, exc)
            if exc.code in (ErrorCode.MIGRATION_NEEDS_RECOVERY, ErrorCode.MIGRATION_GUEST_LOST):
                # Not "stays on the source": its message says where it is and what to do.
                raise api_error(exc, f"{vm_id} from {source_lc} to {dest_id}") from exc
            # A migration the source could not carry out is a 409 whatever failed (the VM stays
            # where it was); no answer at all: LOCAL_CONTROLLER_UNREACHABLE.
            raise api_error(exc, f"{vm_id} stays on {source_lc}", unreachable=ErrorCode.LOCAL_CONTROLLER_UNREACHABLE,
                            failure_status=409) from exc
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise ApiError(ErrorCode.MIGRATION_FAILED, f"{vm_id} stays on {source_lc}: it answered {reply!r}")
        return reply

    async def _after_timeout(self, source_lc: str, source_addr: NetworkAddress, vm_id: str, uuid: str, dest_id: str,
                             dest_addr: NetworkAddress, exc: RpcError) -> dict[str, Any]:
        """The source did not answer in time: find out where the domain is before deciding."""
        for where, addr in ((source_lc, source_addr), (dest_id, dest_addr)):
            try:
                reply = await self.scope.rpc.call(addr, DescribeLocalController.KIND, DescribeLocalController().to_wire(), epoch=self.scope.epoch, timeout=5)
                present = any(isinstance(d, dict) and d.get("uuid") == uuid for d in reply.get("domains") or [])
            except (RpcError, AttributeError, TypeError):
                continue
            if present and where == dest_id:
                log.warning("migration of %s timed out but the domain runs at %s: taken as done", vm_id, dest_id)
                return {"ok": True, "timedOut": True}
            if present:
                raise ApiError(ErrorCode.MIGRATION_TIMEOUT, f"{vm_id} stays on {source_lc}: {exc.message}") from exc
        raise ApiError(ErrorCode.MIGRATION_TIMEOUT,
                       f"{exc.message}; {vm_id} was found on neither {source_lc} nor {dest_id}: monitoring will show where it is") from exc

    async def _resume_stuck(self, vm_id: str, dest_id: str, dest_addr: NetworkAddress, settings: dict[str, Any],
                            timeout: float) -> dict[str, Any] | None:
        """Migrating a VM stuck in post-copy (``MIGRATION_NEEDS_RECOVERY``) to the destination
        it is recorded on resumes that migration: its source (one of this group manager's local
        controllers) is ordered again, and resumes it instead of starting anew. None when the
        VM is not stuck on its way to ``dest_id``."""
        store = self.scope.store
        if store is None:
            return None
        try:
            record = await store.get_vm(vm_id)
        except (CoordinationError, RecordError):
            return None
        last = (record.last_migration or {}) if record is not None else {}
        if record is None or record.error_code is not ErrorCode.MIGRATION_NEEDS_RECOVERY or last.get("to") != dest_id:
            return None
        origin = last.get("from")
        if not isinstance(origin, str) or origin not in self.lcs:
            raise ApiError(ErrorCode.MIGRATION_NEEDS_RECOVERY,
                           f"{vm_id} is stuck in post-copy from {origin} to {dest_id}, and {origin} is not a local "
                           f"controller of this group manager: resume it as its message says", field="virtualMachineId")
        if vm_id in self.moving:
            raise ApiError(ErrorCode.MIGRATION_IN_PROGRESS, f"{vm_id} is already being migrated", field="virtualMachineId")
        self.moving.add(vm_id)
        try:
            uuid = record.uuid or await self.domains.uuid_for(origin, vm_id)
            if uuid is None:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"{vm_id} is not on {origin} any more",
                               field="virtualMachineId")
            log.info("resuming the post-copy migration of %s from %s to %s", vm_id, origin, dest_id)
            try:
                memory = (record.requested or ZERO)[1]
                reply = await self._order(origin, vm_id, uuid, dest_id, dest_addr, settings,
                                          order_budget(settings, memory, timeout))
            except ApiError as exc:
                if exc.code in (ErrorCode.MIGRATION_NEEDS_RECOVERY, ErrorCode.MIGRATION_GUEST_LOST):
                    await self._record_stuck(vm_id, uuid, dest_id, None, True, origin, exc)
                raise
            self._drop(origin, vm_id)
            dest_rec = self.lcs.get(dest_id)
            if dest_rec is not None:
                requested = dest_rec.vm_requested.get(vm_id) or record.requested or ZERO
                dest_rec.add_vm(vm_id, requested, VMStatus.RUNNING, uuid=uuid)
            details = {k: v for k, v in reply.items() if k != "ok"}
            await self._move_record(vm_id, uuid, {"id": dest_id, "address": dest_addr.to_json()}, True,
                                    {"from": origin, "to": dest_id, **details})
            return {"ok": True, **details}
        finally:
            self.moving.discard(vm_id)

    async def _settle_at(self, local: bool, dest_gm: NetworkAddress | None, source_lc: str, reservation: Reservation,
                         requested: Capacity) -> bool:
        """Count a VM stuck in post-copy on its destination (where it will end), no longer on
        its source; True once the destination holds it (its reservation turned into it)."""
        dest_id, vm_id = reservation.lc_id or "", reservation.vm_id or ""
        self._drop(source_lc, vm_id)
        if local:
            self.hosts.adopt(dest_id, vm_id, requested, reservation.uuid, VMStatus.PAUSED)
            return True
        assert dest_gm is not None
        try:
            await self.scope.rpc.call(dest_gm, Reservation.KIND, dataclasses.replace(reservation, op="commit").to_wire(),
                                      epoch=self.scope.epoch, timeout=10)
        except RpcError as exc:
            # Left as a reservation: it expires on its own, after which the destination's own
            # listing of the domain counts it.
            log.warning("could not hand %s (stuck in post-copy) to %s's group manager: %s", vm_id, dest_id, exc)
        return True

    async def _record_stuck(self, vm_id: str, uuid: str, dest_id: str, dest: dict[str, Any] | None, local: bool,
                            source_lc: str, exc: ApiError) -> None:
        """Record a VM whose migration from ``source_lc`` to ``dest_id`` failed in post-copy:
        PAUSED, with the code and what an operator must do; moved to its destination when
        ``dest`` (its description) is given, since it will end there."""
        log.error("migration of %s from %s failed in post-copy: %s: %s", vm_id, source_lc, exc.code, exc.message)
        store = self.scope.store
        if store is None:
            return
        details = {"from": source_lc, "to": dest_id, "postCopyFailed": True,
                   "guestLost": exc.code is ErrorCode.MIGRATION_GUEST_LOST}
        try:
            rec = await store.get_vm(vm_id)
            if rec is None:
                return
            if dest is not None:
                gm_id: str | None
                gm_address: NetworkAddress | None
                if local:
                    gm_id, gm_address = self.scope.id, self.scope.address
                else:
                    gm_id, gm_address = dest.get("groupManagerId"), _address(dest.get("groupManagerAddress"))
                rec.move(dest["id"], _address(dest.get("address")), gm_id, gm_address, uuid, details)
            rec.stall(exc.code, exc.message, details)
            await store.update_vms([rec], None)
        except (CoordinationError, RecordError) as err:
            log.warning("could not record the failed post-copy migration of %s: %s", vm_id, err)

    async def _release(self, local: bool, dest_gm: NetworkAddress | None, reservation: Reservation) -> None:
        if local:
            self.reservations.release(reservation.lc_id or "", reservation.vm_id or "")
        elif dest_gm is not None:
            try:
                await self.scope.rpc.call(dest_gm, Reservation.KIND, dataclasses.replace(reservation, op="release").to_wire(),
                                          epoch=self.scope.epoch, timeout=10)
            except RpcError as exc:
                log.warning("could not release the reservation for %s on %s (it expires on its own): %s",
                            reservation.vm_id, reservation.lc_id, exc)

    async def _move_record(self, vm_id: str, uuid: str, dest: dict[str, Any], local: bool, details: dict[str, Any]) -> None:
        store = self.scope.store
        if store is None:
            return
        gm_id: str | None
        gm_address: NetworkAddress | None
        if local:
            gm_id, gm_address = self.scope.id, self.scope.address
        else:
            gm_id, gm_address = dest.get("groupManagerId"), _address(dest.get("groupManagerAddress"))
        try:
            rec = await store.get_vm(vm_id)
            if rec is None:
                return
            rec.move(dest["id"], _address(dest.get("address")), gm_id, gm_address, uuid, details)
            await store.update_vms([rec], None)
            coord = self.scope.coord
            if rec.flavor and coord is not None:
                # Its guest moves with it: the destination's firewall takes it over.
                network = NetworkStore(coord.client, coord.root)
                await coord.call(place_guest, network, vm_id, str(dest["id"]))
        except (CoordinationError, RecordError) as exc:
            log.warning("could not record the move of %s: %s", vm_id, exc)


def resized_capacity(resized: Any, old: Capacity) -> Capacity:
    """The original's ``resizedCapacity`` applied to ``old``: ``[cpu, memory KiB, rx, tx]``,
    each a number or -1 (keep); cpu and memory whole numbers >= 1; a 400 naming the element."""
    if not isinstance(resized, (list, tuple)) or len(resized) != 4:
        raise ApiError(ErrorCode.BAD_CAPACITY, "resizedCapacity must be [cpu, memory KiB, rx, tx] (-1 keeps one)",
                       field="resizedCapacity")
    out = []
    for i, (value, was) in enumerate(zip(resized, old, strict=True)):
        where = f"resizedCapacity[{i}]"
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ApiError(ErrorCode.BAD_CAPACITY, f"{where}: expected a number", field=where) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ApiError(ErrorCode.BAD_CAPACITY, f"{where}: expected a number", field=where)
        if value == -1:
            out.append(float(was))
            continue
        low = 1.0 if i < 2 else 0.0
        if not low <= value <= MAX_CAPACITY or (i < 2 and int(value) != value):
            raise ApiError(ErrorCode.BAD_CAPACITY, f"{where}: must be -1 (keep) or a {'whole ' if i < 2 else ''}number "
                                                   f">= {low:g}", field=where)
        out.append(float(value))
    return (out[0], out[1], out[2], out[3])


def _address(value: Any) -> NetworkAddress | None:
    try:
        return NetworkAddress.from_json(value) if isinstance(value, dict) else None
    except (KeyError, TypeError, ValueError):
        return None
