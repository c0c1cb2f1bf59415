"""Virtual-cluster submissions on the group leader: accept, persist, dispatch, answer, resume.

``submit`` validates the whole request first (a 400 naming the field, nothing allocated), then
allocates addresses and records the task, the VM records and their specs in ZooKeeper wholly or
not at all (one fenced transaction when it fits, else an intent record first: see
``snooze/coordination/store.py``), and answers the task id at once. Dispatching runs in the
background: the placement package chooses a group manager per VM from their summaries, each
group manager places its batch on its local controllers, and the outcome of every VM is written
back.

A client's retry is never refused as a duplicate of itself: a submission may carry a
``requestId`` (an idempotency key, a valid id); a retry with the same key and the same
templates answers the task already recorded (the same key with other templates is a 409
REQUEST_ID_REUSED). Without a key, a submission whose VM names all belong to one task recorded
from identical templates (and no key) is taken as a retry of that task too.

A VM is marked DISPATCHED (with its group manager) before the order leaves, so a leader elected
after a crash knows which VMs may already be starting: it waits a grace period, asks every local
controller which domains it runs, adopts those, and dispatches only the rest. No VM is started
twice and none is lost. Submissions a leader died while recording (RECORDING tasks) are settled
by the next leader, by the client's retry, or by the periodic sweep, which also forgets finished
tasks and failed VM records after ``[groupmanager] task_retention``.

A submission's dispatch is a task of the leader role's scope, not of the process: should it
fail on something no code path expected (a bug, a record in a shape this version cannot read),
its VMs not yet started become ERROR with the reason (``DISPATCH_FAILED``) and the task is
answered, but the leader goes on. A VM record that cannot be read at all (not JSON, not an
object, no status: what an older version may have left; ``snooze.records``) is reported ERROR
(``VIRTUAL_MACHINE_RECORD_UNREADABLE``) and the rest of its submission proceeds, so no record
can take one leader after another down.

VM records are ``VMRecord``s, changed through their methods and written version-checked
(``Store.update_vms``): a group manager changing a record meanwhile (a migration, a host that
lost its VMs) is never overwritten. A VM a group manager refused with a temporary code
(``ErrorCode.retryable``: no capacity there, its host left, the group manager unreachable) is
offered to another group manager.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from groupmanager.leader.members import GroupManagers
from groupmanager.placement import HostView, VMRequest, make_placement_policy
from groupmanager.thresholds import thresholds_from
from snooze.codes import STARTED, ErrorCode, TaskState, VMStatus
from snooze.coordination import CoordinationError
from snooze.coordination.store import (
    DEFAULT_SUBNET,
    AlreadyExists,
    Changed,
    Op,
    StaleEpoch,
    Store,
    TooLarge,
)
from snooze.domainxml import DomainPolicy
from snooze.events import EventKind
from snooze.http import ApiError
from snooze.ids import InvalidId, check_id
from snooze.models import ZERO, Capacity, NetworkAddress, add
from snooze.network.ipam import Ipam, mac_for_address
from snooze.network.model import Guest
from snooze.network.store import NetworkStore
from snooze.network.vms import Reservations, ensure_default, guest_ops, place_guest, plan_network
from snooze.protocol.messages import DescribeLocalController, StartVirtualMachines
from snooze.records import RecordError, VMRecord
from snooze.rpc import RpcError, api_error
from snooze.scope import Scope
from snooze.virtualcluster import InvalidSubmission, VMSpec, parse_submission, set_mac

log = logging.getLogger(__name__)

__all__ = ["Submissions", "fingerprint", "sweep_interval"]


def _vec(values: Any) -> Capacity:
    v = list(values or ZERO) + [0.0] * 4
    return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))


def fingerprint(templates: Any) -> str:
    """What makes two submissions the same request: the client's templates, as sent (parsing
    is not deterministic: a generated domain gets a fresh uuid)."""
    canonical = json.dumps(templates, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Plans of a submission's addresses before a conflict is answered CONFLICT (retry).
ALLOCATION_ATTEMPTS = 6


def sweep_interval(retention: float) -> float:
    """Seconds between retention sweeps: a tenth of the retention, between 1 s and 60 s."""
    return max(1.0, min(60.0, retention / 10))


def _address(value: Any) -> NetworkAddress | None:
    """An address from a peer's answer (None if it has none, or not one)."""
    try:
        return NetworkAddress.from_json(value) if isinstance(value, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


#: Refusals that say a group manager had no room: a VM no other could take either lacks capacity.
CAPACITY_REFUSALS = (ErrorCode.NOT_ENOUGH_CAPACITY, ErrorCode.NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY)


def _task_id(entry: VMRecord | RecordError) -> str | None:
    """The task a record names, readable or not (an unreadable one may still say)."""
    if isinstance(entry, VMRecord):
        return entry.task_id
    task = entry.raw.get("taskId") if isinstance(entry.raw, dict) else None
    return task if isinstance(task, str) else None


class Submissions:
    """The submissions of one group leader, working through its role ``scope``: the group
    managers it knows (``members``) and its ``epoch``, which fences every write."""

    def __init__(self, scope: Scope, members: GroupManagers, epoch: int) -> None:
        self.scope = scope
        self.members = members
        self.epoch = epoch
        coord = scope.coord
        assert coord is not None
        settings = scope.settings.groupmanager
        limit = max(4096, int(settings.transaction_bytes))
        self.store = Store(coord, single_tx_bytes=limit, chunk_bytes=limit // 2)
        self.subnet = settings.virtual_machine_subnet
        # The network model (issue 12): the default network is ``virtual_machine_subnet``;
        # addresses come from the subnets' pools (one allocator, used under ``_alloc``).
        self.network = NetworkStore(coord.client, coord.root)
        self.ipam = Ipam(coord.client, coord.root)
        self._network_ready = False
        self.retention = max(1.0, float(settings.task_retention))
        self.policy = make_placement_policy(settings.dispatch_policy, thresholds=thresholds_from(settings))
        self.domain_policy = DomainPolicy.from_settings(scope.settings.templates)
        self.reserved: dict[str, dict[str, Capacity]] = defaultdict(dict)
        # Held while recording, settling or sweeping: none of them sees another half done.
        self._alloc = asyncio.Lock()
        self._dispatching: set[str] = set()
        self._resumable = False  # the failover grace is over: PENDING tasks may be dispatched

    def _require_agreement(self) -> None:
        coord = self.scope.coord
        if coord is None or not coord.connected or self.scope.closed:
            raise ApiError(ErrorCode.LEADER_SUSPENDED, "the group leader cannot reach ZooKeeper; retry")

    # -- submit --------------------------------------------------------------------------
    async def submit(self, body: Any) -> str:
        t0 = time.monotonic()
        try:
            specs = parse_submission(body, self.domain_policy)
        except InvalidSubmission as exc:
            raise ApiError(ErrorCode.INVALID_TEMPLATE, str(exc), field=exc.field) from exc
        request_id = body.get("requestId")
        if request_id is not None:
            try:
                request_id = check_id(request_id, "requestId")
            except InvalidId as exc:
                raise ApiError(ErrorCode.INVALID_REQUEST_ID, str(exc), field=exc.field) from exc
        owner = body.get("owner")  # set by the bootstrap from the caller's token (snooze.auth)
        if owner is not None:
            try:
                owner = check_id(owner, "owner")
            except InvalidId as exc:
                raise ApiError(ErrorCode.INVALID_TEMPLATE, str(exc), field=exc.field) from exc
        try:
            signature = fingerprint(body["virtualMachineTemplates"])
        except (RecursionError, TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.INVALID_TEMPLATE, f"virtualMachineTemplates cannot be read back: {exc}",
                           field="virtualMachineTemplates") from exc
        self._require_agreement()
        t_parsed = time.monotonic()
        async with self._alloc:
            t_locked = time.monotonic()
            try:
                known = await self._known_submission(specs, request_id, signature, owner)
                if known is not None:
                    log.info("virtual cluster %s submitted again: answering the same task", known)
                    return known
                await self._free_names(specs)
            except CoordinationError as exc:  # StaleEpoch too: NOT_GROUP_LEADER
                raise api_error(exc) from exc
            task_id = str(uuid.uuid4())
            fresh = False
            for attempt in range(ALLOCATION_ATTEMPTS):
                t_allocate = time.monotonic()
                try:
                    records, reservations, guests = await self._allocate(specs, task_id, fresh, owner)
                except CoordinationError as exc:
                    raise api_error(exc) from exc
                t_record = time.monotonic()
                task: dict[str, Any] = {"taskId": task_id, "state": TaskState.PENDING, "vmIds": [s.id for s in specs],
                                        "requestId": request_id, "fingerprint": signature,
                                        "submittedAt": time.time(), "epoch": self.epoch, "owner": owner}
                try:
                    task = await self.store.create_submission(task, list(records.values()), [s.to_json() for s in specs],
                                                              self.subnet, self.epoch, reservations, guests)
                    reservations.succeeded()
                    break
                except TooLarge as exc:
                    raise ApiError(ErrorCode.TEMPLATE_TOO_LARGE, str(exc), field=f"virtualMachineTemplates[{exc.index}]") from exc
                except (AlreadyExists, Changed) as exc:
                    # Another writer took an address (a VM of an older leader, one reserved
                    # through the API), a chunk of a pool, or a name in between: plan afresh.
                    reservations.conflicted()
                    fresh, self._network_ready = True, False
                    if attempt == ALLOCATION_ATTEMPTS - 1:
                        raise ApiError(ErrorCode.CONFLICT, "virtual machine names or addresses were taken concurrently; retry") from exc
                except CoordinationError as exc:  # StaleEpoch too: NOT_GROUP_LEADER
                    raise api_error(exc) from exc
        self._start(task_id, self.dispatch(task, specs, records))
        t1 = time.monotonic()
        log.info("accepted virtual cluster %s with %d VMs in %.2f s (reading %.2f s, waiting for the lock %.2f s, "
                 "checks %.2f s, allocation %.2f s, recording %.2f s)", task_id, len(specs), t1 - t0, t_parsed - t0,
                 t_locked - t_parsed, t_allocate - t_locked, t_record - t_allocate, t1 - t_record)
        return task_id

    async def _settled(self, task_id: str) -> dict[str, Any] | None:
        """The task, after settling it if a leader died recording it (call with the lock held)."""
        task = await self.store.get_task(task_id)
        if task is not None and task.get("state") == TaskState.RECORDING:
            task = await self.store.settle_recording(task_id, self.epoch)
            log.info("settled the interrupted recording of %s: %s", task_id, "completed" if task else "rolled back")
            if task is not None:
                self._ensure_progress(task)
        return task

    async def _known_submission(self, specs: list[VMSpec], request_id: str | None, signature: str,
                                owner: str | None = None) -> str | None:
        """The task this request is a retry of, if any (call with the lock held)."""
        names = [s.id for s in specs]
        if request_id is not None:
            task_id = await self.store.task_for_request(request_id)
            candidates = [task_id] if task_id else []
            if task_id and await self.store.get_task(task_id) is None:
                await self.store.drop_request(request_id, task_id)  # a key left by a lost task
        else:
            existing = await self.store.get_vms(names)
            owners = {str(r.task_id) for r in existing.values()}
            candidates = sorted(owners) if len(owners) == 1 else []
            if all(r.status is VMStatus.ERROR and r.ip is None for r in existing.values()):
                # Nothing of it started and nothing is held: the same request again, without a
                # key, is a new attempt (it may fit now), not a retry to answer with old errors.
                candidates = [t for t in candidates
                              if (await self.store.get_task(t) or {}).get("state") != TaskState.DONE]
        for task_id in candidates:
            task = await self._settled(task_id)
            if task is None:
                continue
            if (task.get("requestId") == request_id and task.get("fingerprint") == signature and task.get("vmIds") == names
                    and task.get("owner") == owner):  # another user's identical request is not theirs to see
                self._ensure_progress(task)
                return task_id
            if request_id is not None:
                raise ApiError(ErrorCode.REQUEST_ID_REUSED,
                               f"requestId {request_id!r} was already used for another submission ({task_id})", field="requestId")
        return None

    async def _free_names(self, specs: list[VMSpec]) -> None:
        """Refuse names in use (409); names held by nothing (a VM that never started, a ghost of
        a submission no task will ever dispatch) are freed (call with the lock held)."""
        existing = await self.store.get_vms(s.id for s in specs)
        tasks: dict[str, dict[str, Any] | None] = {}
        for rec in existing.values():
            owner = str(rec.task_id)
            if owner not in tasks:
                tasks[owner] = await self._settled(owner)
        if tasks:
            existing = await self.store.get_vms(s.id for s in specs)  # settling may have rolled some back
        for vm_id, rec in list(existing.items()):
            its_task = tasks.get(str(rec.task_id))
            # Only once its submission is over: a task still dispatching writes its records.
            over = its_task is None or its_task.get("state") != TaskState.PENDING
            never_started = rec.status is VMStatus.ERROR and rec.ip is None and over
            ghost = rec.status is VMStatus.PENDING and its_task is None
            if never_started or ghost:
                await self.store.delete_vm(vm_id, self.subnet)
                del existing[vm_id]
        if existing:
            first = next(i for i, s in enumerate(specs) if s.id in existing)
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_EXISTS, f"a virtual machine named {specs[first].id!r} already exists",
                           field=f"virtualMachineTemplates[{first}].name")

    def _start(self, task_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a dispatch of ``task_id`` in the background, once at a time. Interrupted by
        ZooKeeper, it is left to the next leader; failing on anything else, its VMs not yet
        started are marked failed (``_fail_task``); the leader goes on either way."""
        self._dispatching.add(task_id)

        async def run() -> None:
            try:
                await coro
            except (StaleEpoch, CoordinationError) as exc:
                log.warning("dispatch of %s interrupted: %s", task_id, exc)
            finally:
                self._dispatching.discard(task_id)

        async def failed(exc: Exception) -> None:
            await self._fail_task(task_id, exc)

        if self.scope.spawn(f"dispatch-{task_id}", run(), on_error=failed) is None:
            coro.close()  # the role is over: the next leader resumes it
            self._dispatching.discard(task_id)

    def _ensure_progress(self, task: dict[str, Any]) -> None:
        """A PENDING task nobody dispatches (its leader died, or its recording was just
        completed) is resumed; during the failover grace ``resume`` will do it."""
        task_id = str(task["taskId"])
        if task.get("state") == TaskState.PENDING and self._resumable and task_id not in self._dispatching:
            self._start(task_id, self._resume_task(task))

    async def ensure_network(self) -> None:
        """The default network (``virtual_machine_subnet``) and the adoption of the addresses
        older versions allocated, once per term (again after a conflict: an older leader may
        have written some meanwhile)."""
        if self._network_ready:
            return
        coord = self.scope.coord
        assert coord is not None
        await coord.call(ensure_default, coord.client, coord.root, self.subnet, timeout=60)
        self._network_ready = True

    async def _allocate(self, specs: list[VMSpec], task_id: str,
                        fresh: bool = False, owner: str | None = None
                        ) -> tuple[dict[str, VMRecord], Reservations, dict[str, list[Op]]]:
        """Each VM's references checked, its flavor applied, its address planned in its
        subnet's pool (ops for the submission's own transaction), its record built (ERROR with
        the reason when a reference names nothing or its subnet is full), and for a VM with a
        flavor the ops creating its guest. Reads only (call with the lock held)."""
        await self.ensure_network()
        coord = self.scope.coord
        assert coord is not None
        nets, reservations = await coord.call(plan_network, self.network, self.ipam, specs, self.domain_policy,
                                              fresh=fresh, timeout=60)
        records: dict[str, VMRecord] = {}
        guests: dict[str, list[Op]] = {}
        for spec in specs:
            net = nets[spec.id]
            spec.ip = spec.mac = spec.cidr = spec.gateway = None
            subnet = net.subnet
            ip = str(net.ip) if net.ip is not None and net.refused is None else None
            if ip is not None and net.ip is not None and subnet is not None:
                spec.ip, spec.mac = ip, mac_for_address(net.ip)
                spec.subnet, spec.network = subnet.id, subnet.network
                spec.cidr = str(subnet.cidr)
                spec.gateway = str(subnet.gateway) if subnet.gateway is not None else None
                if spec.xml:
                    spec.xml = set_mac(spec.xml, spec.mac)
                if spec.flavor is not None:
                    guest = Guest(spec.id, spec.flavor, subnet.network, subnet.id, spec.fwgroup, spec.vlangroup,
                                  mac=spec.mac, ip=net.ip)
                    guests[spec.id] = guest_ops(self.network, guest)
            records[spec.id] = VMRecord.pending(
                spec.id, task_id, spec.requested, ip, spec.mac if ip else None, subnet.id if subnet else self.subnet,
                refused=net.refused, subnet_id=spec.subnet or (subnet.id if subnet else None), network=spec.network,
                flavor=spec.flavor, fwgroup=spec.fwgroup, vlangroup=spec.vlangroup, owner=owner)
        return records, reservations, guests

    # -- dispatch ------------------------------------------------------------------------
    def _gm_views(self) -> list[HostView]:
        views = []
        for rec in self.members.alive():
            s = rec.summary
            reserved = ZERO
            for c in self.reserved.get(rec.description.id, {}).values():
                reserved = add(reserved, c)
            # Sleeping hosts count as capacity: the group manager wakes them when it needs them.
            total = add(_vec(s.get("activeCapacity")), _vec(s.get("passiveCapacity")))
            views.append(HostView(rec.description.id, total, _vec(s.get("requestedCapacity")), reserved))
        return views

    async def dispatch(self, task: dict[str, Any], specs: list[VMSpec], records: dict[str, VMRecord]) -> None:
        """Place and start the task's PENDING VMs, then mark it DONE. ZooKeeper errors propagate:
        the next leader resumes the task from ZooKeeper."""
        task_id = task["taskId"]
        await self._wait_ready()
        await self._dispatch(specs, records)
        for rec in records.values():
            rec.release_address()  # the failed ones': nothing holds them
        await self.store.update_vms(records.values(), self.epoch, subnet=self.subnet)
        for rec in records.values():
            self.scope.emit(EventKind.VIRTUAL_MACHINE_STATE, virtualMachineId=rec.vm_id, status=rec.status,
                            errorCode=rec.error_code, localControllerId=rec.lc_id, groupManagerId=rec.gm_id,
                            taskId=task_id, owner=rec.owner)
        # In the log before the task shows done: a leader lost right after loses none of them
        # (the next one, resuming the task, may write them again).
        await self.scope.flush_events()
        task["state"] = TaskState.DONE
        task["finishedAt"] = time.time()
        await self.store.set_task(task, self.epoch)
        ok = sum(1 for r in records.values() if r.status.started)
        log.info("virtual cluster %s done: %d/%d VMs started", task_id, ok, len(records))

    async def _wait_ready(self) -> None:
        """Right after a failover, wait until the group managers have re-joined and report
        their local controllers (or the grace is over): placing on a half-known hierarchy
        would fail VMs for want of capacity that is only moving between group managers."""
        while not self._resumable:
            try:
                if await self._hierarchy_settled():
                    return
            except CoordinationError:
                pass
            await asyncio.sleep(0.2)

    async def _hierarchy_settled(self) -> bool:
        gms = {r.description.id: r for r in self.members.alive()}
        if not gms or not all(r.summary for r in gms.values()):
            return False
        coord = self.scope.coord
        assert coord is not None
        lcs = await coord.children_json(coord.path("localcontrollers"))
        per_gm: dict[str, int] = defaultdict(int)
        for data in lcs.values():
            per_gm[str(data.get("groupManagerId") if isinstance(data, dict) else None)] += 1
        if set(per_gm) - set(gms):
            return False  # a local controller is between group managers
        return all(int(r.summary.get("numberOfLocalControllers", -1)) == per_gm.get(gm_id, 0) for gm_id, r in gms.items())

    async def _dispatch(self, specs: list[VMSpec], records: dict[str, VMRecord]) -> None:
        pending = [s for s in specs if records[s.id].status is VMStatus.PENDING]
        excluded: dict[str, set[str]] = defaultdict(set)
        # The last retryable refusal of each VM a group manager sent back (code, message): if no
        # other can take it, the VM ends with that refusal (a plug that failed everywhere is
        # VIF_PLUG_FAILED, not a lack of capacity); a capacity refusal stays NOT_ENOUGH_CAPACITY.
        refused: dict[str, tuple[ErrorCode, str]] = {}

        def give_up(rec: VMRecord, reason: str, rejections: dict[str, Any] | None = None) -> None:
            last = refused.get(rec.vm_id)
            if last is not None and last[0] not in CAPACITY_REFUSALS:
                rec.fail(last[0], f"{last[1]}; no other group manager can host it: {reason}", rejections=rejections)
            else:
                rec.fail(ErrorCode.NOT_ENOUGH_CAPACITY, f"no group manager can host it: {reason}", rejections=rejections)

        for _round in range(4):
            if not pending:
                return
            views = self._gm_views()
            by_id = {s.id: s for s in pending}
            pins = await self._pins(pending)
            # Subnets served by some hosts only: a group manager serves one if one of its local
            # controllers does (the filter "subnet" rejects the others, each with its reason).
            restricted = await self._serving(pending)
            if restricted:
                views = [dataclasses.replace(v, subnets=frozenset(sub for sub, gms in restricted.items() if v.id in gms))
                         for v in views]
            requests = [VMRequest(s.id, s.requested, pinned_host=pins.get(s.id), excluded_hosts=frozenset(excluded[s.id]),
                                  network=s.subnet if s.subnet in restricted else None)
                        for s in pending]
            plan = self.policy.place(requests, views)
            for vm_id, rejection in plan.unplaced.items():
                give_up(records[vm_id], rejection.reason, dict(rejection.filtered))
            batches: dict[str, list[VMSpec]] = defaultdict(list)
            for p in plan.placements:
                batches[p.host_id].append(by_id[p.vm_id])
                records[p.vm_id].dispatch_to(p.host_id)
                self.reserved[p.host_id][p.vm_id] = by_id[p.vm_id].requested
            await self.store.update_vms(records.values(), self.epoch)
            replies = await asyncio.gather(*(self._send(gm_id, batch) for gm_id, batch in batches.items()))
            pending = []
            for gm_id, batch, results in zip(batches, batches.values(), replies, strict=True):
                for spec in batch:
                    self.reserved[gm_id].pop(spec.id, None)
                    res = results.get(spec.id) or {"status": VMStatus.ERROR, "errorCode": ErrorCode.NO_ANSWER}
                    rec = records[spec.id]
                    code = ErrorCode.parse(res["errorCode"]) if res.get("errorCode") else None
                    if code is not None and code.retryable:
                        # Nothing was started, and another group manager may have what this one lacked.
                        excluded[spec.id].add(gm_id)
                        rejections = res.get("rejections")
                        message = res.get("message")
                        refused[spec.id] = (code, f"{code}: {message}" if message else str(code))
                        rec.bounce(str(message) if message is not None else None,
                                   rejections if isinstance(rejections, dict) else None)
                        pending.append(spec)
                        continue
                    self._record_result(rec, gm_id, res, code)
            await self.store.update_vms(records.values(), self.epoch)
            await self._place_guests([r for r in records.values() if r.flavor and r.status.started and r.lc_id])
        for spec in pending:
            rec = records[spec.id]
            if spec.id in refused and refused[spec.id][0] not in CAPACITY_REFUSALS:
                give_up(rec, "every attempt was refused")
            else:
                rec.fail(ErrorCode.NOT_ENOUGH_CAPACITY, rec.message or "no group manager could host it")
        await self.store.update_vms(records.values(), self.epoch)

    async def _serving(self, specs: list[VMSpec]) -> dict[str, set[str]]:
        """subnet id -> the group managers whose local controllers serve it, for the subnets of
        ``specs`` that some hosts serve and others not (a subnet no host serves is served by
        all: it is not listed)."""
        coord = self.scope.coord
        assert coord is not None
        subnets = sorted({s.subnet for s in specs if s.subnet and s.subnet != DEFAULT_SUBNET})
        if not subnets:
            return {}
        serving = await coord.call(lambda: {sub: self.network.hypervisors_serving(sub) for sub in subnets})
        restricted = {sub: hvs for sub, hvs in serving.items() if hvs}
        if not restricted:
            return {}
        lcs = await coord.children_json(coord.path("localcontrollers"))
        gm_of = {lc: str(d.get("groupManagerId")) for lc, d in lcs.items() if isinstance(d, dict)}
        return {sub: {gm_of[h] for h in hvs if h in gm_of} for sub, hvs in restricted.items()}

    async def _place_guests(self, started: list[VMRecord]) -> None:
        """The guests of VMs that started now run on their local controllers (the firewall of
        each finds its guests there); best effort: a guest left unplaced is logged."""
        coord = self.scope.coord
        if not started or coord is None:
            return

        def place() -> None:
            for rec in started:
                place_guest(self.network, rec.vm_id, rec.lc_id)

        try:
            await coord.call(place, timeout=30)
        except CoordinationError as exc:
            log.warning("could not record where the guests of %s run: %s", ", ".join(r.vm_id for r in started[:10]), exc)

    def _record_result(self, rec: VMRecord, gm_id: str, res: dict[str, Any], code: ErrorCode | None) -> None:
        gm = self.members.get(gm_id)
        try:
            status = VMStatus(res.get("status", VMStatus.ERROR))
        except ValueError:
            status, code = VMStatus.ERROR, code or ErrorCode.BAD_REPLY
        adaptations = res.get("adaptations")
        message = res.get("message")
        lc_id = res.get("localControllerId")
        domain_uuid = res.get("uuid")
        rec.record_result(status, code, str(message) if message is not None else None, gm_id,
                          gm.description.address if gm else None, str(lc_id) if lc_id is not None else None,
                          _address(res.get("localControllerAddress")),
                          [str(a) for a in adaptations] if isinstance(adaptations, list) else [],
                          domain_uuid if isinstance(domain_uuid, str) and domain_uuid else None)

    async def _pins(self, specs: list[VMSpec]) -> dict[str, str]:
        """vm id -> the group manager a template's ``hostId`` binds it to: that group manager
        itself when it names one (the original let a client choose a group manager so), else the
        manager of the local controller it names (the manager then places it on that host)."""
        pins: dict[str, str] = {}
        coord = self.scope.coord
        alive = {r.description.id for r in self.members.alive()}
        for spec in specs:
            if spec.host_id is None:
                continue
            if spec.host_id in alive:
                pins[spec.id] = spec.host_id
                continue
            lc: Any = None
            if coord is not None:
                try:
                    lc = await coord.get_json(coord.path("localcontrollers", spec.host_id))
                except CoordinationError:
                    lc = None
            gm_id = lc.get("groupManagerId") if isinstance(lc, dict) else None
            # An unknown host: pinned to no group manager there is, so placement names why.
            pins[spec.id] = str(gm_id) if gm_id else spec.host_id
        return pins

    async def _send(self, gm_id: str, batch: list[VMSpec]) -> dict[str, dict[str, Any]]:
        # A template bound to this very group manager leaves it free to choose the host.
        batch = [dataclasses.replace(s, host_id=None) if s.host_id == gm_id else s for s in batch]
        rec = self.members.get(gm_id)
        if rec is None:
            return {s.id: {"status": VMStatus.ERROR, "errorCode": ErrorCode.GROUP_MANAGER_UNREACHABLE} for s in batch}
        try:
            reply = await self.scope.rpc.call(
                rec.description.address, StartVirtualMachines.KIND, StartVirtualMachines([s.to_json() for s in batch]).to_wire(),
                epoch=self.epoch, timeout=60 + len(batch) * 0.2,
            )
        except RpcError as exc:
            log.warning("group manager %s did not take its batch: %s", gm_id, exc)
            return {s.id: {"status": VMStatus.ERROR, "errorCode": ErrorCode.GROUP_MANAGER_UNREACHABLE, "message": str(exc)}
                    for s in batch}
        if isinstance(reply.get("summary"), dict):
            rec.summary = reply["summary"]
        return {r["id"]: r for r in reply.get("results", []) if isinstance(r, dict) and "id" in r}

    # -- answers -------------------------------------------------------------------------
    async def response(self, task_id: str) -> dict[str, Any] | None:
        try:
            task = await self.store.get_task(task_id)
        except CoordinationError as exc:
            raise api_error(exc) from exc
        if task is None:
            raise ApiError(ErrorCode.UNKNOWN_TASK, f"no virtual cluster submission {task_id!r}", field="taskId")
        if task.get("state") != TaskState.DONE:
            return None
        records = await self.store.read_vms(task["vmIds"])
        specs = await self.store.get_specs(task["vmIds"])
        meta = []
        for vm_id in task["vmIds"]:
            entry = records.get(vm_id)
            # A name may since belong to a VM of a later submission: answer only for this one's.
            if entry is None or _task_id(entry) != task_id:
                continue
            rec = entry if isinstance(entry, VMRecord) else VMRecord.unreadable(entry, task_id)
            meta.append(rec.metadata(specs.get(vm_id)))
        started = sum(1 for m in meta if m["status"] in STARTED)
        error = None
        if started < len(task["vmIds"]):
            error = ErrorCode.NO_VIRTUAL_MACHINE_STARTED if started == 0 else ErrorCode.SOME_VIRTUAL_MACHINES_NOT_STARTED
        return {"taskId": task_id, "errorCode": error, "virtualMachineMetaData": meta}

    # -- failover ------------------------------------------------------------------------
    async def resume(self) -> None:
        """Finish the submissions a previous leader left unfinished."""
        try:
            async with self._alloc:
                await self.ensure_network()  # the default network, at once when taking office
        except CoordinationError as exc:
            log.warning("could not create the default network yet (the first submission will): %s", exc)
        grace = self.scope.settings.heartbeat.timeout + 1.0
        await asyncio.sleep(grace)  # in-flight starts finish; group managers re-join us
        self._resumable = True
        try:
            async with self._alloc:
                tasks = await self.store.tasks()
                for task_id, task in sorted(tasks.items()):
                    if task.get("state") == TaskState.RECORDING:
                        tasks[task_id] = await self._settled(task_id) or {}
            for task_id, task in sorted(tasks.items(), key=lambda kv: kv[1].get("submittedAt") or 0):
                if task.get("state") != TaskState.PENDING or task_id in self._dispatching:
                    continue
                self._dispatching.add(task_id)
                try:
                    # Read again: a retry may have resumed and finished it meanwhile.
                    fresh = await self.store.get_task(task_id)
                    if fresh is not None and fresh.get("state") == TaskState.PENDING:
                        await self._resume_task(fresh)
                except StaleEpoch:
                    raise
                except CoordinationError as exc:
                    log.warning("could not resume virtual cluster %s: %s", task_id, exc)
                except Exception as exc:  # this task only: the others are resumed all the same
                    log.exception("resuming virtual cluster %s failed", task_id)
                    await self._fail_task(task_id, exc)
                finally:
                    self._dispatching.discard(task_id)
        except (CoordinationError, StaleEpoch) as exc:
            log.warning("could not resume submissions: %s", exc)

    async def sweep(self) -> None:
        """Settle recordings a dead leader left, and forget what outlived the retention."""
        coord = self.scope.coord
        if coord is None or not coord.connected or self.scope.closed:
            return
        try:
            async with self._alloc:
                for task_id, task in (await self.store.tasks()).items():
                    if task.get("state") == TaskState.RECORDING:  # not ours in progress: we hold the lock
                        await self._settled(task_id)
                gone = await self.store.expire(self.retention, time.time(), self.epoch, self.subnet)
        except CoordinationError as exc:  # StaleEpoch too: the next leader sweeps
            log.warning("retention sweep interrupted: %s", exc)
            return
        if gone["tasks"] or gone["vms"]:
            log.info("retention: forgot %d finished tasks and %d VM records", gone["tasks"], gone["vms"])

    async def _own_records(self, task: dict[str, Any], specs: dict[str, dict[str, Any]]) -> dict[str, VMRecord]:
        """The records of ``task``'s VMs, each usable: a record another task owns is left out,
        one that cannot be read is replaced by an ERROR record that says why (in memory: the
        caller writes it back, version-checked against the unreadable one)."""
        task_id = str(task["taskId"])
        vm_ids = [v for v in task.get("vmIds") or [] if isinstance(v, str)]
        out: dict[str, VMRecord] = {}
        for vm_id, entry in (await self.store.read_vms(vm_ids)).items():
            if _task_id(entry) not in (None, task_id):
                continue  # the name belongs to a later submission now
            if isinstance(entry, RecordError):
                log.warning("virtual cluster %s: %s; it is marked %s", task_id, entry,
                            ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE)
                out[vm_id] = VMRecord.unreadable(entry, task_id, specs.get(vm_id))
            else:
                entry.claim(task_id)  # an older version's record without a task: this one lists it
                out[vm_id] = entry
        return out

    async def _fail_task(self, task_id: str, exc: BaseException) -> None:
        """The dispatch of ``task_id`` failed on something unexpected: its VMs not yet started
        become ERROR with the reason, the addresses of those never sent anywhere go back to the
        pool, and the task is DONE (answered; no leader tries the same thing again). If
        ZooKeeper cannot take this now, the task stays PENDING for the next leader."""
        try:
            task = await self.store.get_task(task_id)
            if not isinstance(task, dict) or task.get("state") != TaskState.PENDING:
                return
            reason = f"the group leader failed dispatching it: {type(exc).__name__}: {exc}"
            records = await self._own_records(task, await self.store.get_specs(task.get("vmIds") or []))
            for rec in records.values():
                rec.abandon(ErrorCode.DISPATCH_FAILED, reason)
            await self.store.update_vms(records.values(), self.epoch, subnet=self.subnet)
            task.update(state=TaskState.DONE, finishedAt=time.time(), error=reason)
            await self.store.set_task(task, self.epoch)
            log.error("virtual cluster %s failed: %s", task_id, reason)
        except CoordinationError as err:
            log.warning("could not record the failure of virtual cluster %s (the next leader resumes it): %s",
                        task_id, err)

    async def _resume_task(self, task: dict[str, Any]) -> None:
        specs_json = await self.store.get_specs(task["vmIds"])
        records = await self._own_records(task, specs_json)
        dispatched = any(r.status is VMStatus.DISPATCHED for r in records.values())
        running = await self._running_domains() if dispatched else {}
        specs: list[VMSpec] = []
        only_pending = (VMStatus.PENDING,)
        for vm_id in task["vmIds"]:
            rec = records.get(vm_id)
            if rec is None:
                continue
            if rec.status is VMStatus.DISPATCHED:
                where = running.get(vm_id)
                if where is not None:
                    rec.adopt(where[2], where[0], where[1])
                else:
                    rec.requeue()
            if vm_id not in specs_json:
                rec.fail(ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE, "its spec is missing from ZooKeeper; it was not started",
                         only=only_pending)
                continue
            try:
                spec = VMSpec.from_json(specs_json[vm_id])
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                rec.fail(ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE,
                         f"its spec in ZooKeeper cannot be read ({type(exc).__name__}: {exc}); it was not started",
                         only=only_pending)
                continue
            specs.append(spec)
        log.info("resuming virtual cluster %s (%d VMs not yet started)", task["taskId"],
                 sum(1 for r in records.values() if r.status is VMStatus.PENDING))
        await self.store.update_vms(records.values(), self.epoch)
        await self.dispatch(task, specs, records)

    async def _running_domains(self) -> dict[str, tuple[str, NetworkAddress, VMStatus]]:
        """vm id -> (lc id, lc address, state), asked of every local controller directly."""
        coord = self.scope.coord
        assert coord is not None
        lcs = await coord.children_json(coord.path("localcontrollers"))
        out: dict[str, tuple[str, NetworkAddress, VMStatus]] = {}

        async def ask(lc_id: str, data: dict[str, Any]) -> None:
            try:
                addr = NetworkAddress.from_json(data["controlDataAddress"])
                reply = await self.scope.rpc.call(addr, DescribeLocalController.KIND, DescribeLocalController().to_wire(),
                                                  epoch=self.epoch, timeout=5)
            except (RpcError, KeyError, TypeError, ValueError):
                return
            for d in reply.get("domains", []):
                if d.get("state") in STARTED:
                    out[d["name"]] = (lc_id, addr, VMStatus(d["state"]))

        await asyncio.gather(*(ask(k, v) for k, v in lcs.items()))
        return out

