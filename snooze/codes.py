"""The one vocabulary of statuses and error codes: every status a VM record or a task can be
in, and every error code the system emits, with what each code means to a caller.

Everything else names a status or a code through these enums, never as a bare string (a test,
``tests/unit/test_codes.py``, scans the runtime packages for such literals). They are
``StrEnum``s: a member *is* its string, so the public JSON keeps the original Snooze's field
values (``"RUNNING"``, ``"NOT_ENOUGH_CAPACITY"``), a dictionary keyed by strings finds a
member, and msgpack and ``json.dumps`` write the plain value.

Each ``ErrorCode`` carries

* ``http_status``: the status an API error of this code is answered with (callers may pass
  another where the same code means something else at one place; ``snooze.http.ApiError``);
* ``retryable``: kopf's split. *Temporary* (``True``): nothing was done, and the same request
  may succeed later or elsewhere; the group leader sends a VM refused with such a code to
  another group manager, a group manager to another local controller, and a client may retry.
  *Permanent* (``False``): the same request would fail the same way (bad input, not found, a
  conflict with the state), or its outcome is unknown (a timeout: the order may have been
  carried out) and must be looked at before anything is tried again.

Codes travel between processes as text. A receiver reads them with ``ErrorCode.parse``, which
ignores case (versions before this module sent ``stale_epoch``, ``timeout`` …) and reads a
code it does not know (from a newer peer) as ``UNKNOWN``, the original Snooze's own "no idea".
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FINISHED", "IN_FLIGHT", "STARTED", "UNBOUND_HOST_ID", "CodedError", "ErrorCode", "TaskState", "VMStatus"]


class VMStatus(StrEnum):
    """A VM's status: in its record (``vms/<id>``), in the API's metadata, and a domain's state
    as its local controller reports it (libvirt's states, in the original's names)."""

    PENDING = "PENDING"  # recorded, not yet sent to a group manager
    DISPATCHED = "DISPATCHED"  # sent to a group manager, which may be starting it
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"  # suspended in memory (libvirt's paused and pmsuspended)
    SHUTDOWN = "SHUTDOWN"  # shutting down (libvirt's VIR_DOMAIN_SHUTDOWN)
    SHUTOFF = "SHUTOFF"  # defined but not running
    ERROR = "ERROR"  # failed (its errorCode says why), or crashed
    DESTROYED = "DESTROYED"  # gone from its host (metadata only: a destroyed VM's record is deleted)
    UNKNOWN = "UNKNOWN"  # libvirt has no state for the domain

    @property
    def started(self) -> bool:
        """Runs on a host and holds its capacity there (RUNNING or PAUSED)."""
        return self in STARTED


#: The original's ``hostId`` of a template bound to no host (its VirtualMachineTemplate's default).
UNBOUND_HOST_ID = "UNKNOWN"

# Tuples, not sets: membership is tested on what peers send, which may not be hashable.
#: Statuses of a VM that runs on its host and holds capacity there.
STARTED: tuple[VMStatus, ...] = (VMStatus.RUNNING, VMStatus.PAUSED)
#: Statuses of a VM on its way to a host (its record names no host yet).
IN_FLIGHT: tuple[VMStatus, ...] = (VMStatus.PENDING, VMStatus.DISPATCHED)
#: Statuses after which nothing runs: such a record is kept for the retention, then forgotten.
FINISHED: tuple[VMStatus, ...] = (VMStatus.ERROR, VMStatus.DESTROYED)


class TaskState(StrEnum):
    """A virtual-cluster submission's state (``tasks/<id>``; ``snooze.coordination.store``)."""

    RECORDING = "RECORDING"  # its intent record is written, its VMs may not all be yet
    PENDING = "PENDING"  # recorded whole; being dispatched
    DONE = "DONE"  # answered


TEMPORARY = True
PERMANENT = False


class EventKind(StrEnum):
    """What happened (the original's notification types)."""

    GROUP_LEADER_ELECTED = "GROUP_LEADER_ELECTED"
    GROUP_MANAGER_JOINED = "GROUP_MANAGER_JOINED"
    GROUP_MANAGER_FAILED = "GROUP_MANAGER_FAILED"
    LOCAL_CONTROLLER_JOINED = "LOCAL_CONTROLLER_JOINED"
    LOCAL_CONTROLLER_FAILED = "LOCAL_CONTROLLER_FAILED"
    LOCAL_CONTROLLER_ASSIGNED = "LOCAL_CONTROLLER_ASSIGNED"
    VIRTUAL_MACHINE_STATE = "VIRTUAL_MACHINE_STATE"
    MIGRATION_STARTED = "MIGRATION_STARTED"
    MIGRATION_FINISHED = "MIGRATION_FINISHED"
    MIGRATION_FAILED = "MIGRATION_FAILED"
    HOST_POWERED_DOWN = "HOST_POWERED_DOWN"
    HOST_WOKEN = "HOST_WOKEN"
    RECONFIGURATION = "RECONFIGURATION"


class ErrorCode(StrEnum):
    """Every error code the system emits, with its HTTP status and whether it is retryable."""

    http_status: int
    retryable: bool

    def __new__(cls, value: str, http_status: int = 500, retryable: bool = PERMANENT) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.http_status = http_status
        member.retryable = retryable
        return member

    @classmethod
    def parse(cls, raw: object) -> ErrorCode:
        """The code named by ``raw`` from a peer or a record: case ignored; a code this version
        does not know (a newer peer's) is ``UNKNOWN``."""
        if isinstance(raw, ErrorCode):
            return raw
        if isinstance(raw, str):
            try:
                return cls(raw.upper())
            except ValueError:
                pass
        return cls.UNKNOWN

    @classmethod
    def for_status(cls, status: int) -> ErrorCode:
        """The code of an HTTP error nothing more specific describes (a framework's own 404 …)."""
        return _BY_STATUS.get(status) or (cls.BAD_REQUEST if 400 <= status < 500 else cls.INTERNAL_ERROR)

    # -- the request: input that is wrong, whatever the cluster's state (400) -------------------
    BAD_REQUEST = "BAD_REQUEST", 400
    BAD_MESSAGE = "BAD_MESSAGE", 400  # an internal message body this version cannot read
    EMPTY_BODY = "EMPTY_BODY", 400
    BODY_INCOMPLETE = "BODY_INCOMPLETE", 400
    MALFORMED_JSON = "MALFORMED_JSON", 400
    MALFORMED_HTTP = "MALFORMED_HTTP", 400
    TOO_DEEP = "TOO_DEEP", 400
    INVALID_TEXT = "INVALID_TEXT", 400
    NUMBER_OUT_OF_RANGE = "NUMBER_OUT_OF_RANGE", 400
    INVALID_ID = "INVALID_ID", 400
    INVALID_REQUEST_ID = "INVALID_REQUEST_ID", 400
    INVALID_TEMPLATE = "INVALID_TEMPLATE", 400
    TEMPLATE_TOO_LARGE = "TEMPLATE_TOO_LARGE", 400
    INVALID_LIBVIRT_TEMPLATE = "INVALID_LIBVIRT_TEMPLATE", 400
    BAD_SPECIFICATION = "BAD_SPECIFICATION", 400
    BAD_CAPACITY = "BAD_CAPACITY", 400
    BAD_HYPERVISOR_SETTINGS = "BAD_HYPERVISOR_SETTINGS", 400
    CLIENT_URI_REFUSED = "CLIENT_URI_REFUSED", 400
    BAD_MIGRATION_REQUEST = "BAD_MIGRATION_REQUEST", 400
    SAME_LOCAL_CONTROLLER = "SAME_LOCAL_CONTROLLER", 400
    BAD_RESERVATION = "BAD_RESERVATION", 400
    BAD_RECONFIGURATION = "BAD_RECONFIGURATION", 400
    BAD_JOIN = "BAD_JOIN", 400
    UNKNOWN_ACTION = "UNKNOWN_ACTION", 400
    BODY_TOO_LARGE = "BODY_TOO_LARGE", 413
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT", 408, TEMPORARY  # the body came too slowly: send it again
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", 405
    #: A version-checked write (PUT of a network object) sent without the version it was read
    #: at (``If-Match``): refused rather than overwrite blindly what another writer saved.
    VERSION_REQUIRED = "VERSION_REQUIRED", 428
    #: An upload that is not a usable disk image: not qcow2 or raw, truncated or corrupt, or
    #: with a backing file (an image must stand alone: a backing path is a way out of the store).
    INVALID_IMAGE = "INVALID_IMAGE", 400
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE", 413
    #: An upload whose bytes do not match the checksum its client sent.
    IMAGE_CHECKSUM_MISMATCH = "IMAGE_CHECKSUM_MISMATCH", 400
    #: A network object (network, subnet, flavor, firewall group, VLAN, VLAN group, guest,
    #: hypervisor) with a bad field; the error's ``field`` names it (snooze.network.model).
    INVALID_NETWORK_OBJECT = "INVALID_NETWORK_OBJECT", 400
    #: A network object names another that does not exist (a subnet's network, a guest's flavor).
    UNKNOWN_REFERENCE = "UNKNOWN_REFERENCE", 400
    #: A versioned VIF object (snooze.vif) that does not read: unknown name or namespace, a
    #: field of the wrong type or unknown to its version; the error's ``field`` names it.
    INVALID_VIF_OBJECT = "INVALID_VIF_OBJECT", 400
    #: A VIF object of a newer version than the receiver knows, or a host whose VIF objects are
    #: newer than its group manager's: upgrade group managers before local controllers.
    VIF_VERSION_TOO_NEW = "VIF_VERSION_TOO_NEW", 400

    # -- who asks (snooze.auth) ----------------------------------------------------------------
    #: No token, or one that is malformed, unknown or revoked (answered with WWW-Authenticate).
    UNAUTHORIZED = "UNAUTHORIZED", 401
    #: A valid token whose role may not do this (a user asking an admin's verb).
    FORBIDDEN = "FORBIDDEN", 403

    # -- what the request names does not exist (404) -----------------------------------------
    NOT_FOUND = "NOT_FOUND", 404
    UNKNOWN_METHOD = "UNKNOWN_METHOD", 404
    UNKNOWN_TASK = "UNKNOWN_TASK", 404
    VIRTUAL_MACHINE_NOT_FOUND = "VIRTUAL_MACHINE_NOT_FOUND", 404
    LOCAL_CONTROLLER_NOT_FOUND = "LOCAL_CONTROLLER_NOT_FOUND", 404
    GROUP_MANAGER_NOT_FOUND = "GROUP_MANAGER_NOT_FOUND", 404
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND", 404
    #: No network object of that kind and id (snooze.network.store).
    NETWORK_OBJECT_NOT_FOUND = "NETWORK_OBJECT_NOT_FOUND", 404
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND", 404
    #: A container's port not declared in the network model yet (the CNI agent; the plugin polls).
    CNI_PORT_NOT_DECLARED = "CNI_PORT_NOT_DECLARED", 404, TEMPORARY
    #: A local controller left its group manager between a plan and its order: nothing was
    #: started, another host may take the VM.
    LOCAL_CONTROLLER_GONE = "LOCAL_CONTROLLER_GONE", 404, TEMPORARY
    #: A peer that does not know the sender (it restarted): join it again, then retry.
    NOT_JOINED = "NOT_JOINED", 404, TEMPORARY

    # -- the request conflicts with the cluster's state (409) --------------------------------
    VIRTUAL_MACHINE_EXISTS = "VIRTUAL_MACHINE_EXISTS", 409
    IMAGE_EXISTS = "IMAGE_EXISTS", 409
    #: A VM's disk is an overlay on this image: destroy the VMs first.
    IMAGE_IN_USE = "IMAGE_IN_USE", 409
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED", 409
    INVALID_STATE = "INVALID_STATE", 409
    VIRTUAL_MACHINE_MISMATCH = "VIRTUAL_MACHINE_MISMATCH", 409
    VIRTUAL_MACHINE_NOT_PLACED = "VIRTUAL_MACHINE_NOT_PLACED", 409
    OPERATION_NOT_SUPPORTED = "OPERATION_NOT_SUPPORTED", 409
    RESIZE_REFUSED = "RESIZE_REFUSED", 409  # the hypervisor cannot make that size live (e.g. above the domain's maximum)
    MIGRATION_FAILED = "MIGRATION_FAILED", 409
    #: A migration failed after its switch to post-copy and could not be resumed in time: the
    #: VM is paused at both hosts, its running state at the destination (where it is counted
    #: and recorded); its message says how to resume it (docs/migration.md).
    MIGRATION_NEEDS_RECOVERY = "MIGRATION_NEEDS_RECOVERY", 409
    #: A migration failed in post-copy and the destination lost the guest (its QEMU died): the
    #: copy paused at the source is stale and can never run; destroy the VM and submit it again.
    MIGRATION_GUEST_LOST = "MIGRATION_GUEST_LOST", 410
    LOCAL_CONTROLLER_NOT_ACTIVE = "LOCAL_CONTROLLER_NOT_ACTIVE", 409
    NOT_A_GROUP_MANAGER = "NOT_A_GROUP_MANAGER", 409
    HOST_NOT_IDLE = "HOST_NOT_IDLE", 409
    NO_FREE_IP_ADDRESS = "NO_FREE_IP_ADDRESS", 409
    #: A network object with that id exists already (saves are create-only).
    NETWORK_OBJECT_EXISTS = "NETWORK_OBJECT_EXISTS", 409
    #: A network object still used (a subnet with addresses, a flavor a guest names …): the
    #: message names the users; remove them first.
    NETWORK_OBJECT_IN_USE = "NETWORK_OBJECT_IN_USE", 409
    #: A CNI port's id names a guest that is not a container of this host (a VM's, another host's).
    CNI_PORT_CONFLICT = "CNI_PORT_CONFLICT", 409
    #: Not enough capacity on any host of a group manager (or of the cluster) right now.
    NOT_ENOUGH_CAPACITY = "NOT_ENOUGH_CAPACITY", 409, TEMPORARY
    #: A local controller's own re-check refused a start: nothing was started there.
    NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY = "NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY", 409, TEMPORARY
    MIGRATION_IN_PROGRESS = "MIGRATION_IN_PROGRESS", 409, TEMPORARY
    #: No VIF plugin of the host can plug the VM's network (os-vif's NoMatchingPlugin):
    #: another host may have one.
    NO_MATCHING_VIF_PLUGIN = "NO_MATCHING_VIF_PLUGIN", 409, TEMPORARY
    #: Another writer took a name or an address in between: look again.
    CONFLICT = "CONFLICT", 409, TEMPORARY

    # -- the cluster cannot serve it now: retry later (503, 429) -----------------------------
    ZOOKEEPER_UNAVAILABLE = "ZOOKEEPER_UNAVAILABLE", 503, TEMPORARY
    NO_GROUP_LEADER = "NO_GROUP_LEADER", 503, TEMPORARY
    NOT_GROUP_LEADER = "NOT_GROUP_LEADER", 503, TEMPORARY
    LEADER_SUSPENDED = "LEADER_SUSPENDED", 503, TEMPORARY
    LEADER_SETTLING = "LEADER_SETTLING", 503, TEMPORARY
    NO_GROUP_MANAGER = "NO_GROUP_MANAGER", 503, TEMPORARY
    #: A group manager asked to join the group leader without being registered in ZooKeeper
    #: (``groupmanagers/<id>`` at the same address): it must reach ZooKeeper first, then retry.
    GROUP_MANAGER_NOT_REGISTERED = "GROUP_MANAGER_NOT_REGISTERED", 503, TEMPORARY
    NOT_READY = "NOT_READY", 503, TEMPORARY
    LOCAL_CONTROLLER_UNAVAILABLE = "LOCAL_CONTROLLER_UNAVAILABLE", 503, TEMPORARY
    #: A local controller could not fetch an image from the repository: nothing was started.
    IMAGE_REPOSITORY_UNAVAILABLE = "IMAGE_REPOSITORY_UNAVAILABLE", 503, TEMPORARY
    #: The group leader could not hand a batch to a group manager: another may take it.
    GROUP_MANAGER_UNREACHABLE = "GROUP_MANAGER_UNREACHABLE", 503, TEMPORARY
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS", 429, TEMPORARY
    #: A local controller did not answer an order: it may have carried it out (a timeout), so
    #: nothing is tried elsewhere before someone looks (its next listing, the inventory check).
    LOCAL_CONTROLLER_UNREACHABLE = "LOCAL_CONTROLLER_UNREACHABLE", 503

    # -- something failed on the way (5xx): what happened must be looked at ------------------
    INTERNAL_ERROR = "INTERNAL_ERROR", 500
    HYPERVISOR_ERROR = "HYPERVISOR_ERROR", 502
    ACTION_FAILED = "ACTION_FAILED", 502
    POWER_ACTION_FAILED = "POWER_ACTION_FAILED", 502
    LOCAL_CONTROLLER_WAKEUP_FAILED = "LOCAL_CONTROLLER_WAKEUP_FAILED", 502
    BAD_REPLY = "BAD_REPLY", 502
    NO_ANSWER = "NO_ANSWER", 502
    MIGRATION_TIMEOUT = "MIGRATION_TIMEOUT", 504
    #: A VIF plugin could not plug the VM's interface (os-vif's PlugException): what it made
    #: was removed and nothing was started; another host may succeed.
    VIF_PLUG_FAILED = "VIF_PLUG_FAILED", 502, TEMPORARY
    #: A VIF plugin could not unplug an interface (os-vif's UnplugException).
    VIF_UNPLUG_FAILED = "VIF_UNPLUG_FAILED", 502
    #: The VIF library used before ``initialize()`` (os-vif's LibraryNotInitialized): a bug.
    VIF_LIBRARY_NOT_INITIALIZED = "VIF_LIBRARY_NOT_INITIALIZED", 500
    #: A VM whose submission's dispatch failed on something no code path expected (a bug).
    DISPATCH_FAILED = "DISPATCH_FAILED", 500
    #: A VM whose record in ZooKeeper cannot be read (``snooze.records``): never started.
    VIRTUAL_MACHINE_RECORD_UNREADABLE = "VIRTUAL_MACHINE_RECORD_UNREADABLE", 500
    #: A VM its host no longer has (the host restarted or lost it).
    VIRTUAL_MACHINE_LOST = "VIRTUAL_MACHINE_LOST", 410
    #: A code this version does not know (a newer peer's), and the original's "no idea".
    UNKNOWN = "UNKNOWN", 500

    # -- a virtual cluster's answer (getVirtualClusterResponse's errorCode) ------------------
    NO_VIRTUAL_MACHINE_STARTED = "NO_VIRTUAL_MACHINE_STARTED", 409
    SOME_VIRTUAL_MACHINES_NOT_STARTED = "SOME_VIRTUAL_MACHINES_NOT_STARTED", 409

    # -- internal messages (snooze.rpc, snooze.protocol, snooze.http's internal endpoint) ---
    #: The request never reached the peer (refused, reset, DNS): nothing was done.
    UNREACHABLE = "UNREACHABLE", 503, TEMPORARY
    #: No answer in time: the peer may have done it.
    TIMEOUT = "TIMEOUT", 504
    MALFORMED = "MALFORMED", 400
    BAD_HMAC = "BAD_HMAC", 401
    UNKNOWN_VERSION = "UNKNOWN_VERSION", 400
    OBSOLETE_VERSION = "OBSOLETE_VERSION", 400
    REPLAY = "REPLAY", 409
    STALE_TIMESTAMP = "STALE_TIMESTAMP", 401
    OUT_OF_ORDER = "OUT_OF_ORDER", 409
    UNKNOWN_KIND = "UNKNOWN_KIND", 404
    #: An order from a leader of an older epoch: its sender is deposed, and must not retry.
    STALE_EPOCH = "STALE_EPOCH", 409

    # -- assigned by the clients themselves, never sent by a server ------------------------
    TASK_TIMEOUT = "TASK_TIMEOUT", 504
    BAD_RESPONSE = "BAD_RESPONSE", 502
    REFUSED = "REFUSED", 409
    BAD_TEMPLATE = "BAD_TEMPLATE", 400
    BAD_LOCATION = "BAD_LOCATION", 400
    VM_FAILED = "VM_FAILED", 500
    NO_CLUSTER = "NO_CLUSTER", 404


_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.BODY_TOO_LARGE,
    500: ErrorCode.INTERNAL_ERROR,
}


class CodedError(Exception):
    """An error that names its ``ErrorCode``: the base of the project's own errors (the API's,
    internal calls', ZooKeeper's, the hypervisor's). ``snooze.http.ApiError.of`` is the one
    mapping from any of them to the API's answer."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    field: str | None = None

    def __init__(self, message: str = "", *, code: ErrorCode | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if field is not None:
            self.field = field

    @property
    def api_status(self) -> int:
        """The HTTP status this error is answered with: its code's, unless a subclass knows better."""
        return self.code.http_status
