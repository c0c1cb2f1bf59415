"""Durable records of virtual clusters in ZooKeeper: tasks, VMs, their specs and addresses.

Layout under the cluster root::

    tasks/<taskId>         a submission: its VM ids, state (RECORDING, PENDING, DONE), the client's
                           request id, a fingerprint of its templates, timestamps
    requests/<requestId>   a client's idempotency key; its data is the task id
    vms/<vmId>             a VM's small, often-updated state (``snooze.records.VMRecord``): status,
                           errorCode, location, ip, mac, taskId, updatedAt
    vmspecs/<vmId>         a VM's spec (domain XML, requested capacity): written once
    ipam/<subnet>/<ip>     an address allocation of the default subnet as versions before the
                           network model wrote it; its data is the VM id (still written with
                           the pool's, so an older leader reading it sees the address taken)
    network/pools/<subnet> the network model's address pools (``snooze.network.ipam``): a VM's
                           address is reserved there, in the same transaction as its records,
                           so a VM and an address reserved through the API never share one
    sleeping/<lcId>        a powered-down host: its description (wake-up settings, capacity) and
                           the group manager that manages it (docs/energy-handover.md)

Addresses are allocated by *creating* their znode, inside the same multi-op transaction as the
VM's records, so an address can never be handed out twice, even by two leaders. Which address is
the network model's choice (``snooze.network``, a layer above this one): the leader passes its
reservation's ops in (``SubmissionAddresses``), and every write that gives an address back or
forgets a VM adds the ops of an ``AddressBook`` (its pool's release, its guest's deletion) to
its own transaction. Writes made by a
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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

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
#: Reading more records than this from one folder, its listing (one request) first says which
#: exist, and only those are read: a 5,000-VM submission checks that its names are free, and
#: 5,000 reads of absent znodes took the leader 1.4 s, a listing a few milliseconds.
LIST_FIRST = 64


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


#: The default network's one subnet (issue 12): ``[groupmanager] virtual_machine_subnet``, the
#: subnet of every record that names none.
DEFAULT_SUBNET = "default"
#: Bytes a VM's address adds to a transaction (its address znode, its share of the bitmaps).
ADDRESS_WEIGHT = 200


class AddressBook(Protocol):
    """The network model's side of forgetting VMs (``snooze.network.vms``; this layer may not
    import it): the ops that give addresses back to their pools and delete guests, for the
    caller's own transaction."""

    def release_ops(self, owned: dict[str, tuple[str, str]]) -> list[Op]:
        """vm id -> (subnet id, address): the ops of one transaction releasing each address
        still reserved for that VM."""
        ...

    def guest_deletions(self, vm_ids: Collection[str]) -> dict[str, list[Op]]:
        """vm id -> the ops deleting its guest (record and links), for the VMs that have one."""
        ...


class SubmissionAddresses(Protocol):
    """A submission's addresses, reserved by the network model: its ops for one transaction,
    or split over several committed in order (``Reservation.split``)."""

    def ops_for(self, batches: list[list[str]]) -> list[list[Op]]: ...


def pool_of(entry: VMRecord | RecordError) -> tuple[str, str] | None:
    """(subnet id, address) a record holds, readable or not (no subnet: the default one)."""
    ip = _ip_of(entry)
    if ip is None:
        return None
    if isinstance(entry, VMRecord):
        subnet = entry.subnet
    else:
        raw = entry.raw.get("subnet") if isinstance(entry.raw, dict) else None
        subnet = raw if isinstance(raw, str) else None
    return (subnet or DEFAULT_SUBNET, ip)


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
    #: The VMs' addresses in their pools (None: the records' own ``ipam/`` znodes only).
    addresses: SubmissionAddresses | None = None

    @property
    def task_id(self) -> str:
        return str(self.task["taskId"])

    def ops(self) -> list[Op]:
        """Everything in one transaction (a plan that fits one)."""
        address_ops = self.addresses.ops_for([list(self.vm_ids)])[0] if self.addresses is not None else []
        return self.task_ops + address_ops + [op for g in self.groups for op in g]

    def chunks(self, limit: int = CHUNK_BYTES) -> list[list[Op]]:
        """The VMs' transactions, in order: each VM's address, record and spec in one."""
        if self.addresses is None:
            return list(chunked(self.groups, limit))
        pairs = list(zip(self.vm_ids, self.groups, strict=True))
        batches = list(_chunks_of(pairs, limit, extra=ADDRESS_WEIGHT))
        address_ops = self.addresses.ops_for([[v for v, _g in b] for b in batches])
        return [a + [op for _v, g in b for op in g] for a, b in zip(address_ops, batches, strict=True)]


class Store:
    """Reads and fenced writes of the virtual-cluster records (blocking parts run off the loop)."""

    #: Makes the network model's AddressBook for a session: set by ``snooze.network.vms`` when
    #: it is imported (every group manager process imports it), since this layer may not.
    address_books: ClassVar[Callable[[Coordinator], AddressBook] | None] = None

    def __init__(self, coord: Coordinator, *, single_tx_bytes: int = SINGLE_TX_BYTES, chunk_bytes: int = CHUNK_BYTES,
                 addresses: AddressBook | None = None) -> None:
        self.coord = coord
        self.single_tx_bytes = single_tx_bytes
        self.chunk_bytes = chunk_bytes
        factory = Store.address_books
        self.addresses = addresses if addresses is not None else (factory(coord) if factory is not None else None)

    def _release_ops(self, owned: dict[str, tuple[str, str]]) -> list[Op]:
        return self.addresses.release_ops(owned) if self.addresses is not None and owned else []

    def _guest_deletions(self, vm_ids: Collection[str]) -> dict[str, list[Op]]:
        return self.addresses.guest_deletions(vm_ids) if self.addresses is not None and vm_ids else {}

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
        return self.coord.fetch(paths)

    def _present(self, folder: str, ids: Iterable[str], listed: bool) -> list[str]:
        """The valid ones of ``ids``; of many, only those ``folder`` lists (``LIST_FIRST``),
        unless they come from that listing (``listed``)."""
        wanted = [i for i in ids if is_valid_id(i)]
        if listed or len(wanted) <= LIST_FIRST:
            return wanted
        names = set(self._children(folder))
        return [i for i in wanted if i in names]

    def _read_many(self, folder: str, ids: Iterable[str], *, listed: bool = False) -> dict[str, tuple[dict[str, Any], int]]:
        wanted = self._present(folder, ids, listed)
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

    def _read_records(self, ids: Iterable[str], *, listed: bool = False) -> dict[str, VMRecord | RecordError]:
        """The VM records of ``ids`` that exist (pipelined reads), each parsed with its version,
        or the RecordError saying why it cannot be read."""
        wanted = self._present("vms", ids, listed)
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
        self, task: dict[str, Any], vms: Sequence[VMRecord], specs: list[dict[str, Any]], subnet: str,
        addresses: SubmissionAddresses | None = None, guests: dict[str, list[Op]] | None = None,
    ) -> SubmissionPlan:
        """The znodes of a submission, and whether they fit one transaction.

        ``task`` must hold taskId and vmIds; its ``requestId`` (optional) becomes the request
        key. Its state and ``recording`` are set here. TooLarge names the first VM whose records
        alone would not fit a transaction. ``addresses``: the VMs' reservations in their pools;
        ``guests``: per VM, the ops creating its guest in the network model (with its records)."""
        key = subnet_key(subnet)
        groups: list[list[Op]] = []
        for index, (vm, spec) in enumerate(zip(vms, specs, strict=True)):
            vm_id = vm.vm_id
            group: list[Op] = []
            if vm.ip and vm.subnet in (None, DEFAULT_SUBNET):
                group.append(Op("create", self._p("ipam", key, vm.ip), vm_id.encode()))
            group.append(Op("create", self._p("vms", vm_id), _dump(vm.to_json())))
            group.append(Op("create", self._p("vmspecs", vm_id), _dump(spec)))
            group += (guests or {}).get(vm_id, [])
            if sum(op.weight for op in group) > self.single_tx_bytes:
                raise TooLarge(f"the records of {vm_id!r} are over {self.single_tx_bytes} bytes", index)
            groups.append(group)
        request_id = task.get("requestId")
        request_ops = [Op("create", self._p("requests", request_id), str(task["taskId"]).encode())] if request_id else []
        task = dict(task, state=PENDING, recording="single", subnet=subnet)
        size = len(_dump(task)) + 64 + sum(op.weight for g in groups for op in g) + sum(op.weight for op in request_ops)
        if addresses is not None:
            size += ADDRESS_WEIGHT * len(groups)
        single = size <= self.single_tx_bytes
        if not single:
            task.update(state=RECORDING, recording="chunked")
        task_ops = [Op("create", self._p("tasks", task["taskId"]), _dump(task)), *request_ops]
        if len(_dump(task)) + 64 > self.single_tx_bytes:
            raise TooLarge("the task record is too large", 0)
        return SubmissionPlan(task, task_ops, groups, single, size, [vm.vm_id for vm in vms], addresses)

    async def create_submission(
        self, task: dict[str, Any], vms: Sequence[VMRecord], specs: list[dict[str, Any]], subnet: str, epoch: int,
        addresses: SubmissionAddresses | None = None, guests: dict[str, list[Op]] | None = None,
    ) -> dict[str, Any]:
        """Record a submission wholly or not at all; returns the task as written (PENDING), and
        the VM records know their znodes' versions from then on.

        On a failure the leader still leads (AlreadyExists, Changed, CoordinationError) what was
        written is rolled back before the error is raised; on StaleEpoch it is left to the new
        leader, which settles the intent record."""
        plan = self.plan_submission(task, vms, specs, subnet, addresses, guests)

        def created() -> None:
            for vm in vms:
                vm.saved(0)  # a znode's version is 0 when it is created

        def do() -> dict[str, Any]:
            self._ensure_parents(subnet)
            if plan.single:
                self._tx(plan.ops(), epoch)
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
        pools = {v: held for v, r in mine.items() if (held := pool_of(r))}
        groups = self._vm_deletions({v: r.version for v, r in mine.items()}, specs,
                                    self._ipam_owners(ips, task.get("subnet")))
        self._tx_vm_deletions(groups, pools, epoch)
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
    ) -> list[tuple[str, list[Op]]]:
        """Per VM (id -> its record's version): delete its record at that version, its spec, the
        address it owns (``owned``: at the version read) and its guest in the network model."""
        guests = self._guest_deletions(list(records))
        groups: list[tuple[str, list[Op]]] = []
        for vm_id, version in records.items():
            group: list[Op] = []
            if vm_id in owned:
                group.append(Op("delete", owned[vm_id][0], version=owned[vm_id][1]))
            group.append(Op("delete", self._p("vms", vm_id), version=version))
            spec_path = self._p("vmspecs", vm_id)
            if spec_path in specs:
                group.append(Op("delete", spec_path))
            group += guests.get(vm_id, [])
            groups.append((vm_id, group))
        return groups

    def _tx_vm_deletions(self, groups: list[tuple[str, list[Op]]], pools: dict[str, tuple[str, str]],
                         epoch: int | None) -> None:
        """Write ``_vm_deletions``' groups in chunks, each with the release of its VMs' addresses
        from their pools (``pools``: vm id -> (subnet id, address))."""
        for chunk in _chunks_of(groups, self.chunk_bytes, extra=ADDRESS_WEIGHT if pools else 0):
            ops = [op for _vm, group in chunk for op in group]
            ops += self._release_ops({v: pools[v] for v, _g in chunk if v in pools})
            self._tx(ops, epoch)

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
        if any(r.released and r.subnet in (None, DEFAULT_SUBNET) for r in todo) and not subnet:
            raise ValueError("update_vms: addresses were released but no subnet was given")
        if todo:
            await self.coord.call(self._write_vms, todo, epoch, subnet, timeout=60)

    def _write_vms(self, todo: list[VMRecord], epoch: int | None, subnet: str | None) -> None:
        for _attempt in range(WRITE_ATTEMPTS):
            stamp = time.time()
            released = {r.vm_id: ip for r in todo if (ip := r.released)}
            owners = self._ipam_owners(released, subnet) if released else {}
            pools = {r.vm_id: (r.subnet or DEFAULT_SUBNET, ip) for r in todo if (ip := r.released)}
            guests = self._guest_deletions(list(released))
            groups: list[tuple[VMRecord, list[Op]]] = []
            for rec in todo:
                if rec.version < 0:
                    raise ValueError(f"the record of {rec.vm_id} was not read from ZooKeeper: it cannot be updated")
                rec.updated_at = stamp
                group = [Op("set", self._p("vms", rec.vm_id), _dump(rec.to_json()), rec.version)]
                if rec.vm_id in owners:
                    path, version = owners[rec.vm_id]
                    group.append(Op("delete", path, version=version))
                group += guests.get(rec.vm_id, [])
                groups.append((rec, group))
            conflicted: list[VMRecord] = []
            for chunk in _chunks_of(groups, self.chunk_bytes, extra=ADDRESS_WEIGHT if pools else 0):
                # The releases come last: a record's set stays first in its group (its result).
                releases = self._release_ops({r.vm_id: pools[r.vm_id] for r, _g in chunk if r.vm_id in pools})
                try:
                    results = self._tx([op for _rec, group in chunk for op in group] + releases, epoch)
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
            return {k: v for k, (v, _ver) in self._read_many("tasks", self._children("tasks"), listed=True).items()}

        return await self.coord.call(do, timeout=60)

    # -- retention -----------------------------------------------------------------------
    async def expire(self, retention: float, now: float, epoch: int, subnet: str) -> dict[str, int]:
        """Forget finished tasks and finished VM records older than ``retention`` seconds (see
        the module docstring); returns how many tasks and VMs were removed."""
        return await self.coord.call(self._expire, retention, now, epoch, subnet, timeout=120)

    def _expire(self, retention: float, now: float, epoch: int, subnet: str) -> dict[str, int]:
        # VMs are read before tasks: a VM listed here had its task written before or with it,
        # so a task missing below is really gone (not yet to be written).
        vms = {k: v for k, v in self._read_records(self._children("vms"), listed=True).items() if isinstance(v, VMRecord)}
        tasks = self._read_many("tasks", self._children("tasks"), listed=True)

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
        pools = {v: held for v, r in doomed.items() if (held := pool_of(r))}
        self._tx_vm_deletions(self._vm_deletions({v: r.version for v, r in doomed.items()}, specs,
                                                 self._ipam_owners(ips, subnet)), pools, epoch)
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
                held = pool_of(entry)
                try:
                    self._tx_vm_deletions(self._vm_deletions({vm_id: entry.version}, specs, owned),
                                          {vm_id: held} if held else {}, None)
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

    # -- sleeping hosts: powered down, known to the cluster, not only to their manager ------
    async def put_sleeping(self, lc_id: str, description: dict[str, Any], gm_id: str) -> None:
        """Record that ``lc_id`` sleeps, managed by ``gm_id`` (``sleeping/<lc>``, persistent: it
        outlives the group manager, so the leader can hand the host to another)."""
        if not is_valid_id(lc_id):
            raise ValueError(f"not a valid local controller id: {lc_id!r}")
        data = _dump({"localController": description, "groupManagerId": gm_id, "since": time.time()})

        def put() -> None:
            path = self._p("sleeping", lc_id)
            try:
                self.coord.client.create(path, data, makepath=True)
            except NodeExistsError:
                self.coord.client.set(path, data)

        await self.coord.call(put)

    async def sleeping(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Every sleeping host: lc id -> (its entry, the znode's version)."""
        def read() -> dict[str, tuple[dict[str, Any], int]]:
            return self._read_many("sleeping", self._children("sleeping"), listed=True)

        return await self.coord.call(read)

    async def hand_sleeping(self, lc_id: str, entry: dict[str, Any], version: int, gm_id: str) -> bool:
        """Give sleeping host ``lc_id`` to ``gm_id``, if its entry is still at ``version`` (False:
        it woke, or someone else moved it meanwhile)."""
        data = _dump({**entry, "groupManagerId": gm_id})

        def put() -> bool:
            try:
                self.coord.client.set(self._p("sleeping", lc_id), data, version=version)
            except (NoNodeError, BadVersionError):
                return False
            return True

        return is_valid_id(lc_id) and await self.coord.call(put)

    async def clear_sleeping(self, lc_id: str, gm_id: str | None = None) -> None:
        """``lc_id`` is awake (or forgotten): its entry goes; with ``gm_id``, only if it still
        names that group manager."""
        def delete() -> None:
            path = self._p("sleeping", lc_id)
            try:
                if gm_id is not None:
                    raw, stat = self.coord.client.get(path)
                    try:
                        owner = json.loads(raw).get("groupManagerId")
                    except (ValueError, AttributeError):
                        owner = None
                    if owner not in (None, gm_id):
                        return
                    self.coord.client.delete(path, version=stat.version)
                else:
                    self.coord.client.delete(path)
            except (NoNodeError, BadVersionError):
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


_K = TypeVar("_K")


def _chunks_of(groups: list[tuple[_K, list[Op]]], limit: int, extra: int = 0) -> Iterator[list[tuple[_K, list[Op]]]]:
    """``chunked`` for groups that belong to a record (or a VM id); ``extra``: bytes each
    group adds besides its ops (its address's release or reservation)."""
    chunk: list[tuple[_K, list[Op]]] = []
    size = 0
    for rec, group in groups:
        weight = sum(op.weight for op in group) + extra
        if chunk and size + weight > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append((rec, group))
        size += weight
    if chunk:
        yield chunk
