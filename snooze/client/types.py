"""The JSON shapes the client sends and receives, as typed dictionaries.

They are the original Snooze's camelCase shapes, unchanged, so that what a caller holds is
exactly what ``curl`` would show. Every key is optional (``total=False``): the server may
add fields and old servers may lack some, and a client must not break on either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from snooze.codes import VMStatus

VirtualMachineId = str
TaskId = str
LocalControllerId = str


class NetworkAddressJson(TypedDict, total=False):
    address: str
    port: int


class NetworkDemandJson(TypedDict, total=False):
    rxBytes: float
    txBytes: float


class VirtualMachineTemplateJson(TypedDict, total=False):
    libVirtTemplate: str
    networkCapacityDemand: NetworkDemandJson
    vcpus: int
    memory: int  # KiB
    imageId: str
    name: str


class VirtualMachineLocationJson(TypedDict, total=False):
    virtualMachineId: str
    localControllerId: str
    groupManagerId: str
    groupManagerControlDataAddress: NetworkAddressJson
    localControllerControlDataAddress: NetworkAddressJson


class VirtualMachineMetaDataJson(TypedDict, total=False):
    virtualMachineId: str
    status: str
    errorCode: str | None
    message: str | None  # why, when errorCode is set (this server's addition)
    virtualMachineLocation: VirtualMachineLocationJson
    requestedCapacity: list[float]  # [cpu, memory KiB, rx, tx]
    usedCapacity: Any  # a list like requestedCapacity, or {} before any monitoring
    ipAddress: str | None
    macAddress: str | None
    xmlRepresentation: str
    taskId: str | None  # the submission it came from (this server's addition)
    owner: str | None  # the user whose token submitted it (snooze.auth; this server's addition)


class VirtualClusterResponseJson(TypedDict, total=False):
    taskId: str
    errorCode: str | None
    virtualMachineMetaData: list[VirtualMachineMetaDataJson]


# A status the server gives a virtual machine that failed to start.
FAILED_STATUSES = frozenset({VMStatus.ERROR, "FAILED"})  # FAILED: another server's word


@dataclass(frozen=True)
class Progress:
    """What ``wait_for_virtual_cluster`` reports to its ``progress`` callback.

    ``state`` is ``"PENDING"`` while the group leader has no response yet (the API then says
    nothing more: an empty body) and ``"DONE"`` once it has; ``statuses`` maps each virtual
    machine to its status when done. The callback is told on every poll, so it can redraw
    a spinner; ``changed`` says whether ``state`` differs from the previous report.
    """

    task_id: TaskId
    state: str
    elapsed: float
    polls: int
    changed: bool
    statuses: dict[VirtualMachineId, str] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]
