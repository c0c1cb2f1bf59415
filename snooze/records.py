"""The record of one VM in ZooKeeper (``vms/<id>``), typed: read, changed and written through
``VMRecord``, never as a dictionary.

The JSON layout is the one every version wrote (camelCase keys: ``virtualMachineId``,
``status``, ``errorCode``, ``localControllerId`` …), so records written by an older version are
read, and an older version reads ours. Reading follows the rule of the internal messages:

* a key this version does not know (written by a newer one) is kept, and written back with the
  record, so an older writer never drops a newer one's fields;
* an optional key that is missing takes its default;
* a record that cannot be used (not JSON, not an object, another VM's id, no status or one this
  version does not know, a field of the wrong type) is a ``RecordError`` that says why: the
  group leader reports such a VM ERROR (``VIRTUAL_MACHINE_RECORD_UNREADABLE``) and goes on.

Changes go through methods (``dispatch_to``, ``record_result``, ``lose``, ``move`` …), never by
setting fields, for a reason: every write of a record is **version-checked**
(``Store.update_vms``), and when another writer changed the record since it was read (a group
manager moving a VM while the leader records its start), the store reads it again and *replays*
the changes made to the stale copy on the fresh one (``rebase``). Each method therefore checks
the state it applies to (``dispatch_to`` moves only a PENDING VM, ``lose`` only one still placed
on the host that lost it), so a replay on a record someone else changed does the right thing,
and neither writer's update is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Concatenate, ParamSpec

from snooze.codes import FINISHED, IN_FLIGHT, CodedError, ErrorCode, VMStatus
from snooze.models import Capacity, NetworkAddress, capacity

__all__ = ["RecordError", "VMRecord"]

P = ParamSpec("P")


class RecordError(CodedError, ValueError):
    """A VM record that cannot be read; ``problem`` says why, ``raw`` is the decoded JSON (if it
    was JSON), ``version`` the znode's version (so that it can be replaced, version-checked)."""

    code = ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE

    def __init__(self, vm_id: str, problem: str, raw: Any = None, version: int = -1) -> None:
        super().__init__(f"the record of {vm_id} cannot be read: {problem}")
        self.vm_id = vm_id
        self.problem = problem
        self.raw = raw
        self.version = version


Change = tuple[Callable[..., None], tuple[Any, ...], dict[str, Any]]


def _change(method: Callable[Concatenate[VMRecord, P], None]) -> Callable[Concatenate[VMRecord, P], None]:
    """A method that changes a record: applied at once, and logged so that ``rebase`` can apply
    it again to a fresher copy of the record."""

    def logged(self: VMRecord, /, *args: P.args, **kwargs: P.kwargs) -> None:
        self._changes.append((method, args, kwargs))
        method(self, *args, **kwargs)

    logged.__name__, logged.__qualname__, logged.__doc__ = method.__name__, method.__qualname__, method.__doc__
    return logged


# JSON key -> attribute, for the keys every record has (written even when empty, as before).
_CORE = {
    "virtualMachineId": "vm_id", "taskId": "task_id", "status": "status", "errorCode": "error_code",
    "requestedCapacity": "requested", "ipAddress": "ip", "macAddress": "mac", "localControllerId": "lc_id",
    "groupManagerId": "gm_id", "submittedAt": "submitted_at",
}
# JSON key -> attribute, for the keys written only when set.
_OPTIONAL = {
    "message": "message", "localControllerControlDataAddress": "lc_address",
    "groupManagerControlDataAddress": "gm_address", "uuid": "uuid", "adaptations": "adaptations",
    "rejections": "rejections", "lastMigration": "last_migration", "updatedAt": "updated_at",
    "lostAt": "lost_at", "lostOn": "lost_on", "restartedAt": "restarted_at", "restarts": "restarts",
    # The network model (issue 12): the subnet its address is in (absent: the default subnet,
    # ``[groupmanager] virtual_machine_subnet``, as every record before it), and the objects
    # its template named.
    "subnet": "subnet", "network": "network", "flavor": "flavor", "firewallGroup": "fwgroup",
    "vlanGroup": "vlangroup",
    # Who submitted it (snooze.auth): a user's token sees and touches only their own VMs.
    "owner": "owner",
}
_KEYS = {**_CORE, **_OPTIONAL}


@dataclass(eq=False)
class VMRecord:
    """``vms/<id>``: a VM's small, often-updated state (its spec, written once, is ``vmspecs/<id>``)."""

    vm_id: str
    status: VMStatus
    task_id: str | None = None
    error_code: ErrorCode | None = None
    message: str | None = None
    requested: Capacity | None = None
    ip: str | None = None
    mac: str | None = None
    lc_id: str | None = None
    lc_address: NetworkAddress | None = None
    gm_id: str | None = None
    gm_address: NetworkAddress | None = None
    uuid: str | None = None
    adaptations: list[str] = field(default_factory=list)
    rejections: dict[str, int] | None = None
    last_migration: dict[str, Any] | None = None
    submitted_at: float | None = None
    updated_at: float | None = None
    lost_at: float | None = None
    lost_on: str | None = None
    restarted_at: float | None = None
    restarts: int = 0
    subnet: str | None = None
    network: str | None = None
    flavor: str | None = None
    fwgroup: str | None = None
    vlangroup: str | None = None
    owner: str | None = None
    #: Keys this version does not know (a newer writer's), kept and written back.
    extra: dict[str, Any] = field(default_factory=dict)
    #: The znode's version when read (-1: not read from ZooKeeper); not part of the JSON.
    version: int = -1
    _changes: list[Change] = field(default_factory=list, repr=False)
    #: The address ``release_address`` gave back, until the write that deletes its allocation.
    _released: str | None = field(default=None, repr=False)
    #: Written whole over an unreadable record (``unreadable``), not by replaying changes.
    _replacing: bool = field(default=False, repr=False)

    # -- building --------------------------------------------------------------------------
    @classmethod
    def pending(cls, vm_id: str, task_id: str, requested: Capacity, ip: str | None, mac: str | None,
                subnet: str = "", *, refused: tuple[ErrorCode, str] | None = None, subnet_id: str | None = None,
                network: str | None = None, flavor: str | None = None, fwgroup: str | None = None,
                vlangroup: str | None = None, owner: str | None = None) -> VMRecord:
        """A newly submitted VM (PENDING), or ERROR ``NO_FREE_IP_ADDRESS`` when ``ip`` is None,
        or ERROR with ``refused`` (code, message: an unknown flavor, network …); ``subnet_id``
        … ``vlangroup``: the network model's objects it is tied to (``subnet``: for the message)."""
        rec = cls(vm_id, VMStatus.PENDING, task_id=task_id, requested=requested, ip=ip, mac=mac, submitted_at=time.time(),
                  subnet=subnet_id, network=network, flavor=flavor, fwgroup=fwgroup, vlangroup=vlangroup, owner=owner)
        if refused is not None:
            rec.status, rec.error_code, rec.message = VMStatus.ERROR, refused[0], refused[1]
        elif ip is None:
            rec.status, rec.error_code, rec.message = VMStatus.ERROR, ErrorCode.NO_FREE_IP_ADDRESS, f"subnet {subnet} is full"
        return rec

    @classmethod
    def unreadable(cls, error: RecordError, task_id: str | None = None, spec: Any = None) -> VMRecord:
        """A readable ERROR record to write over one that cannot be read (of ``task_id``: by
        default the task it names, if it can be told). The address it held is kept (from the
        old record, else from its spec, written with the allocation), so that whoever fails it
        gives the address back to the pool."""
        old = error.raw if isinstance(error.raw, dict) else {}
        if task_id is None and isinstance(old.get("taskId"), str):
            task_id = old["taskId"]
        ip = old.get("ipAddress")
        if not isinstance(ip, str):
            ip = spec.get("ip") if isinstance(spec, dict) and isinstance(spec.get("ip"), str) else None
        requested: Capacity | None = None
        if isinstance(spec, dict):
            try:
                requested = capacity(spec.get("requested"))
            except ValueError:
                requested = None
        rec = cls(error.vm_id, VMStatus.ERROR, task_id=task_id, error_code=ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE,
                  message=f"its record in ZooKeeper cannot be read ({error.problem}); it was not started",
                  requested=requested, ip=ip, submitted_at=time.time(), version=error.version)
        rec._replacing = True
        return rec

    # -- reading and writing ---------------------------------------------------------------
    @classmethod
    def from_json(cls, value: Any, vm_id: str | None = None, *, version: int = -1) -> VMRecord:
        """The record in ``value`` (JSON text or bytes, or already decoded); ``vm_id`` is the id
        its znode is named after. RecordError says why it cannot be used."""
        name = vm_id or "a VM"
        if isinstance(value, (bytes, bytearray, str)):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                raise RecordError(name, f"not JSON: {exc}", None, version) from None
        if not isinstance(value, dict):
            raise RecordError(name, f"not a JSON object but {type(value).__name__}", value, version)
        raw_id = value.get("virtualMachineId")
        if not isinstance(raw_id, str) or (vm_id is not None and raw_id != vm_id):
            raise RecordError(name, f"virtualMachineId is {raw_id!r}", value, version)
        raw_status = value.get("status")
        if not isinstance(raw_status, str):
            raise RecordError(name, "it has no status", value, version)
        try:
            status = VMStatus(raw_status)
        except ValueError:
            raise RecordError(name, f"status {raw_status!r} is not one this version knows", value, version) from None
        try:
            rec = cls(raw_id, status, version=version, **_read_fields(value))
        except (TypeError, ValueError) as exc:
            raise RecordError(name, str(exc), value, version) from None
        rec.extra = {k: v for k, v in value.items() if k not in _KEYS}
        return rec

    def to_json(self) -> dict[str, Any]:
        """The record as written to ZooKeeper (unknown keys read from it included)."""
        out: dict[str, Any] = dict(self.extra)
        for key, attr in _KEYS.items():
            value = getattr(self, attr)
            if isinstance(value, NetworkAddress):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            if key in _CORE or value not in (None, [], {}, 0):
                out[key] = value
        return out

    def metadata(self, spec: dict[str, Any] | None = None, *, live: dict[str, Any] | None = None) -> dict[str, Any]:
        """The VM as the API shows it (the seed's VirtualMachineMetaData: getVirtualClusterResponse,
        getVirtualMachineMetaData, getVirtualMachineDescriptions)."""
        gm_address = self.gm_address.to_json() if self.gm_address else None
        location = {
            "virtualMachineId": self.vm_id,
            "localControllerId": self.lc_id,
            "groupManagerId": self.gm_id,
            "groupManagerControlDataAddress": gm_address,
            "localControllerControlDataAddress": self.lc_address.to_json() if self.lc_address else None,
        }
        return {
            "virtualMachineId": self.vm_id,
            "status": self.status,
            "errorCode": self.error_code,
            "message": self.message,
            "virtualMachineLocation": location,
            "usedCapacity": (live or {}).get("usedCapacity") or {},
            "requestedCapacity": list(self.requested) if self.requested is not None else None,
            "ipAddress": self.ip,
            "macAddress": self.mac,
            "groupManagerControlDataAddress": gm_address,
            "xmlRepresentation": (spec or {}).get("xml"),
            "imageId": (spec or {}).get("imageId"),
            "adaptations": list(self.adaptations),
            "rejections": dict(self.rejections or {}),
            "taskId": self.task_id,
            "lastMigration": self.last_migration,
            "owner": self.owner,
        }

    # -- what the store needs --------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Changed since it was read or last written."""
        return bool(self._changes) or self._replacing

    @property
    def released(self) -> str | None:
        """The address given back since the last write: its allocation is deleted with it."""
        return self._released

    def saved(self, version: int) -> None:
        """Written at ``version``: nothing left to write."""
        self.version = version
        self.drop_changes()

    def drop_changes(self) -> None:
        """Nothing of this copy's changes is to be written any more."""
        self._changes = []
        self._released = None
        self._replacing = False

    def rebase(self, fresh: VMRecord | RecordError) -> bool:
        """Take ``fresh`` (the record as read again after a version conflict) as this record's
        state, with this record's changes applied to it again; False when there is nothing left
        to write (a replacement for an unreadable record that is readable again)."""
        if self._replacing:
            if isinstance(fresh, RecordError):
                self.version = fresh.version
                return True
            self._adopt(fresh)  # readable again: that one stands
            return False
        if isinstance(fresh, RecordError):
            self.drop_changes()  # no longer a record these changes can apply to
            return False
        changes = list(self._changes)
        for method, args, kwargs in changes:
            fresh._changes.append((method, args, kwargs))
            method(fresh, *args, **kwargs)
        self._adopt(fresh)
        return True

    def _adopt(self, other: VMRecord) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))

    # -- changes (each checks the state it applies to: see the module docstring) -------------
    @_change
    def claim(self, task_id: str) -> None:
        """Of ``task_id``: an older version's record names no task, and that task lists it."""
        if self.task_id is None:
            self.task_id = task_id

    @_change
    def dispatch_to(self, gm_id: str) -> None:
        """Sent to group manager ``gm_id`` (before the order leaves: a new leader must know)."""
        if self.status is VMStatus.PENDING:
            self.status, self.gm_id = VMStatus.DISPATCHED, gm_id

    @_change
    def requeue(self) -> None:
        """Back to PENDING: a new leader found it started nowhere."""
        if self.status is VMStatus.DISPATCHED:
            self.status, self.gm_id = VMStatus.PENDING, None

    @_change
    def bounce(self, message: str | None, rejections: dict[str, int] | None) -> None:
        """Back to PENDING, for another group manager: its own refused it for a temporary
        reason (``message``, with the hosts each filter ``rejections`` rejected)."""
        if self.status is VMStatus.DISPATCHED:
            self.status, self.gm_id, self.message, self.rejections = VMStatus.PENDING, None, message, rejections

    @_change
    def fail(self, code: ErrorCode, message: str, rejections: dict[str, int] | None = None,
             only: tuple[VMStatus, ...] = IN_FLIGHT) -> None:
        """ERROR with ``code``, if its status is one of ``only`` (not yet started, by default)."""
        if self.status in only:
            self.status, self.error_code, self.message = VMStatus.ERROR, code, message
            if rejections is not None:
                self.rejections = rejections

    @_change
    def record_result(self, status: VMStatus, code: ErrorCode | None, message: str | None, gm_id: str,
                      gm_address: NetworkAddress | None, lc_id: str | None, lc_address: NetworkAddress | None,
                      adaptations: list[str], uuid: str | None = None) -> None:
        """What its group manager answered for it. A location written meanwhile (a group
        manager moved the VM since it started) is newer than this answer's, and stays.
        ``uuid``: the domain's, so that later orders name this VM and no other of its name."""
        if self.status not in IN_FLIGHT:
            return
        self.status, self.error_code, self.message, self.adaptations = status, code, message, list(adaptations)
        if self.lc_id is None:
            self.gm_id, self.gm_address, self.lc_id, self.lc_address = gm_id, gm_address, lc_id, lc_address
            self.uuid = uuid or self.uuid

    @_change
    def adopt(self, status: VMStatus, lc_id: str, lc_address: NetworkAddress | None) -> None:
        """A new leader found it running at ``lc_id``: a dispatch the old leader did not record."""
        if self.status is VMStatus.DISPATCHED:
            self.status, self.lc_id, self.lc_address, self.error_code = status, lc_id, lc_address, None

    @_change
    def resize(self, requested: Capacity) -> None:
        """Its host changed its vcpus and memory (and its network demand) to ``requested``."""
        if self.status.started:
            self.requested = requested

    @_change
    def release_address(self) -> None:
        """Give its address back to the pool, if it holds one and nothing runs (ERROR)."""
        if self.status is VMStatus.ERROR and self.ip is not None:
            self._released, self.ip, self.mac = self.ip, None, None

    @_change
    def abandon(self, code: ErrorCode, message: str) -> None:
        """Its submission's dispatch failed unexpectedly: ERROR if not yet started; its address
        goes back unless it was dispatched (then it may yet start, and keeps it)."""
        was = self.status
        if was in IN_FLIGHT:
            self.status, self.error_code, self.message = VMStatus.ERROR, code, message
        if was is not VMStatus.DISPATCHED and self.status is VMStatus.ERROR and self.ip is not None:
            self._released, self.ip, self.mac = self.ip, None, None

    @_change
    def lose(self, lc_id: str, message: str, at: float) -> None:
        """``lc_id`` re-joined without it: ERROR ``VIRTUAL_MACHINE_LOST``, its address given back
        (only if its record still places it there)."""
        if self.lc_id == lc_id and self.status.started:
            self.status, self.error_code, self.message = VMStatus.ERROR, ErrorCode.VIRTUAL_MACHINE_LOST, message
            self.lost_at, self.lost_on = at, lc_id
            if self.ip is not None:
                self._released, self.ip, self.mac = self.ip, None, None

    @_change
    def restart(self, lost_on: str, status: VMStatus, uuid: str | None, lc_id: str | None,
                lc_address: NetworkAddress | None, gm_id: str, gm_address: NetworkAddress, adaptations: list[str],
                message: str, at: float) -> None:
        """Started again from its spec after ``lost_on`` re-joined without it (only if its
        record still places it on ``lost_on``)."""
        if self.lc_id == lost_on and self.status.started:
            self.status, self.error_code, self.uuid, self.message = status, None, uuid, message
            self.lc_id, self.lc_address, self.gm_id, self.gm_address = lc_id, lc_address, gm_id, gm_address
            self.adaptations = list(adaptations or self.adaptations)
            self.restarted_at, self.restarts = at, self.restarts + 1

    @_change
    def move(self, lc_id: str, lc_address: NetworkAddress | None, gm_id: str | None, gm_address: NetworkAddress | None,
             uuid: str, details: dict[str, Any]) -> None:
        """Migrated to ``lc_id`` (of group manager ``gm_id``)."""
        self.lc_id, self.lc_address, self.gm_id, self.gm_address = lc_id, lc_address, gm_id, gm_address
        self.uuid, self.last_migration = uuid, details
        if self.error_code is ErrorCode.MIGRATION_NEEDS_RECOVERY and self.status is VMStatus.PAUSED:
            # Resumed (by an operator) and moved again since: it runs.
            self.status, self.error_code, self.message = VMStatus.RUNNING, None, None

    @_change
    def stall(self, code: ErrorCode, message: str, details: dict[str, Any]) -> None:
        """Its migration failed after the switch to post-copy: PAUSED at both hosts (or only a
        stale copy left), with ``code`` and the operator's instructions in ``message``."""
        if self.status.started:
            self.status, self.error_code, self.message, self.last_migration = VMStatus.PAUSED, code, message, details

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _text(value: Any, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{key} is {type(value).__name__}, not text")


def _number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} is {type(value).__name__}, not a number")
    return float(value)


def _address(value: Any, key: str) -> NetworkAddress | None:
    if value is None:
        return None
    try:
        return NetworkAddress.from_json(value)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TypeError(f"{key} is not an address: {value!r}") from None


def _read_fields(d: dict[str, Any]) -> dict[str, Any]:
    """The constructor's keyword arguments for every field of ``d`` beside id and status."""
    raw_code = d.get("errorCode")
    requested = d.get("requestedCapacity")
    adaptations = d.get("adaptations") or []
    if not isinstance(adaptations, list):
        raise TypeError("adaptations is not a list")
    rejections = d.get("rejections")
    if rejections is not None and not isinstance(rejections, dict):
        raise TypeError("rejections is not an object")
    last = d.get("lastMigration")
    if last is not None and not isinstance(last, dict):
        raise TypeError("lastMigration is not an object")
    restarts = d.get("restarts") or 0
    if isinstance(restarts, bool) or not isinstance(restarts, int):
        raise TypeError("restarts is not a whole number")
    return {
        "task_id": _text(d.get("taskId"), "taskId"),
        # A code this version does not know (a newer peer's) reads as UNKNOWN: the record stays usable.
        "error_code": ErrorCode.parse(raw_code) if raw_code is not None else None,
        "message": _text(d.get("message"), "message"),
        "requested": capacity(requested, field_name="requestedCapacity") if requested is not None else None,
        "ip": _text(d.get("ipAddress"), "ipAddress"),
        "mac": _text(d.get("macAddress"), "macAddress"),
        "lc_id": _text(d.get("localControllerId"), "localControllerId"),
        "lc_address": _address(d.get("localControllerControlDataAddress"), "localControllerControlDataAddress"),
        "gm_id": _text(d.get("groupManagerId"), "groupManagerId"),
        "gm_address": _address(d.get("groupManagerControlDataAddress"), "groupManagerControlDataAddress"),
        "uuid": _text(d.get("uuid"), "uuid"),
        "adaptations": [str(a) for a in adaptations],
        "rejections": rejections,
        "last_migration": last,
        "submitted_at": _number(d.get("submittedAt"), "submittedAt"),
        "updated_at": _number(d.get("updatedAt"), "updatedAt"),
        "lost_at": _number(d.get("lostAt"), "lostAt"),
        "lost_on": _text(d.get("lostOn"), "lostOn"),
        "restarted_at": _number(d.get("restartedAt"), "restartedAt"),
        "restarts": restarts,
        "subnet": _text(d.get("subnet"), "subnet"),
        "network": _text(d.get("network"), "network"),
        "flavor": _text(d.get("flavor"), "flavor"),
        "fwgroup": _text(d.get("firewallGroup"), "firewallGroup"),
        "vlangroup": _text(d.get("vlanGroup"), "vlanGroup"),
        "owner": _text(d.get("owner"), "owner"),
    }
