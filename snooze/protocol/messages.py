"""The internal messages: one typed class per kind, and how each reads and writes its body.

The envelope (``snooze.protocol.envelope``) carries a message's ``KIND`` and its ``to_wire()``
body: a plain, msgpack-able dict whose keys are the original's (camelCase), so a process of
this version and one of the previous version understand each other. ``from_wire(body)`` reads
a body by os-vif's rule for a mixed-version cluster:

* a field this version does not know (a newer sender's) is ignored;
* an optional field that is missing (an older sender's) gets its default;
* a required field that is missing, or any field of the wrong type, raises ``BadMessage``
  naming the field; the internal endpoint answers it 400 ``BAD_MESSAGE`` with that field.

Hence the upgrade order: group managers (and the bootstrap) before local controllers, since a
newer receiver reads an older sender, never the reverse. A field is added as optional; it may
become required only once every sender of the cluster sends it.

A class declares its fields as a frozen dataclass; ``wire("name")`` gives a field's key when it
is not the attribute's name. Types: ``str``, ``int``, ``float`` (an int is accepted), ``bool``,
``dict[str, Any]``, ``list[Any]``, ``list[str]``, ``Any``, and any of them ``| None``. A field
that is ``None`` is left out of the body (a sender of the previous version left it out too).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from snooze.codes import ErrorCode
from snooze.protocol.envelope import ProtocolError

__all__ = [
    "KINDS",
    "AdoptSleepingHosts",
    "AssignLocalController",
    "BadMessage",
    "DescribeGroupManager",
    "DescribeLocalController",
    "EnergySaverSwitch",
    "GroupLeaderHeartbeat",
    "GroupManagerHeartbeat",
    "GroupManagerJoin",
    "Hierarchy",
    "LocalControllerHeartbeat",
    "LocalControllerJoin",
    "LocalControllerMigrate",
    "LocalControllerResize",
    "LocalControllerStartVirtualMachines",
    "LocalControllerVmAction",
    "Message",
    "Migrate",
    "Monitoring",
    "PlugVif",
    "PowerSave",
    "PrepareMigration",
    "ReceiveDomain",
    "Reconfigure",
    "Rejoin",
    "ReleaseLocalControllers",
    "Reservation",
    "Resize",
    "StartVirtualMachines",
    "Summary",
    "VirtualClusterResponse",
    "VmAction",
    "VmInfo",
    "wire",
]

M = TypeVar("M", bound="Message")


class BadMessage(ProtocolError):
    """A message body this version cannot read: ``field`` names the field that is missing or
    of the wrong type (None: the body itself is not a map)."""

    code = ErrorCode.BAD_MESSAGE


def wire(name: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose key on the wire is ``name``."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"wire": name})
    if isinstance(default, (list, dict)):
        factory = type(default)
        return dataclasses.field(default_factory=factory, metadata={"wire": name})
    return dataclasses.field(default=default, metadata={"wire": name})


@dataclasses.dataclass(frozen=True)
class Message:
    """The base of every internal message: a ``KIND`` and its body's fields."""

    KIND: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        """The body: the original's keys; fields that are None left out."""
        body: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            body[f.metadata.get("wire", f.name)] = value
        return body

    @classmethod
    def from_wire(cls: type[M], body: Any) -> M:
        """Read a body (os-vif's rule, see the module): unknown keys ignored, missing optional
        ones defaulted; ``BadMessage`` names a missing required field or one of a wrong type.
        A message with no required field also reads an empty (None) body."""
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise BadMessage(f"{cls.KIND}: the body must be a map, not {type(body).__name__}")
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.metadata.get("wire", f.name)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if key not in body or (body[key] is None and not required):
                if required:
                    raise BadMessage(f"{cls.KIND}: {key} is required", field=key)
                continue  # the dataclass default
            values[f.name] = _check(cls.KIND, key, body[key], hints[f.name])
        return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _check(kind: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` if it is of type ``hint``, else BadMessage naming ``key``."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(kind, key, value, inner[0])
    ok: bool
    if hint is Any:
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an int no float can hold
                ok = False
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is dict:
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        if ok:
            value = dict(value)
    elif origin is list:
        ok = isinstance(value, (list, tuple))
        if ok and args and args[0] is str:
            ok = all(isinstance(v, str) for v in value)
        if ok:
            value = list(value)
    else:  # pragma: no cover - a class declared a type this reader does not know
        raise TypeError(f"{kind}.{key}: unsupported field type {hint!r}")
    if not ok:
        raise BadMessage(f"{kind}: {key} must be {_name(hint)}, not {type(value).__name__}", field=key)
    return value


def _name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is dict:
        return "a map"
    if origin is list:
        return "a list"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


# -- joining and the hierarchy -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GroupManagerJoin(Message):
    """A group manager joins the group leader (answered by the leader: ``epoch``, ``groupLeaderId``)."""

    KIND: ClassVar[str] = "gm.join"
    group_manager: dict[str, Any] = wire("groupManager")


@dataclasses.dataclass(frozen=True)
class Summary(Message):
    """A group manager's summary of its hosts, to the group leader (answered ``ok``)."""

    KIND: ClassVar[str] = "gm.summary"
    id: str
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AssignLocalController(Message):
    """A local controller asks the group leader for a group manager (answered ``groupManager``, ``epoch``)."""

    KIND: ClassVar[str] = "lc.assign"
    local_controller: dict[str, Any] = wire("localController", {})
    exclude: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LocalControllerJoin(Message):
    """A local controller joins its group manager with the domains it has (answered ``groupManagerId``, ``epoch``)."""

    KIND: ClassVar[str] = "lc.join"
    local_controller: dict[str, Any] = wire("localController")
    domains: list[Any] = dataclasses.field(default_factory=list)
    #: The host's VIF plugins and object versions (a ``snooze.vif`` HostInfo's wire form);
    #: absent from a host that plugs nothing (and from one older than VIF plugging).
    host_info: dict[str, Any] | None = wire("hostInfo", None)
    #: Back to the group manager that had it, without the leader: taken only by one that has
    #: it, or dropped it as silent a short while ago (a host that stalled, a link that healed).
    returning: bool = False


@dataclasses.dataclass(frozen=True)
class Rejoin(Message):
    """A group manager (handing over) orders its local controllers to re-join, perhaps elsewhere."""

    KIND: ClassVar[str] = "lc.rejoin"
    exclude: bool = False
    leader: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class AdoptSleepingHosts(Message):
    """The group leader hands a group manager the sleeping hosts of one that is gone (each the
    ``sleeping/<lc>`` entry: ``localController``, ``groupManagerId``); answered ``adopted``."""

    KIND: ClassVar[str] = "gm.adoptSleeping"
    hosts: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ReleaseLocalControllers(Message):
    """The group leader, rebalancing, asks a group manager to let go of up to ``count`` local
    controllers it can spare now (answered ``released``: their ids and addresses), which the
    leader then sends to group manager ``target``."""

    KIND: ClassVar[str] = "gm.releaseLocalControllers"
    count: int = 1
    target: str = ""


@dataclasses.dataclass(frozen=True)
class Hierarchy(Message):
    """The bootstrap asks the group leader for the whole hierarchy (no fields)."""

    KIND: ClassVar[str] = "gl.hierarchy"


@dataclasses.dataclass(frozen=True)
class DescribeGroupManager(Message):
    """The group leader asks a group manager for its local controllers (no fields)."""

    KIND: ClassVar[str] = "gm.describe"


@dataclasses.dataclass(frozen=True)
class DescribeLocalController(Message):
    """A group manager asks a local controller for its domains (no fields)."""

    KIND: ClassVar[str] = "lc.describe"


@dataclasses.dataclass(frozen=True)
class Monitoring(Message):
    """A local controller's periodic sample, to its group manager (answered ``ok``)."""

    KIND: ClassVar[str] = "lc.monitoring"
    id: str
    timestamp: float | None = None
    host_usage: list[Any] = wire("hostUsage", [])
    virtual_machines: dict[str, Any] = wire("virtualMachines", {})
    domains: list[Any] = dataclasses.field(default_factory=list)
    #: This report's number: a later heartbeat with ``unchanged`` = it stands for the same
    #: report again (None: the sender does not send such heartbeats).
    seq: int | None = None


# -- virtual clusters and VMs --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VirtualClusterResponse(Message):
    """The bootstrap asks the group leader for a submission's outcome (answered ``response``)."""

    KIND: ClassVar[str] = "gl.virtualClusterResponse"
    task_id: str = wire("taskId")


@dataclasses.dataclass(frozen=True)
class StartVirtualMachines(Message):
    """The group leader orders a group manager to start VMs (answered per VM)."""

    KIND: ClassVar[str] = "gm.startVirtualMachines"
    vms: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LocalControllerStartVirtualMachines(Message):
    """A group manager orders a local controller to start VMs (answered per VM)."""

    KIND: ClassVar[str] = "lc.startVirtualMachines"
    vms: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class VmAction(Message):
    """The bootstrap asks a group manager to act on one VM (suspend, resume, shutdown, destroy, reboot)."""

    KIND: ClassVar[str] = "gm.vmAction"
    action: str
    vm_id: str = wire("vmId")
    local_controller_id: str | None = wire("localControllerId", None)
    uuid: str | None = None


@dataclasses.dataclass(frozen=True)
class LocalControllerVmAction(Message):
    """A group manager orders a local controller to act on one of its domains."""

    KIND: ClassVar[str] = "lc.vmAction"
    action: str
    vm_id: str = wire("vmId")
    uuid: str | None = None


@dataclasses.dataclass(frozen=True)
class VmInfo(Message):
    """The bootstrap asks a group manager for one VM's live state."""

    KIND: ClassVar[str] = "gm.vmInfo"
    vm_id: str = wire("vmId")
    local_controller_id: str | None = wire("localControllerId", None)


@dataclasses.dataclass(frozen=True)
class Resize(Message):
    """Change one running VM's vcpus and memory (and its network demand): from the bootstrap or a
    group manager's original API, to the VM's group manager. ``capacity`` is the original's
    ``resizedCapacity``, ``[cpu, memory KiB, rx, tx]`` with -1 keeping a dimension."""

    KIND: ClassVar[str] = "gm.resize"
    vm_id: str = wire("vmId")
    capacity: Any = None
    local_controller_id: str | None = wire("localControllerId", None)


@dataclasses.dataclass(frozen=True)
class LocalControllerResize(Message):
    """A group manager orders a local controller to set a domain's vcpus and memory (KiB), live."""

    KIND: ClassVar[str] = "lc.resize"
    vm_id: str = wire("vmId")
    vcpus: int = 0
    memory: int = 0
    requested: Any = None
    uuid: str | None = None


@dataclasses.dataclass(frozen=True)
class Migrate(Message):
    """Migrate one VM: from the bootstrap (a client's order) or a manager's own reconfiguration."""

    KIND: ClassVar[str] = "gm.migrate"
    vm_id: str = wire("vmId")
    source_lc_id: str | None = wire("sourceLcId", None)
    destination: Any = None
    requested: Any = None
    uuid: str | None = None


@dataclasses.dataclass(frozen=True)
class Reservation(Message):
    """Reserve, commit or release room for an incoming VM on another group manager's host."""

    KIND: ClassVar[str] = "gm.reservation"
    op: str
    lc_id: str | None = wire("lcId", None)
    vm_id: str | None = wire("vmId", None)
    requested: Any = None
    ttl: float | None = None
    uuid: str | None = None


@dataclasses.dataclass(frozen=True)
class LocalControllerMigrate(Message):
    """A group manager orders the source local controller to migrate a domain."""

    KIND: ClassVar[str] = "lc.migrate"
    vm_id: str = wire("vmId")
    destination: Any = None
    uuid: str | None = None


@dataclasses.dataclass(frozen=True)
class ReceiveDomain(Message):
    """A non-live migration: the source local controller hands the destination a domain's XML."""

    KIND: ClassVar[str] = "lc.receiveDomain"
    xml: str
    vm_id: str = wire("vmId")


@dataclasses.dataclass(frozen=True)
class PrepareMigration(Message):
    """Before a non-shared migration of a VM booting from an image of the repository, the
    source local controller asks the destination to make the VM's files there: the image in
    its cache, an empty overlay of ``size`` bytes on it and the config drive (``cidata``:
    base64 of its gzip-compressed bytes). The reply names the destination's paths. ``cancel``:
    the migration failed, remove them again (unless the domain runs there)."""

    KIND: ClassVar[str] = "lc.prepareMigration"
    vm_id: str = wire("vmId")
    image_id: str | None = wire("imageId", None)
    size: int | None = None
    cidata: str | None = None
    cancel: bool = False


@dataclasses.dataclass(frozen=True)
class PlugVif(Message):
    """Before a live migration of a plugged VM, the source local controller asks the
    destination to plug the VM's VIF (``vif``: its wire form; ``uuid``: the domain's) so that
    QEMU there finds its tap; ``cancel``: the migration failed, unplug it again (unless the
    domain runs there)."""

    KIND: ClassVar[str] = "lc.plugVif"
    vm_id: str = wire("vmId")
    vif: dict[str, Any] | None = None
    uuid: str | None = None
    cancel: bool = False


# -- power and reconfiguration -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EnergySaverSwitch(Message):
    """The bootstrap suspends or resumes a group manager's energy saver (absent: just report)."""

    KIND: ClassVar[str] = "gm.energySaver"
    enabled: bool | None = None


@dataclasses.dataclass(frozen=True)
class PowerSave(Message):
    """A group manager orders an idle local controller into a power-saving state."""

    KIND: ClassVar[str] = "lc.powerSave"
    state: str | None = None


@dataclasses.dataclass(frozen=True)
class Reconfigure(Message):
    """Run a group manager's consolidation or relocation once (``what``)."""

    KIND: ClassVar[str] = "gm.reconfigure"
    what: str | None = None


# -- heartbeats (UDP, unanswered) ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GroupManagerHeartbeat(Message):
    """A group manager's heartbeat to its local controllers and the group leader."""

    KIND: ClassVar[str] = "gm.heartbeat"
    id: str


@dataclasses.dataclass(frozen=True)
class LocalControllerHeartbeat(Message):
    """A local controller's heartbeat to its group manager."""

    KIND: ClassVar[str] = "lc.heartbeat"
    id: str
    #: Sent in place of a monitoring report whose content did not change: the ``seq`` of the
    #: last report sent whole, which the group manager then takes again (``docs/architecture.md``).
    unchanged: int | None = None


@dataclasses.dataclass(frozen=True)
class GroupLeaderHeartbeat(Message):
    """The group leader's heartbeat (multicast): its description, read with
    ``GroupManagerDescription.from_json``; the body is that description itself."""

    KIND: ClassVar[str] = "gl.heartbeat"
    id: str


#: Every message class by its kind. ``gl.startVirtualCluster`` (the submission itself, checked
#: by ``snooze.virtualcluster``) has no class here: its body is the client's request.
KINDS: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        GroupManagerJoin, Summary, AssignLocalController, LocalControllerJoin, Rejoin, Hierarchy,
        DescribeGroupManager, DescribeLocalController, Monitoring, VirtualClusterResponse, StartVirtualMachines,
        LocalControllerStartVirtualMachines, VmAction, LocalControllerVmAction, VmInfo, Resize, LocalControllerResize,
        Migrate, Reservation,
        LocalControllerMigrate, ReceiveDomain, PrepareMigration, PlugVif, EnergySaverSwitch, PowerSave, Reconfigure, GroupManagerHeartbeat,
        LocalControllerHeartbeat, GroupLeaderHeartbeat, AdoptSleepingHosts, ReleaseLocalControllers,
    )
}
