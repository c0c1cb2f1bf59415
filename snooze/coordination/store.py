"""Durable records of virtual clusters in ZooKeeper: tasks, VMs, their specs and addresses.

Layout under the cluster root::

    tasks/<taskId>         a submission: its VM ids, state (RECORDING, PENDING, DONE), the client's
                           request id, a fingerprint of its templates, timestamps
    requests/<requestId>   a client's idempotency key; its data is the task id
    vms/<vmId>             a VM's small, often-updated state (``snooze.records.VMRecord``): status,
                           errorCode, location, ip, mac, taskId, updatedAt
    vmspecs/<vmId>         a VM's spec (domain XML, requested capacity): written once
    ipam/<subnet>/<ip>     an address allocation; its data is the VM id

Addresses are allocated by *creating* their znode, inside the same multi-op transaction as the
VM's records, so an address can never be handed out twice, even by two leaders. Writes made by a
leader also ``check`` the epoch znode's version, so a deposed leader's writes fail (fencing).

Every write of a VM record is version-checked
----------------------------------------------
A record is read with its znode's version (``VMRecord.version``) and written back with
``set_data(..., version=)`` in the transaction (``update_vms``): if another writer changed it in
between (the leader recording a start while a group manager moves the VM, or marks it lost),
the write fails instead of overwriting that change. The store then reads the record again,
applies the caller's changes again to the fresh copy (``VMRecord.rebase``: the changes are
methods that check the state they apply to) and writes again, a few times at most. So no
writer's update is lost, and a record someone deleted meanwhile stays deleted. An address a
change gives back (``VMRecord.release_address``) is deleted in the same transaction, only if its
allocation still names that VM. The leader's writes stay fenced by its epoch as well.

Recording a submission: all of it or none of it
-----------------------------------------------
A submission whose znodes fit in one transaction (estimated at most ``SINGLE_TX_BYTES``, under
ZooKeeper's 1 MiB ``jute.maxbuffer``: 1.04 MB commits, 1.1 MB makes the server drop the
connection) is written in **one** fenced multi-op: the task (PENDING), its request key, and per
VM its address, record and spec. It is there whole or not at all.

A larger one is written with an **intent record** first: the task in state RECORDING, naming all
its VM ids and the request key, in its own create; then the VMs in chunks of about
``CHUNK_BYTES`` (a VM's address, record and spec always share one chunk, so each VM is whole or
absent); then the task flips to PENDING. A leader that dies in between leaves a RECORDING task,
which the next one to look settles (``settle_recording``: the new leader's resume, a client's
retry of the same request, or the periodic sweep): if every VM record and spec is there it
completes (PENDING, then dispatched as usual), otherwise it rolls back, deleting exactly the
znodes whose VM record names that task, then the task and its request key. A task is never
PENDING with VMs missing, and a PENDING VM always has its task.

Retention
---------
``expire`` forgets what is finished: a DONE task (and its request key) older than the
retention, and a VM record that is ERROR or DESTROYED for longer than the retention and whose
task is gone or expired (with its spec and the address it still holds). PENDING VM records
whose task does not exist (left by versions before the intent record) are removed at once.
RUNNING VMs keep their records whatever the age of their task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    RuntimeInconsistency,
)

from snooze.codes import FINISHED, ErrorCode, TaskState, VMStatus
from snooze.coordination.zk import CoordinationError, Coordinator
from snooze.ids import is_valid_id
from snooze.records import RecordError, VMRecord

SINGLE_TX_BYTES = 900_000
CHUNK_BYTES = 400_000

# Task states (re-exported: the store is where tasks live).
RECORDING = TaskState.RECORDING
PENDING = TaskState.PENDING
DONE = TaskState.DONE
#: Read-modify-write attempts of ``update_vms`` before a conflict is given up (``Changed``).
WRITE_ATTEMPTS = 8


class StaleEpoch(CoordinationError):
    """A write carried an epoch that is no longer the current one: this leader was replaced."""

    code = ErrorCode.NOT_GROUP_LEADER


class AlreadyExists(CoordinationError):
    """A VM id or an address is already taken."""

    code = ErrorCode.CONFLICT


class Changed(CoordinationError):
    """A znode changed or vanished between reading it and writing it."""

    code = ErrorCode.CONFLICT


class TooLarge(ValueError):
    """One VM's records do not fit in one ZooKeeper transaction (the request is at fault)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def subnet_key(cidr: str) -> str:
    return cidr.replace("/", "_")


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Op:
    """One operation of a multi-op transaction; ``version`` -1 means any version."""

    kind: str  # "create" | "set" | "delete"
    path: str
    data: bytes = b""
    version: int = -1

    @property
    def weight(self) -> int:
        # Path and data, plus the request's headers and ACL (about 50 bytes for a create).
        return len(self.path) + len(self.data) + 64


def chunked(groups: Iterable[list[Op]], limit: int) -> Iterator[list[Op]]:
    """Pack groups of ops into chunks of about ``limit`` bytes; a group is never split."""
    chunk: list[Op] = []
    size = 0
    for group in groups:
        weight = sum(op.weight for op in group)
        if chunk and size + weight > limit:
            yield chunk
            chunk, size = [], 0
        chunk.extend(group)
        size += weight
    if chunk:
        yield chunk


@dataclass
class SubmissionPlan:
    """The znodes of one submission, ready to be written (``Store.plan_submission``)."""

    task: dict[str, Any]
    task_ops: list[Op]  # the task (and its request key)
    groups: list[list[Op]]  # per VM: address, record, spec
    single: bool  # fits one transaction
    size: int = 0
    vm_ids: list[str] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        return str(self.task["taskId"])

    def chunks(self, limit: int = CHUNK_BYTES) -> list[list[Op]]:
        return list(chunked(self.groups, limit))


class Store:
    """Reads and fenced writes of the virtual-cluster records (blocking parts run off the loop)."""

    def __init__(self, coord: Coordinator, *, single_tx_bytes: int = SINGLE_TX_BYTES, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.coord = coord
        self.single_tx_bytes = single_tx_bytes
        self.chunk_bytes = chunk_bytes

    def _p(self, *parts: str) -> str:
        return self.coord.path(*parts)

    # -- transactions (run on a worker thread) ---------------------------------------------
    def _tx(self, ops: list[Op], epoch: int | None) -> list[Any]:
        """Run ``ops`` as one multi-op transaction, fenced by ``epoch`` when given; the result of
        each op (a set's is the znode's new stat)."""
        if not ops:
            return []
        tx = self.coord.client.transaction()
        if epoch is not None:
            tx.check(self._p("epoch"), epoch)
        for op in ops:
            if op.kind == "create":
                tx.create(op.path, op.data)
            elif op.kind == "set":
                tx.set_data(op.path, op.data, version=op.version)
            else:
                tx.delete(op.path, version=op.version)
        results = tx.commit()
        failures = [r for r in results if isinstance(r, Exception) and not isinstance(r, (RolledBackError, RuntimeInconsistency))]
        if not failures:
            return list(results[1:] if epoch is not None else results)
        if epoch is not None and isinstance(results[0], BadVersionError):
            raise StaleEpoch(f"this group leader has been replaced (epoch {epoch} is no longer current); retry")
        if any(isinstance(r, NodeExistsError) for r in failures):
            raise AlreadyExists("a VM id or address is already taken")
        if any(isinstance(r, (BadVersionError, NoNodeError, NotEmptyError)) for r in failures):
            raise Changed("records changed concurrently: " + ", ".join(sorted({type(r).__name__ for r in failures})))
        raise CoordinationError("transaction failed: " + ", ".join(sorted({type(r).__name__ for r in failures})))

    def _tx_chunks(self, groups: Iterable[list[Op]], epoch: int | None) -> None:
        for chunk in chunked(groups, self.chunk_bytes):
            self._tx(chunk, epoch)

    def _fetch(self, paths: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        """Read many znodes with pipelined requests (one round trip, not N): path -> (data, version)."""
        client = self.coord.client
        pending = [(p, client.get_async(p)) for p in paths]
        out: dict[str, tuple[bytes, int]] = {}
        for p, res in pending:
            try:
                data, stat = res.get(timeout=10)
            except NoNodeError:
                continue
            out[p] = (data, stat.version)
        return out

    def _read_many(self, folder: str, ids: Iterable[str]) -> dict[str, tuple[dict[str, Any], int]]:
        wanted = [i for i in ids if is_valid_id(i)]
        got = self._fetch(self._p(folder, i) for i in wanted)
        out: dict[str, tuple[dict[str, Any], int]] = {}
        for i in wanted:
            hit = got.get(self._p(folder, i))
            if hit is None:
                continue
            try:
                value = json.loads(hit[0])
            except ValueError:
                continue
            if isinstance(value, dict):
                out[i] = (value, hit[1])
        return out

    def _read_records(self, ids: Iterable[str]) -> dict[str, VMRecord | RecordError]:
        """The VM records of ``ids`` that exist (pipelined reads), each parsed with its version,
        or the RecordError saying why it cannot be read."""
        wanted = [i for i in ids if is_valid_id(i)]
        got = self._fetch(self._p("vms", i) for i in wanted)
        out: dict[str, VMRecord | RecordError] = {}
        for i in wanted:
            hit = got.get(self._p("vms", i))
            if hit is None:
                continue
            try:
                out[i] = VMRecord.from_json(hit[0], i, version=hit[1])
            except RecordError as exc:
                out[i] = exc
        return out

    def _children(self, *parts: str) -> list[str]:
        try:
            return list(self.coord.client.get_children(self._p(*parts)))
        except NoNodeError:
            return []

    def _ensure_parents(self, subnet: str | None = None) -> None:
        for name in ("tasks", "requests", "vms", "vmspecs"):
            self.coord.client.ensure_path(self._p(name))
        if subnet:
            self.coord.client.ensure_path(self._p("ipam", subnet_key(subnet)))

    # -- submissions ---------------------------------------------------------------------
    def plan_submission(
        self, task: dict[str, Any], vms: Sequence[VMRecord], specs: list[dict[str, Any]], subnet: str
    ) -> SubmissionPlan:
        """The znodes of a submission, and whether they fit one transaction.

        ``task`` must hold taskId and vmIds; its ``requestId`` (optional) becomes the request
        key. Its state and ``recording`` are set here. TooLarge names the first VM whose records
        alone would not fit a transaction."""
        key = subnet_key(subnet)
        groups: list[list[Op]] = []
        for index, (vm, spec) in enumerate(zip(vms, specs, strict=True)):
            vm_id = vm.vm_id
            group: list[Op] = []
            if vm.ip:
                group.append(Op("create", self._p("ipam", key, vm.ip), vm_id.encode()))
            group.append(Op("create", self._p("vms", vm_id), _dump(vm.to_json())))
            group.append(Op("create", self._p("vmspecs", vm_id), _dump(spec)))
            if sum(op.weight for op in group) > self.single_tx_bytes:
                raise TooLarge(f"the records of {vm_id!r} are over {self.single_tx_bytes} bytes", index)
            groups.append(group)
        request_id = task.get("requestId")
        request_ops = [Op("create", self._p("requests", request_id), str(task["taskId"]).encode())] if request_id else []
        task = dict(task, state=PENDING, recording="single", subnet=subnet)
        size = len(_dump(task)) + 64 + sum(op.weight for g in groups for op in g) + sum(op.weight for op in request_ops)
        single = size <= self.single_tx_bytes
        if not single:
            task.update(state=RECORDING, recording="chunked")
        task_ops = [Op("create", self._p("tasks", task["taskId"]), _dump(task)), *request_ops]
        if len(_dump(task)) + 64 > self.single_tx_bytes:
            raise TooLarge("the task record is too large", 0)
        return SubmissionPlan(task, task_ops, groups, single, size, [vm.vm_id for vm in vms])

    async def create_submission(
        self, task: dict[str, Any], vms: Sequence[VMRecord], specs: list[dict[str, Any]], subnet: str, epoch: int
    ) -> dict[str, Any]:
        """Record a submission wholly or not at all; returns the task as written (PENDING), and
        the VM records know their znodes' versions from then on.

        On a failure the leader still leads (AlreadyExists, Changed, CoordinationError) what was
        written is rolled back before the error is raised; on StaleEpoch it is left to the new
        leader, which settles the intent record."""
        plan = self.plan_submission(task, vms, specs, subnet)

        def created() -> None:
            for vm in vms:
                vm.saved(0)  # a znode's version is 0 when it is created

        def do() -> dict[str, Any]:
            self._ensure_parents(subnet)
            if plan.single:
                self._tx(plan.task_ops + [op for g in plan.groups for op in g], epoch)
                created()
                return plan.task
            self._begin_recording(plan, epoch)
            try:
                for chunk in plan.chunks(self.chunk_bytes):
                    self._tx(chunk, epoch)
                done = self._finish_recording(plan.task_id, epoch)
                created()
                return done
            except StaleEpoch:
                raise
            except CoordinationError:
                try:
                    self._settle(plan.task_id, epoch, complete=False)
                except CoordinationError:
                    pass  # left RECORDING: the sweep or the next leader settles it
                raise

        return await self.coord.call(do, timeout=60)

    def _begin_recording(self, plan: SubmissionPlan, epoch: int) -> None:
        self._tx(plan.task_ops, epoch)

    def _finish_recording(self, task_id: str, epoch: int) -> dict[str, Any]:
        data, stat = self.coord.client.get(self._p("tasks", task_id))
        task: dict[str, Any] = json.loads(data)
        task.update(state=PENDING, recordedAt=time.time())
        self._tx([Op("set", self._p("tasks", task_id), _dump(task), stat.version)], epoch)
        return task

    # The intent-record steps, one call each (tests stop between them as a crash would).
    async def begin_recording(self, plan: SubmissionPlan, epoch: int) -> None:
        def do() -> None:
            self._ensure_parents(plan.task.get("subnet"))
            self._begin_recording(plan, epoch)

        await self.coord.call(do)

    async def write_chunk(self, chunk: list[Op], epoch: int) -> None:
        await self.coord.call(self._tx, chunk, epoch, timeout=30)

    async def finish_recording(self, task_id: str, epoch: int) -> dict[str, Any]:
        return await self.coord.call(self._finish_recording, task_id, epoch)

    async def settle_recording(self, task_id: str, epoch: int) -> dict[str, Any] | None:
        """Settle a RECORDING task: complete it when all of it is written, else roll it back.

        Returns the task as it is afterwards (None if it is gone); a task in another state is
        returned untouched. Only the leader may call this, and not while it is itself recording
        that task."""
        if not is_valid_id(task_id):
            return None
        return await self.coord.call(self._settle, task_id, epoch, timeout=60)

    def _settle(self, task_id: str, epoch: int, complete: bool = True) -> dict[str, Any] | None:
        client = self.coord.client
        try:
            data, stat = client.get(self._p("tasks", task_id))
        except NoNodeError:
            return None
        task: dict[str, Any] = json.loads(data)
        if task.get("state") != RECORDING:
            return task
        vm_ids = [v for v in task.get("vmIds") or [] if is_valid_id(v)]
        records = self._read_records(vm_ids)
        mine = {v: r for v, r in records.items() if _task_of(r) == task_id}
        specs = self._fetch(self._p("vmspecs", v) for v in mine)
        if complete and len(mine) == len(task.get("vmIds") or []) and len(specs) == len(mine):
            return self._finish_recording(task_id, epoch)
        ips = {v: ip for v, r in mine.items() if (ip := _ip_of(r))}
        groups = self._vm_deletions({v: r.version for v, r in mine.items()}, specs,
                                    self._ipam_owners(ips, task.get("subnet")))
        self._tx_chunks(groups, epoch)
        self._tx_chunks(self._task_deletions({task_id: (task, stat.version)}), epoch)
        return None

    def _ipam_owners(self, ips: dict[str, str], subnet: str | None) -> dict[str, tuple[str, int]]:
        """vm id -> (its address znode, version) when that znode names this VM."""
        if not subnet or not ips:
            return {}
        key = subnet_key(subnet)
        got = self._fetch(self._p("ipam", key, ip) for ip in ips.values())
        out: dict[str, tuple[str, int]] = {}
        for vm_id, ip in ips.items():
            path = self._p("ipam", key, ip)
            hit = got.get(path)
            if hit is not None and hit[0].decode(errors="replace") == vm_id:
                out[vm_id] = (path, hit[1])
        return out

    def _vm_deletions(
        self, records: dict[str, int], specs: dict[str, tuple[bytes, int]], owned: dict[str, tuple[str, int]],
    ) -> list[list[Op]]:
        """Per VM (id -> its record's version): delete its record at that version, its spec, and
        the address it owns (``owned``: at the version read)."""
        groups: list[list[Op]] = []
        for vm_id, version in records.items():
            group: list[Op] = []
            if vm_id in owned:
                group.append(Op("delete", owned[vm_id][0], version=owned[vm_id][1]))
            group.append(Op("delete", self._p("vms", vm_id), version=version))
            spec_path = self._p("vmspecs", vm_id)
            if spec_path in specs:
                group.append(Op("delete", spec_path))
            groups.append(group)
        return groups

    def _task_deletions(self, tasks: dict[str, tuple[dict[str, Any], int]]) -> list[list[Op]]:
        """Per task: delete it (at the version read) and its request key if the key names it."""
        keys = {t: f"{self._p('requests', rid)}" for t, (task, _v) in tasks.items()
                if isinstance(rid := task.get("requestId"), str) and is_valid_id(rid)}
        got = self._fetch(keys.values())
        groups: list[list[Op]] = []
        for task_id, (_task, version) in tasks.items():
            group = [Op("delete", self._p("tasks", task_id), version=version)]
            hit = got.get(keys.get(task_id, ""))
            if hit is not None and hit[0].decode(errors="replace") == task_id:
                group.append(Op("delete", keys[task_id], version=hit[1]))
            groups.append(group)
        return groups

    async def task_for_request(self, request_id: str) -> str | None:
        """The task recorded under a client's request id, if any."""
        if not is_valid_id(request_id):
            return None

        def get() -> str | None:
            try:
                data, _ = self.coord.client.get(self._p("requests", request_id))
            except NoNodeError:
                return None
            return data.decode(errors="replace") or None

        return await self.coord.call(get)

    async def drop_request(self, request_id: str, task_id: str) -> None:
        """Delete a request key that still names ``task_id`` (whose task is gone)."""
        if not is_valid_id(request_id):
            return

        def do() -> None:
            path = self._p("requests", request_id)
            try:
                data, stat = self.coord.client.get(path)
                if data.decode(errors="replace") == task_id:
                    self.coord.client.delete(path, version=stat.version)
            except (NoNodeError, BadVersionError):
                pass

        await self.coord.call(do)

    async def update_vms(self, records: Iterable[VMRecord], epoch: int | None, *, subnet: str | None = None) -> None:
        """Write the changes made to ``records`` (those with none are skipped), each
        version-checked against the version it was read at; an address a change gave back is
        deleted with it, from ``subnet``'s pool. On a conflict the record is read again, its
        changes are applied again to the fresh copy (``VMRecord.rebase``) and it is written
        again, at most ``WRITE_ATTEMPTS`` times (then Changed); a record deleted meanwhile is
        left deleted. Each record passed ends as written: the fresh state, its new version.
        Fenced by ``epoch`` when given (StaleEpoch)."""
        todo = [r for r in records if r.dirty]
        if any(r.released for r in todo) and not subnet:
            raise ValueError("update_vms: addresses were released but no subnet was given")
        if todo:
            await self.coord.call(self._write_vms, todo, epoch, subnet, timeout=60)

    def _write_vms(self, todo: list[VMRecord], epoch: int | None, subnet: str | None) -> None:
        for _attempt in range(WRITE_ATTEMPTS):
            stamp = time.time()
            released = {r.vm_id: ip for r in todo if (ip := r.released)}
            owners = self._ipam_owners(released, subnet) if released else {}
            groups: list[tuple[VMRecord, list[Op]]] = []
            for rec in todo:
                if rec.version < 0:
                    raise ValueError(f"the record of {rec.vm_id} was not read from ZooKeeper: it cannot be updated")
                rec.updated_at = stamp
                group = [Op("set", self._p("vms", rec.vm_id), _dump(rec.to_json()), rec.version)]
                if rec.vm_id in owners:
                    path, version = owners[rec.vm_id]
                    group.append(Op("delete", path, version=version))
                groups.append((rec, group))
            conflicted: list[VMRecord] = []
            for chunk in _chunks_of(groups, self.chunk_bytes):
                try:
                    results = self._tx([op for _rec, group in chunk for op in group], epoch)
                except Changed:
                    conflicted.extend(rec for rec, _group in chunk)
                    continue
                at = 0
                for rec, group in chunk:
                    rec.saved(results[at].version)  # the set comes first in its group
                    at += len(group)
            if not conflicted:
                return
            fresh = self._read_records(rec.vm_id for rec in conflicted)
            todo = []
            for rec in conflicted:
                now = fresh.get(rec.vm_id)
                if now is None:
                    rec.drop_changes()  # deleted meanwhile (destroyed, expired): it stays deleted
                elif rec.rebase(now):
                    todo.append(rec)
            if not todo:
                return
        raise Changed(f"records kept changing while being written: {', '.join(r.vm_id for r in todo)}")

    async def set_task(self, task: dict[str, Any], epoch: int | None) -> None:
        await self.coord.call(self._tx, [Op("set", self._p("tasks", task["taskId"]), _dump(task))], epoch)

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        if not is_valid_id(task_id):
            return None
        return await self.coord.get_json(self._p("tasks", task_id))

    async def task_ids(self) -> list[str]:
        return await self.coord.call(self._children, "tasks")

    async def tasks(self) -> dict[str, dict[str, Any]]:
        """Every task record (pipelined reads)."""
        def do() -> dict[str, dict[str, Any]]:
            return {k: v for k, (v, _ver) in self._read_many("tasks", self._children("tasks")).items()}

        return await self.coord.call(do, timeout=60)

    # -- retention -----------------------------------------------------------------------
    async def expire(self, retention: float, now: float, epoch: int, subnet: str) -> dict[str, int]:
        """Forget finished tasks and finished VM records older than ``retention`` seconds (see
        the module docstring); returns how many tasks and VMs were removed."""
        return await self.coord.call(self._expire, retention, now, epoch, subnet, timeout=120)

    def _expire(self, retention: float, now: float, epoch: int, subnet: str) -> dict[str, int]:
        # VMs are read before tasks: a VM listed here had its task written before or with it,
        # so a task missing below is really gone (not yet to be written).
        vms = {k: v for k, v in self._read_records(self._children("vms")).items() if isinstance(v, VMRecord)}
        tasks = self._read_many("tasks", self._children("tasks"))

        def expired(task: dict[str, Any]) -> bool:
            if task.get("state") != DONE:
                return False
            return float(task.get("finishedAt") or task.get("submittedAt") or 0) + retention <= now

        doomed: dict[str, VMRecord] = {}
        for vm_id, rec in vms.items():
            entry = tasks.get(str(rec.task_id))
            task = entry[0] if entry else None
            if rec.status is VMStatus.PENDING and task is None:
                doomed[vm_id] = rec  # a ghost: a VM no task will ever dispatch
            elif rec.status in FINISHED and (task is None or expired(task)):
                since = float(rec.updated_at or rec.submitted_at or 0)
                if since + retention <= now:
                    doomed[vm_id] = rec
        specs = self._fetch(self._p("vmspecs", v) for v in doomed)
        ips = {v: r.ip for v, r in doomed.items() if r.ip}
        self._tx_chunks(self._vm_deletions({v: r.version for v, r in doomed.items()}, specs,
                                           self._ipam_owners(ips, subnet)), epoch)
        old = {t: entry for t, entry in tasks.items() if expired(entry[0])}
        self._tx_chunks(self._task_deletions(old), epoch)
        return {"tasks": len(old), "vms": len(doomed)}

    # -- VMs -----------------------------------------------------------------------------
    async def get_vm(self, vm_id: str) -> VMRecord | None:
        """The record of ``vm_id`` with its version (None if there is none); RecordError if it
        cannot be read."""
        if not is_valid_id(vm_id):
            return None
        entry = (await self.read_vms([vm_id])).get(vm_id)
        if isinstance(entry, RecordError):
            raise entry
        return entry

    async def read_vms(self, vm_ids: Iterable[str]) -> dict[str, VMRecord | RecordError]:
        """Every record of ``vm_ids`` that exists: parsed, or why it cannot be."""
        wanted = list(vm_ids)
        return await self.coord.call(self._read_records, wanted, timeout=30)

    async def get_vms(self, vm_ids: Iterable[str]) -> dict[str, VMRecord]:
        """The readable records of ``vm_ids`` (one that cannot be read is left out)."""
        return {k: v for k, v in (await self.read_vms(vm_ids)).items() if isinstance(v, VMRecord)}

    async def _get_many(self, folder: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(ids)

        def do() -> dict[str, dict[str, Any]]:
            return {k: v for k, (v, _ver) in self._read_many(folder, wanted).items()}

        return await self.coord.call(do, timeout=30)

    async def get_spec(self, vm_id: str) -> dict[str, Any] | None:
        if not is_valid_id(vm_id):
            return None
        return await self.coord.get_json(self._p("vmspecs", vm_id))

    async def get_specs(self, vm_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._get_many("vmspecs", vm_ids)

    async def vm_ids(self) -> list[str]:
        return sorted(await self.coord.call(self._children, "vms"))

    async def delete_vm(self, vm_id: str, subnet: str) -> None:
        """Forget a destroyed VM and return its address to the pool: its record (readable or
        not) is deleted at the version read, with its spec and the address it owns; should
        either change in between, they are read again."""
        if not is_valid_id(vm_id):
            return

        def do() -> None:
            for _attempt in range(WRITE_ATTEMPTS):
                entry = self._read_records([vm_id]).get(vm_id)
                if entry is None:
                    return
                ip = _ip_of(entry)
                specs = self._fetch([self._p("vmspecs", vm_id)])
                owned = self._ipam_owners({vm_id: ip} if ip else {}, subnet)
                try:
                    self._tx(self._vm_deletions({vm_id: entry.version}, specs, owned)[0], None)
                    return
                except Changed:
                    continue  # changed in between: read again
            raise Changed(f"the record of {vm_id} kept changing while being deleted")

        await self.coord.call(do)

    async def destination(self, lc_id: str) -> dict[str, Any] | None:
        """A local controller as a migration destination: id, address, hypervisorSettings,
        status, and its group manager's id and address (None if it is not in the hierarchy)."""
        if not is_valid_id(lc_id):
            return None
        lc = await self.coord.get_json(self._p("localcontrollers", lc_id))
        if not isinstance(lc, dict):
            return None
        gm_id = lc.get("groupManagerId")
        gm = await self.coord.get_json(self._p("groupmanagers", str(gm_id))) if is_valid_id(gm_id) else None
        return {
            "id": lc_id,
            "address": lc.get("controlDataAddress"),
            "hypervisorSettings": lc.get("hypervisorSettings") or {},
            "status": lc.get("status"),
            "groupManagerId": gm_id if gm else None,
            "groupManagerAddress": gm["listenSettings"]["controlDataAddress"] if gm else None,
        }

    # -- wake-ups: where a woken host belongs ---------------------------------------------
    async def mark_wakeup(self, lc_id: str, gm_id: str) -> None:
        if not is_valid_id(lc_id):
            raise ValueError(f"not a valid local controller id: {lc_id!r}")

        def put() -> None:
            path = self._p("wakeups", lc_id)
            try:
                self.coord.client.create(path, gm_id.encode(), makepath=True)
            except NodeExistsError:
                self.coord.client.set(path, gm_id.encode())

        await self.coord.call(put)

    async def woken_by(self, lc_id: str) -> str | None:
        def get() -> str | None:
            try:
                data, _ = self.coord.client.get(self._p("wakeups", lc_id))
            except NoNodeError:
                return None
            return data.decode(errors="replace") or None

        if not is_valid_id(lc_id):
            return None
        return await self.coord.call(get, timeout=3)

    async def clear_wakeup(self, lc_id: str) -> None:
        def delete() -> None:
            try:
                self.coord.client.delete(self._p("wakeups", lc_id))
            except NoNodeError:
                pass

        if is_valid_id(lc_id):
            await self.coord.call(delete)

    async def allocated_ips(self, subnet: str) -> set[str]:
        return set(await self.coord.call(self._children, "ipam", subnet_key(subnet)))


def now() -> float:
    return time.time()


def _task_of(entry: VMRecord | RecordError) -> str | None:
    """The task a record names, readable or not (an unreadable one may still say)."""
    if isinstance(entry, VMRecord):
        return entry.task_id
    task = entry.raw.get("taskId") if isinstance(entry.raw, dict) else None
    return task if isinstance(task, str) else None


def _ip_of(entry: VMRecord | RecordError) -> str | None:
    """The address a record holds, readable or not."""
    if isinstance(entry, VMRecord):
        return entry.ip
    ip = entry.raw.get("ipAddress") if isinstance(entry.raw, dict) else None
    return ip if isinstance(ip, str) else None


def _chunks_of(groups: list[tuple[VMRecord, list[Op]]], limit: int) -> Iterator[list[tuple[VMRecord, list[Op]]]]:
    """``chunked`` for groups that belong to a record."""
    chunk: list[tuple[VMRecord, list[Op]]] = []
    size = 0
    for rec, group in groups:
        weight = sum(op.weight for op in group)
        if chunk and size + weight > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append((rec, group))
        size += weight
    if chunk:
        yield chunk
