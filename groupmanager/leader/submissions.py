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
object, no status: what an older version may have left) is reported ERROR
(``VIRTUAL_MACHINE_RECORD_UNREADABLE``) and the rest of its submission proceeds, so no record
can take one leader after another down.
"""

from __future__ import annotations

import asyncio
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
from snooze.coordination import CoordinationError
from snooze.coordination.store import (
    DONE,
    PENDING,
    RECORDING,
    AlreadyExists,
    StaleEpoch,
    Store,
    TooLarge,
)
from snooze.domainxml import DomainPolicy
from snooze.http import ApiError
from snooze.ids import InvalidId, check_id
from snooze.models import ZERO, Capacity, NetworkAddress, add
from snooze.rpc import RpcError
from snooze.scope import Scope
from snooze.virtualcluster import (
    InvalidSubmission,
    VMSpec,
    mac_for_ip,
    parse_submission,
    set_mac,
    subnet_hosts,
    vm_metadata,
)

log = logging.getLogger(__name__)

__all__ = [
    "DISPATCHED", "DISPATCH_FAILED", "DONE", "PENDING", "RECORDING", "STARTED", "UNREADABLE_RECORD", "Submissions",
    "fingerprint", "sweep_interval",
]

DISPATCHED = "DISPATCHED"
STARTED = ("RUNNING", "PAUSED")
#: Error code of a VM whose submission's dispatch failed on something unexpected.
DISPATCH_FAILED = "DISPATCH_FAILED"
#: Error code of a VM whose record in ZooKeeper could not be read.
UNREADABLE_RECORD = "VIRTUAL_MACHINE_RECORD_UNREADABLE"


def _vec(values: Any) -> Capacity:
    v = list(values or ZERO) + [0.0] * 4
    return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))


def fingerprint(templates: Any) -> str:
    """What makes two submissions the same request: the client's templates, as sent (parsing
    is not deterministic: a generated domain gets a fresh uuid)."""
    canonical = json.dumps(templates, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sweep_interval(retention: float) -> float:
    """Seconds between retention sweeps: a tenth of the retention, between 1 s and 60 s."""
    return max(1.0, min(60.0, retention / 10))


def _unreadable(vm_id: str, rec: Any) -> str | None:
    """Why ``rec`` cannot be used as the record of ``vm_id`` (None when it can)."""
    if not isinstance(rec, dict):
        return f"not a JSON object but {type(rec).__name__}"
    if rec.get("virtualMachineId") != vm_id:
        return f"virtualMachineId is {rec.get('virtualMachineId')!r}"
    if not isinstance(rec.get("status"), str):
        return "it has no status"
    if not isinstance(rec.get("taskId"), (str, type(None))):
        return "its taskId is not text"
    return None


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
        self.addresses = subnet_hosts(self.subnet)
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
            raise ApiError(503, "LEADER_SUSPENDED", "the group leader cannot reach ZooKeeper; retry")

    # -- submit --------------------------------------------------------------------------
    async def submit(self, body: Any) -> str:
        try:
            specs = parse_submission(body, self.domain_policy)
        except InvalidSubmission as exc:
            raise ApiError(400, "INVALID_TEMPLATE", str(exc), field=exc.field) from exc
        request_id = body.get("requestId")
        if request_id is not None:
            try:
                request_id = check_id(request_id, "requestId")
            except InvalidId as exc:
                raise ApiError(400, "INVALID_REQUEST_ID", str(exc), field=exc.field) from exc
        try:
            signature = fingerprint(body["virtualMachineTemplates"])
        except (RecursionError, TypeError, ValueError) as exc:
            raise ApiError(400, "INVALID_TEMPLATE", f"virtualMachineTemplates cannot be read back: {exc}",
                           field="virtualMachineTemplates") from exc
        self._require_agreement()
        async with self._alloc:
            try:
                known = await self._known_submission(specs, request_id, signature)
                if known is not None:
                    log.info("virtual cluster %s submitted again: answering the same task", known)
                    return known
                await self._free_names(specs)
            except StaleEpoch as exc:
                raise ApiError(503, "NOT_GROUP_LEADER", "this group leader has been replaced; retry") from exc
            except CoordinationError as exc:
                raise ApiError(503, "ZOOKEEPER_UNAVAILABLE", str(exc)) from exc
            task_id = str(uuid.uuid4())
            for attempt in range(3):
                records = await self._allocate(specs, task_id)
                task: dict[str, Any] = {"taskId": task_id, "state": PENDING, "vmIds": [s.id for s in specs],
                                        "requestId": request_id, "fingerprint": signature,
                                        "submittedAt": time.time(), "epoch": self.epoch}
                try:
                    task = await self.store.create_submission(task, list(records.values()), [s.to_json() for s in specs],
                                                              self.subnet, self.epoch)
                    break
                except TooLarge as exc:
                    raise ApiError(400, "TEMPLATE_TOO_LARGE", str(exc), field=f"virtualMachineTemplates[{exc.index}]") from exc
                except AlreadyExists as exc:
                    # Another writer took an address or a name in between: look again.
                    if attempt == 2:
                        raise ApiError(409, "CONFLICT", "virtual machine names or addresses were taken concurrently; retry") from exc
                except StaleEpoch as exc:
                    raise ApiError(503, "NOT_GROUP_LEADER", "this group leader has been replaced; retry") from exc
                except CoordinationError as exc:
                    raise ApiError(503, "ZOOKEEPER_UNAVAILABLE", str(exc)) from exc
        self._start(task_id, self.dispatch(task, specs, records))
        log.info("accepted virtual cluster %s with %d VMs", task_id, len(specs))
        return task_id

    async def _settled(self, task_id: str) -> dict[str, Any] | None:
        """The task, after settling it if a leader died recording it (call with the lock held)."""
        task = await self.store.get_task(task_id)
        if task is not None and task.get("state") == RECORDING:
            task = await self.store.settle_recording(task_id, self.epoch)
            log.info("settled the interrupted recording of %s: %s", task_id, "completed" if task else "rolled back")
            if task is not None:
                self._ensure_progress(task)
        return task

    async def _known_submission(self, specs: list[VMSpec], request_id: str | None, signature: str) -> str | None:
        """The task this request is a retry of, if any (call with the lock held)."""
        names = [s.id for s in specs]
        if request_id is not None:
            task_id = await self.store.task_for_request(request_id)
            candidates = [task_id] if task_id else []
            if task_id and await self.store.get_task(task_id) is None:
                await self.store.drop_request(request_id, task_id)  # a key left by a lost task
        else:
            existing = await self.store.get_vms(names)
            owners = {str(r.get("taskId")) for r in existing.values()}
            candidates = sorted(owners) if len(owners) == 1 else []
            if all(r.get("status") == "ERROR" and r.get("ipAddress") is None for r in existing.values()):
                # Nothing of it started and nothing is held: the same request again, without a
                # key, is a new attempt (it may fit now), not a retry to answer with old errors.
                candidates = [t for t in candidates if (await self.store.get_task(t) or {}).get("state") != DONE]
        for task_id in candidates:
            task = await self._settled(task_id)
            if task is None:
                continue
            if task.get("requestId") == request_id and task.get("fingerprint") == signature and task.get("vmIds") == names:
                self._ensure_progress(task)
                return task_id
            if request_id is not None:
                raise ApiError(409, "REQUEST_ID_REUSED",
                               f"requestId {request_id!r} was already used for another submission ({task_id})", field="requestId")
        return None

    async def _free_names(self, specs: list[VMSpec]) -> None:
        """Refuse names in use (409); names held by nothing (a VM that never started, a ghost of
        a submission no task will ever dispatch) are freed (call with the lock held)."""
        existing = await self.store.get_vms(s.id for s in specs)
        tasks: dict[str, dict[str, Any] | None] = {}
        for rec in existing.values():
            owner = str(rec.get("taskId"))
            if owner not in tasks:
                tasks[owner] = await self._settled(owner)
        if tasks:
            existing = await self.store.get_vms(s.id for s in specs)  # settling may have rolled some back
        for vm_id, rec in list(existing.items()):
            its_task = tasks.get(str(rec.get("taskId")))
            # Only once its submission is over: a task still dispatching writes its records.
            over = its_task is None or its_task.get("state") != PENDING
            never_started = rec.get("status") == "ERROR" and rec.get("ipAddress") is None and over
            ghost = rec.get("status") == PENDING and its_task is None
            if never_started or ghost:
                await self.store.delete_vm(vm_id, self.subnet)
                del existing[vm_id]
        if existing:
            first = next(i for i, s in enumerate(specs) if s.id in existing)
            raise ApiError(409, "VIRTUAL_MACHINE_EXISTS", f"a virtual machine named {specs[first].id!r} already exists",
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
        if task.get("state") == PENDING and self._resumable and task_id not in self._dispatching:
            self._start(task_id, self._resume_task(task))

    async def _allocate(self, specs: list[VMSpec], task_id: str) -> dict[str, dict[str, Any]]:
        taken = await self.store.allocated_ips(self.subnet)
        free = iter(ip for ip in self.addresses if ip not in taken)
        records: dict[str, dict[str, Any]] = {}
        for spec in specs:
            ip = next(free, None)
            rec: dict[str, Any] = {
                "virtualMachineId": spec.id, "taskId": task_id, "status": PENDING, "errorCode": None,
                "requestedCapacity": list(spec.requested), "ipAddress": ip, "macAddress": None,
                "localControllerId": None, "groupManagerId": None, "submittedAt": time.time(),
            }
            if ip is None:
                rec.update(status="ERROR", errorCode="NO_FREE_IP_ADDRESS", message=f"subnet {self.subnet} is full")
            else:
                spec.ip, spec.mac = ip, mac_for_ip(ip)
                spec.xml = set_mac(spec.xml, spec.mac)
                rec["macAddress"] = spec.mac
            records[spec.id] = rec
        return records

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

    async def dispatch(self, task: dict[str, Any], specs: list[VMSpec], records: dict[str, dict[str, Any]]) -> None:
        """Place and start the task's PENDING VMs, then mark it DONE. ZooKeeper errors propagate:
        the next leader resumes the task from ZooKeeper."""
        task_id = task["taskId"]
        await self._wait_ready()
        await self._dispatch(specs, records)
        failed = [r for r in records.values() if r["status"] == "ERROR" and r.get("ipAddress")]
        if failed:
            await self.store.release_addresses(failed, self.subnet, self.epoch)
        task["state"] = DONE
        task["finishedAt"] = time.time()
        await self.store.set_task(task, self.epoch)
        ok = sum(1 for r in records.values() if r["status"] in STARTED)
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

    async def _dispatch(self, specs: list[VMSpec], records: dict[str, dict[str, Any]]) -> None:
        pending = [s for s in specs if records[s.id]["status"] == PENDING]
        excluded: dict[str, set[str]] = defaultdict(set)
        for _round in range(4):
            if not pending:
                return
            views = self._gm_views()
            by_id = {s.id: s for s in pending}
            requests = [VMRequest(s.id, s.requested, excluded_hosts=frozenset(excluded[s.id])) for s in pending]
            plan = self.policy.place(requests, views)
            changed: list[dict[str, Any]] = []
            for vm_id, rejection in plan.unplaced.items():
                rec = records[vm_id]
                rec.update(status="ERROR", errorCode="NOT_ENOUGH_CAPACITY",
                           message=f"no group manager can host it: {rejection.reason}", rejections=dict(rejection.filtered))
                changed.append(rec)
            batches: dict[str, list[VMSpec]] = defaultdict(list)
            for p in plan.placements:
                batches[p.host_id].append(by_id[p.vm_id])
                rec = records[p.vm_id]
                rec.update(status=DISPATCHED, groupManagerId=p.host_id)
                changed.append(rec)
                self.reserved[p.host_id][p.vm_id] = by_id[p.vm_id].requested
            await self.store.update_vms(changed, self.epoch)
            replies = await asyncio.gather(*(self._send(gm_id, batch) for gm_id, batch in batches.items()))
            pending = []
            done: list[dict[str, Any]] = []
            for gm_id, batch, results in zip(batches, batches.values(), replies, strict=True):
                for spec in batch:
                    self.reserved[gm_id].pop(spec.id, None)
                    res = results.get(spec.id) or {"status": "ERROR", "errorCode": "NO_ANSWER"}
                    rec = records[spec.id]
                    if res.get("errorCode") in ("NOT_ENOUGH_CAPACITY", "LOCAL_CONTROLLER_GONE", "GROUP_MANAGER_UNREACHABLE"):
                        excluded[spec.id].add(gm_id)
                        rec.update(status=PENDING, groupManagerId=None, message=res.get("message"),
                                   rejections=res.get("rejections"))
                        pending.append(spec)
                        continue
                    self._record_result(rec, gm_id, res)
                    done.append(rec)
            await self.store.update_vms(done, self.epoch)
        for spec in pending:
            rec = records[spec.id]
            rec.update(status="ERROR", errorCode="NOT_ENOUGH_CAPACITY",
                       message=rec.get("message") or "no group manager could host it")
        await self.store.update_vms([records[s.id] for s in pending], self.epoch)

    def _record_result(self, rec: dict[str, Any], gm_id: str, res: dict[str, Any]) -> None:
        gm = self.members.get(gm_id)
        rec.update(
            status=res.get("status", "ERROR"),
            errorCode=res.get("errorCode"),
            message=res.get("message"),
            groupManagerId=gm_id,
            groupManagerControlDataAddress=gm.description.address.to_json() if gm else None,
            localControllerId=res.get("localControllerId"),
            localControllerControlDataAddress=res.get("localControllerAddress"),
            adaptations=res.get("adaptations") or [],
        )

    async def _send(self, gm_id: str, batch: list[VMSpec]) -> dict[str, dict[str, Any]]:
        rec = self.members.get(gm_id)
        if rec is None:
            return {s.id: {"status": "ERROR", "errorCode": "GROUP_MANAGER_UNREACHABLE"} for s in batch}
        try:
            reply = await self.scope.rpc.call(
                rec.description.address, "gm.startVirtualMachines", {"vms": [s.to_json() for s in batch]},
                epoch=self.epoch, timeout=60 + len(batch) * 0.2,
            )
        except RpcError as exc:
            log.warning("group manager %s did not take its batch: %s", gm_id, exc)
            return {s.id: {"status": "ERROR", "errorCode": "GROUP_MANAGER_UNREACHABLE", "message": str(exc)} for s in batch}
        if isinstance(reply.get("summary"), dict):
            rec.summary = reply["summary"]
        return {r["id"]: r for r in reply.get("results", []) if isinstance(r, dict) and "id" in r}

    # -- answers -------------------------------------------------------------------------
    async def response(self, task_id: str) -> dict[str, Any] | None:
        try:
            task = await self.store.get_task(task_id)
        except CoordinationError as exc:
            raise ApiError(503, "ZOOKEEPER_UNAVAILABLE", str(exc)) from exc
        if task is None:
            raise ApiError(404, "UNKNOWN_TASK", f"no virtual cluster submission {task_id!r}", field="taskId")
        if task.get("state") != DONE:
            return None
        records = await self.store.get_vms(task["vmIds"])
        specs = await self.store.get_specs(task["vmIds"])
        meta = []
        for vm_id in task["vmIds"]:
            rec = records.get(vm_id)
            # A name may since belong to a VM of a later submission: answer only for this one's.
            if rec is None or rec.get("taskId") != task_id:
                continue
            problem = _unreadable(vm_id, rec)
            if problem is not None:
                rec = self._error_record(vm_id, task_id, rec, None, problem)
            meta.append(vm_metadata(rec, specs.get(vm_id)))
        started = sum(1 for m in meta if m["status"] in STARTED)
        error = None if started == len(task["vmIds"]) else ("NO_VIRTUAL_MACHINE_STARTED" if started == 0 else "SOME_VIRTUAL_MACHINES_NOT_STARTED")
        return {"taskId": task_id, "errorCode": error, "virtualMachineMetaData": meta}

    # -- failover ------------------------------------------------------------------------
    async def resume(self) -> None:
        """Finish the submissions a previous leader left unfinished."""
        grace = self.scope.settings.heartbeat.timeout + 1.0
        await asyncio.sleep(grace)  # in-flight starts finish; group managers re-join us
        self._resumable = True
        try:
            async with self._alloc:
                tasks = await self.store.tasks()
                for task_id, task in sorted(tasks.items()):
                    if task.get("state") == RECORDING:
                        tasks[task_id] = await self._settled(task_id) or {}
            for task_id, task in sorted(tasks.items(), key=lambda kv: kv[1].get("submittedAt") or 0):
                if task.get("state") != PENDING or task_id in self._dispatching:
                    continue
                self._dispatching.add(task_id)
                try:
                    # Read again: a retry may have resumed and finished it meanwhile.
                    fresh = await self.store.get_task(task_id)
                    if fresh is not None and fresh.get("state") == PENDING:
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
                    if task.get("state") == RECORDING:  # not ours in progress: we hold the lock
                        await self._settled(task_id)
                gone = await self.store.expire(self.retention, time.time(), self.epoch, self.subnet)
        except CoordinationError as exc:  # StaleEpoch too: the next leader sweeps
            log.warning("retention sweep interrupted: %s", exc)
            return
        if gone["tasks"] or gone["vms"]:
            log.info("retention: forgot %d finished tasks and %d VM records", gone["tasks"], gone["vms"])

    async def _own_records(self, task: dict[str, Any], specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The records of ``task``'s VMs, each usable: a record another task owns is left out,
        one that cannot be read is replaced by an ERROR record that says why (in memory: the
        caller writes it back)."""
        task_id = str(task["taskId"])
        vm_ids = [v for v in task.get("vmIds") or [] if isinstance(v, str)]
        records = await self.store.get_vms(vm_ids)
        out: dict[str, dict[str, Any]] = {}
        for vm_id in vm_ids:
            rec: Any = records.get(vm_id)
            if rec is None:
                # Absent, or not a JSON object: only the second is a record to report.
                try:
                    rec = await self.store.get_vm(vm_id)
                except ValueError as exc:
                    rec = None
                    problem: str | None = f"not JSON: {exc}"
                else:
                    if rec is None:
                        continue
                    problem = _unreadable(vm_id, rec)
            elif rec.get("taskId") not in (None, task_id):
                continue  # the name belongs to a later submission now
            else:
                problem = _unreadable(vm_id, rec)
                if rec.get("taskId") is None:
                    rec["taskId"] = task_id  # an older version's record without one: this task lists it
            if problem is not None:
                log.warning("virtual cluster %s: the record of %s cannot be read (%s); it is marked %s",
                            task_id, vm_id, problem, UNREADABLE_RECORD)
                rec = self._error_record(vm_id, task_id, rec, specs.get(vm_id), problem)
            out[vm_id] = rec
        return out

    @staticmethod
    def _error_record(vm_id: str, task_id: str, old: Any, spec: Any, problem: str) -> dict[str, Any]:
        """A readable ERROR record in place of an unreadable one. The address it held is kept
        (from the old record, else from its spec, written with the allocation), so that the
        dispatch's end gives it back to the pool."""
        old_rec = old if isinstance(old, dict) else {}
        ip = old_rec.get("ipAddress")
        if not isinstance(ip, str):
            ip = spec.get("ip") if isinstance(spec, dict) and isinstance(spec.get("ip"), str) else None
        requested = spec.get("requested") if isinstance(spec, dict) else None
        return {"virtualMachineId": vm_id, "taskId": task_id, "status": "ERROR", "errorCode": UNREADABLE_RECORD,
                "message": f"its record in ZooKeeper cannot be read ({problem}); it was not started",
                "requestedCapacity": requested if isinstance(requested, list) else None, "ipAddress": ip,
                "macAddress": None, "localControllerId": None, "groupManagerId": None, "submittedAt": time.time()}

    async def _fail_task(self, task_id: str, exc: BaseException) -> None:
        """The dispatch of ``task_id`` failed on something unexpected: its VMs not yet started
        become ERROR with the reason, the addresses of those never sent anywhere go back to the
        pool, and the task is DONE (answered; no leader tries the same thing again). If
        ZooKeeper cannot take this now, the task stays PENDING for the next leader."""
        try:
            task = await self.store.get_task(task_id)
            if not isinstance(task, dict) or task.get("state") != PENDING:
                return
            reason = f"the group leader failed dispatching it: {type(exc).__name__}: {exc}"
            records = await self._own_records(task, await self.store.get_specs(task.get("vmIds") or []))
            dispatched: set[str] = set()
            for vm_id, rec in records.items():
                if rec.get("status") in (PENDING, DISPATCHED):
                    if rec.get("status") == DISPATCHED:
                        dispatched.add(vm_id)  # it may yet start: its address stays with it
                    rec.update(status="ERROR", errorCode=DISPATCH_FAILED, message=reason)
            failed = [r for r in records.values() if r.get("status") == "ERROR"]
            release = [r for r in failed if r.get("ipAddress") and r["virtualMachineId"] not in dispatched]
            released = {r["virtualMachineId"] for r in release}
            await self.store.update_vms([r for r in failed if r["virtualMachineId"] not in released], self.epoch)
            await self.store.release_addresses(release, self.subnet, self.epoch)
            task.update(state=DONE, finishedAt=time.time(), error=reason)
            await self.store.set_task(task, self.epoch)
            log.error("virtual cluster %s failed: %s", task_id, reason)
        except CoordinationError as err:
            log.warning("could not record the failure of virtual cluster %s (the next leader resumes it): %s",
                        task_id, err)

    async def _resume_task(self, task: dict[str, Any]) -> None:
        specs_json = await self.store.get_specs(task["vmIds"])
        records = await self._own_records(task, specs_json)
        running = await self._running_domains() if any(r["status"] == DISPATCHED for r in records.values()) else {}
        specs: list[VMSpec] = []
        for vm_id in task["vmIds"]:
            rec = records.get(vm_id)
            if rec is None:
                continue
            if rec["status"] == DISPATCHED:
                where = running.get(vm_id)
                if where is not None:
                    lc_id, addr, state = where
                    rec.update(status=state, localControllerId=lc_id, localControllerControlDataAddress=addr, errorCode=None)
                else:
                    rec.update(status=PENDING, groupManagerId=None)
            if vm_id not in specs_json:
                if rec["status"] == PENDING:
                    rec.update(status="ERROR", errorCode=UNREADABLE_RECORD,
                               message="its spec is missing from ZooKeeper; it was not started")
                continue
            try:
                spec = VMSpec.from_json(specs_json[vm_id])
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                if rec["status"] == PENDING:
                    rec.update(status="ERROR", errorCode=UNREADABLE_RECORD,
                               message=f"its spec in ZooKeeper cannot be read ({type(exc).__name__}: {exc}); "
                                       "it was not started")
                continue
            specs.append(spec)
        log.info("resuming virtual cluster %s (%d VMs not yet started)", task["taskId"],
                 sum(1 for r in records.values() if r["status"] == PENDING))
        await self.store.update_vms(records.values(), self.epoch)
        await self.dispatch(task, specs, records)

    async def _running_domains(self) -> dict[str, tuple[str, dict[str, Any], str]]:
        """vm id -> (lc id, lc address, state), asked of every local controller directly."""
        coord = self.scope.coord
        assert coord is not None
        lcs = await coord.children_json(coord.path("localcontrollers"))
        out: dict[str, tuple[str, dict[str, Any], str]] = {}

        async def ask(lc_id: str, data: dict[str, Any]) -> None:
            try:
                addr = NetworkAddress.from_json(data["controlDataAddress"])
                reply = await self.scope.rpc.call(addr, "lc.describe", None, epoch=self.epoch, timeout=5)
            except (RpcError, KeyError, TypeError, ValueError):
                return
            for d in reply.get("domains", []):
                if d.get("state") in STARTED:
                    out[d["name"]] = (lc_id, addr.to_json(), d["state"])

        await asyncio.gather(*(ask(k, v) for k, v in lcs.items()))
        return out

