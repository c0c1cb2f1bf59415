"""Descriptions that cross a process boundary, in the original Snooze's JSON shapes.

Public JSON keeps the original's camelCase field names so that the seed's curl examples,
its libcloud driver and its Java-style client work unchanged. Internal messages carry the
same dictionaries inside msgpack envelopes (see ``snooze.protocol``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# [cpu (vcpus), memory (KiB), network rx (KiB/s), network tx (KiB/s)] — the original's order.
Capacity = tuple[float, float, float, float]
ZERO: Capacity = (0.0, 0.0, 0.0, 0.0)
RESOURCES = ("cpu", "memory", "rx", "tx")


def capacity(values: Any, *, field_name: str = "capacity") -> Capacity:
    """A capacity vector from a JSON list; raises ValueError naming the field on bad input."""
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise ValueError(f"{field_name}: expected a list of 4 numbers [cpu, memory, rx, tx]")
    out = []
    for name, v in zip(RESOURCES, values, strict=True):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{field_name}.{name}: expected a number, got {v!r}")
        if v < 0 or v != v or v == float("inf"):
            raise ValueError(f"{field_name}.{name}: must be a finite number >= 0, got {v!r}")
        out.append(float(v))
    return (out[0], out[1], out[2], out[3])


def add(a: Capacity, b: Capacity) -> Capacity:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def sub(a: Capacity, b: Capacity) -> Capacity:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3])


class Status(str, Enum):
    """A local controller's power/participation status (original names)."""

    ACTIVE = "ACTIVE"
    PASSIVE = "PASSIVE"  # powered down to save energy; wakeable capacity
    WAKING = "WAKING"
    OFFLINE = "OFFLINE"


@dataclass(frozen=True)
class NetworkAddress:
    address: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkAddress:
        return cls(str(d["address"]), int(d["port"]))

    @property
    def url(self) -> str:
        return self.base_url()

    def base_url(self, *, tls: bool = False) -> str:
        """``http://ADDRESS:PORT``, or ``https://`` when the cluster runs TLS (``[node] tls_cert``)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if tls else 'http'}://{host}:{self.port}"


@dataclass
class ListenSettings:
    control_data_address: NetworkAddress
    heartbeat_address: NetworkAddress | None = None

    def to_json(self) -> dict[str, Any]:
        hb = self.heartbeat_address or self.control_data_address
        return {
            "controlDataAddress": self.control_data_address.to_json(),
            "monitoringDataAddress": self.control_data_address.to_json(),
            "heartbeatAddress": hb.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ListenSettings:
        hb = d.get("heartbeatAddress")
        return cls(
            NetworkAddress.from_json(d["controlDataAddress"]),
            NetworkAddress.from_json(hb) if hb else None,
        )


@dataclass
class GroupManagerDescription:
    """A group manager (or the group leader) as the original describes it."""

    id: str
    listen_settings: ListenSettings
    hostname: str = ""
    is_assigned: bool = False
    epoch: int = 0
    local_controllers: dict[str, LocalControllerDescription] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> NetworkAddress:
        return self.listen_settings.control_data_address

    def to_json(self, *, with_lcs: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "hostname": self.hostname,
            "listenSettings": self.listen_settings.to_json(),
            "isAssigned": self.is_assigned,
            "epoch": self.epoch,
            "summaryInformation": self.summary,
        }
        if with_lcs:
            d["localControllers"] = [lc.to_json() for lc in self.local_controllers.values()]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupManagerDescription:
        gm = cls(
            id=str(d["id"]),
            listen_settings=ListenSettings.from_json(d["listenSettings"]),
            hostname=str(d.get("hostname", "")),
            is_assigned=bool(d.get("isAssigned", False)),
            epoch=int(d.get("epoch", 0)),
            summary=dict(d.get("summaryInformation") or {}),
        )
        for lc in d.get("localControllers") or []:
            desc = LocalControllerDescription.from_json(lc)
            gm.local_controllers[desc.id] = desc
        return gm


@dataclass
class LocalControllerDescription:
    """A local controller (one hypervisor host), in the shape of getLocalControllerList."""

    id: str
    control_data_address: NetworkAddress
    total_capacity: Capacity
    hostname: str = ""
    status: Status = Status.ACTIVE
    hypervisor_settings: dict[str, Any] = field(default_factory=dict)
    wakeup_settings: dict[str, Any] = field(default_factory=dict)
    assigned_virtual_machines: list[str] = field(default_factory=list)
    virtual_machine_metadata: dict[str, Any] = field(default_factory=dict)
    group_manager_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "controlDataAddress": self.control_data_address.to_json(),
            "status": self.status.value,
            "hypervisorSettings": self.hypervisor_settings,
            "totalCapacity": list(self.total_capacity),
            "virtualMachineMetaData": self.virtual_machine_metadata,
            "wakeupSettings": self.wakeup_settings,
            "hostname": self.hostname,
            "assignedVirtualMachines": list(self.assigned_virtual_machines),
            "groupManagerId": self.group_manager_id,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LocalControllerDescription:
        return cls(
            id=str(d["id"]),
            control_data_address=NetworkAddress.from_json(d["controlDataAddress"]),
            total_capacity=capacity(d["totalCapacity"], field_name="totalCapacity"),
            hostname=str(d.get("hostname", "")),
            status=Status(d.get("status", "ACTIVE")),
            hypervisor_settings=dict(d.get("hypervisorSettings") or {}),
            wakeup_settings=dict(d.get("wakeupSettings") or {}),
            assigned_virtual_machines=list(d.get("assignedVirtualMachines") or []),
            virtual_machine_metadata=dict(d.get("virtualMachineMetaData") or {}),
            group_manager_id=d.get("groupManagerId"),
        )
