"""Java-style bindings: the original Snooze Java client's classes and calls, over ``SyncSnoozeClient``.

Code written against the original (``CommunicatorFactory.newBootstrapCommunicator(address)
.getGroupLeaderDescription().getListenSettings().getControlDataAddress()`` …) ports line by
line. Every getter and setter also has a snake_case alias (``get_listen_settings``) for
Python callers. The objects are plain data: ``to_json``/``from_json`` convert to and from
the API's camelCase JSON, and nothing here speaks HTTP itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from snooze.client.aio import BOOTSTRAP, GROUP_MANAGER
from snooze.client.errors import SnoozeClientError
from snooze.client.sync import SyncSnoozeClient
from snooze.client.templates import DEFAULT_NETWORK_DEMAND

__all__ = [
    "BootstrapAPI",
    "CommunicatorException",
    "CommunicatorFactory",
    "GroupManagerAPI",
    "GroupManagerDescription",
    "ListenSettings",
    "NetworkAddress",
    "NetworkDemand",
    "VirtualClusterSubmissionRequest",
    "VirtualClusterSubmissionResponse",
    "VirtualMachineLocation",
    "VirtualMachineMetaData",
    "VirtualMachineTemplate",
]

# What the Java client threw; here every failure is a SnoozeClientError under either name.
CommunicatorException = SnoozeClientError


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class NetworkAddress:
    address: str = ""
    port: int = 0

    def getAddress(self) -> str:
        return self.address

    def setAddress(self, address: str) -> None:
        self.address = address

    def getPort(self) -> int:
        return self.port

    def setPort(self, port: int) -> None:
        self.port = int(port)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port}

    @classmethod
    def from_json(cls, d: Any) -> NetworkAddress:
        d = _dict(d)
        return cls(str(d.get("address", "")), int(d.get("port", 0) or 0))

    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    get_address = getAddress
    set_address = setAddress
    get_port = getPort
    set_port = setPort


@dataclass
class ListenSettings:
    control_data_address: NetworkAddress = field(default_factory=NetworkAddress)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def getControlDataAddress(self) -> NetworkAddress:
        return self.control_data_address

    def setControlDataAddress(self, address: NetworkAddress) -> None:
        self.control_data_address = address

    @classmethod
    def from_json(cls, d: Any) -> ListenSettings:
        d = _dict(d)
        return cls(NetworkAddress.from_json(d.get("controlDataAddress")), d)

    get_control_data_address = getControlDataAddress
    set_control_data_address = setControlDataAddress


@dataclass
class GroupManagerDescription:
    id: str = ""
    hostname: str = ""
    listen_settings: ListenSettings = field(default_factory=ListenSettings)
    epoch: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def getId(self) -> str:
        return self.id

    def getHostname(self) -> str:
        return self.hostname

    def getListenSettings(self) -> ListenSettings:
        return self.listen_settings

    def getEpoch(self) -> int | None:
        return self.epoch

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)

    @classmethod
    def from_json(cls, d: Any) -> GroupManagerDescription:
        d = _dict(d)
        epoch = d.get("epoch")
        return cls(str(d.get("id", "")), str(d.get("hostname", "")), ListenSettings.from_json(d.get("listenSettings")),
                   epoch if isinstance(epoch, int) else None, d)

    get_id = getId
    get_hostname = getHostname
    get_listen_settings = getListenSettings
    get_epoch = getEpoch


@dataclass
class NetworkDemand:
    rx_bytes: float = DEFAULT_NETWORK_DEMAND
    tx_bytes: float = DEFAULT_NETWORK_DEMAND

    def getRxBytes(self) -> float:
        return self.rx_bytes

    def setRxBytes(self, rx_bytes: float) -> None:
        self.rx_bytes = float(rx_bytes)

    def getTxBytes(self) -> float:
        return self.tx_bytes

    def setTxBytes(self, tx_bytes: float) -> None:
        self.tx_bytes = float(tx_bytes)

    def to_json(self) -> dict[str, Any]:
        return {"rxBytes": float(self.rx_bytes), "txBytes": float(self.tx_bytes)}

    get_rx_bytes = getRxBytes
    set_rx_bytes = setRxBytes
    get_tx_bytes = getTxBytes
    set_tx_bytes = setTxBytes


@dataclass
class VirtualMachineTemplate:
    libvirt_template: str | None = None
    network_capacity_demand: NetworkDemand = field(default_factory=NetworkDemand)
    vcpus: int | None = None
    memory: int | None = None  # KiB
    image_id: str | None = None
    name: str | None = None

    def getLibVirtTemplate(self) -> str | None:
        return self.libvirt_template

    def setLibVirtTemplate(self, xml: str) -> None:
        self.libvirt_template = xml

    def getNetworkCapacityDemand(self) -> NetworkDemand:
        return self.network_capacity_demand

    def setNetworkCapacityDemand(self, demand: NetworkDemand) -> None:
        self.network_capacity_demand = demand

    def getVcpus(self) -> int | None:
        return self.vcpus

    def setVcpus(self, vcpus: int) -> None:
        self.vcpus = int(vcpus)

    def getMemory(self) -> int | None:
        return self.memory

    def setMemory(self, memory_kib: int) -> None:
        self.memory = int(memory_kib)

    def getImageId(self) -> str | None:
        return self.image_id

    def setImageId(self, image_id: str) -> None:
        self.image_id = image_id

    def getName(self) -> str | None:
        return self.name

    def setName(self, name: str) -> None:
        self.name = name

    def to_json(self) -> dict[str, Any]:
        # Only what was set: the server tells a libvirt template from a sized one by the keys.
        out: dict[str, Any] = {}
        if self.libvirt_template is not None:
            out["libVirtTemplate"] = self.libvirt_template
        for key, value in (("vcpus", self.vcpus), ("memory", self.memory), ("imageId", self.image_id),
                           ("name", self.name)):
            if value is not None:
                out[key] = value
        out["networkCapacityDemand"] = self.network_capacity_demand.to_json()
        return out

    get_libvirt_template = getLibVirtTemplate
    set_libvirt_template = setLibVirtTemplate
    get_network_capacity_demand = getNetworkCapacityDemand
    set_network_capacity_demand = setNetworkCapacityDemand
    get_vcpus = getVcpus
    set_vcpus = setVcpus
    get_memory = getMemory
    set_memory = setMemory
    get_image_id = getImageId
    set_image_id = setImageId
    get_name = getName
    set_name = setName


@dataclass
class VirtualClusterSubmissionRequest:
    virtual_machine_templates: list[VirtualMachineTemplate] = field(default_factory=list)

    def getVirtualMachineTemplates(self) -> list[VirtualMachineTemplate]:
        return self.virtual_machine_templates

    def setVirtualMachineTemplates(self, templates: list[VirtualMachineTemplate]) -> None:
        self.virtual_machine_templates = list(templates)

    def to_json(self) -> dict[str, Any]:
        return {"virtualMachineTemplates": [t.to_json() for t in self.virtual_machine_templates]}

    get_virtual_machine_templates = getVirtualMachineTemplates
    set_virtual_machine_templates = setVirtualMachineTemplates


@dataclass
class VirtualMachineLocation:
    virtual_machine_id: str = ""
    local_controller_id: str = ""
    group_manager_id: str = ""
    group_manager_control_data_address: NetworkAddress = field(default_factory=NetworkAddress)
    local_controller_control_data_address: NetworkAddress = field(default_factory=NetworkAddress)

    def getVirtualMachineId(self) -> str:
        return self.virtual_machine_id

    def setVirtualMachineId(self, vm_id: str) -> None:
        self.virtual_machine_id = vm_id

    def getLocalControllerId(self) -> str:
        return self.local_controller_id

    def setLocalControllerId(self, lc_id: str) -> None:
        self.local_controller_id = lc_id

    def getGroupManagerId(self) -> str:
        return self.group_manager_id

    def setGroupManagerId(self, gm_id: str) -> None:
        self.group_manager_id = gm_id

    def getGroupManagerControlDataAddress(self) -> NetworkAddress:
        return self.group_manager_control_data_address

    def getLocalControllerControlDataAddress(self) -> NetworkAddress:
        return self.local_controller_control_data_address

    def to_json(self) -> dict[str, Any]:
        return {"virtualMachineId": self.virtual_machine_id, "localControllerId": self.local_controller_id,
                "groupManagerId": self.group_manager_id,
                "groupManagerControlDataAddress": self.group_manager_control_data_address.to_json(),
                "localControllerControlDataAddress": self.local_controller_control_data_address.to_json()}

    @classmethod
    def from_json(cls, d: Any) -> VirtualMachineLocation:
        d = _dict(d)
        return cls(str(d.get("virtualMachineId") or ""), str(d.get("localControllerId") or ""),
                   str(d.get("groupManagerId") or ""),
                   NetworkAddress.from_json(d.get("groupManagerControlDataAddress")),
                   NetworkAddress.from_json(d.get("localControllerControlDataAddress")))

    get_virtual_machine_id = getVirtualMachineId
    set_virtual_machine_id = setVirtualMachineId
    get_local_controller_id = getLocalControllerId
    set_local_controller_id = setLocalControllerId
    get_group_manager_id = getGroupManagerId
    set_group_manager_id = setGroupManagerId
    get_group_manager_control_data_address = getGroupManagerControlDataAddress
    get_local_controller_control_data_address = getLocalControllerControlDataAddress


@dataclass
class VirtualMachineMetaData:
    virtual_machine_id: str = ""
    status: str = ""
    error_code: str | None = None
    virtual_machine_location: VirtualMachineLocation = field(default_factory=VirtualMachineLocation)
    requested_capacity: list[float] = field(default_factory=list)
    used_capacity: Any = None
    ip_address: str | None = None
    mac_address: str | None = None
    xml_representation: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def getVirtualMachineId(self) -> str:
        return self.virtual_machine_id

    def getStatus(self) -> str:
        return self.status

    def getErrorCode(self) -> str | None:
        return self.error_code

    def getVirtualMachineLocation(self) -> VirtualMachineLocation:
        return self.virtual_machine_location

    def getRequestedCapacity(self) -> list[float]:
        return self.requested_capacity

    def getUsedCapacity(self) -> Any:
        return self.used_capacity

    def getIpAddress(self) -> str | None:
        return self.ip_address

    def getMacAddress(self) -> str | None:
        return self.mac_address

    def getXmlRepresentation(self) -> str | None:
        return self.xml_representation

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)

    @classmethod
    def from_json(cls, d: Any) -> VirtualMachineMetaData:
        d = _dict(d)
        location = VirtualMachineLocation.from_json(d.get("virtualMachineLocation"))
        return cls(str(d.get("virtualMachineId") or location.virtual_machine_id), str(d.get("status") or ""),
                   d.get("errorCode"), location, list(d.get("requestedCapacity") or []), d.get("usedCapacity"),
                   d.get("ipAddress"), d.get("macAddress"), d.get("xmlRepresentation"), d)

    get_virtual_machine_id = getVirtualMachineId
    get_status = getStatus
    get_error_code = getErrorCode
    get_virtual_machine_location = getVirtualMachineLocation
    get_requested_capacity = getRequestedCapacity
    get_used_capacity = getUsedCapacity
    get_ip_address = getIpAddress
    get_mac_address = getMacAddress
    get_xml_representation = getXmlRepresentation


@dataclass
class VirtualClusterSubmissionResponse:
    task_id: str = ""
    error_code: str | None = None
    virtual_machine_meta_data: list[VirtualMachineMetaData] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def getTaskId(self) -> str:
        return self.task_id

    def getErrorCode(self) -> str | None:
        return self.error_code

    def getVirtualMachineMetaData(self) -> list[VirtualMachineMetaData]:
        return self.virtual_machine_meta_data

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)

    @classmethod
    def from_json(cls, d: Any) -> VirtualClusterSubmissionResponse:
        d = _dict(d)
        return cls(str(d.get("taskId") or ""), d.get("errorCode"),
                   [VirtualMachineMetaData.from_json(vm) for vm in d.get("virtualMachineMetaData") or []], d)

    get_task_id = getTaskId
    get_error_code = getErrorCode
    get_virtual_machine_meta_data = getVirtualMachineMetaData


class _Communicator:
    def __init__(self, address: NetworkAddress, prefix: str, timeout: float) -> None:
        self.address = address
        self.client = SyncSnoozeClient(address.url(), prefix=prefix, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()


class GroupManagerAPI(_Communicator):
    """The group leader's virtual-cluster calls (``/groupmanager?startVirtualCluster`` …)."""

    def __init__(self, address: NetworkAddress, timeout: float = 30.0) -> None:
        super().__init__(address, GROUP_MANAGER, timeout)

    def startVirtualCluster(self, request: VirtualClusterSubmissionRequest) -> str:
        """Submits the virtual cluster; returns the task identifier."""
        return self.client.start_virtual_cluster(request.to_json())

    def getVirtualClusterResponse(self, task_id: str) -> VirtualClusterSubmissionResponse | None:
        """The response, or None while it is not available yet (the original's empty answer)."""
        response = self.client.get_virtual_cluster_response(task_id)
        return None if response is None else VirtualClusterSubmissionResponse.from_json(response)

    start_virtual_cluster = startVirtualCluster
    get_virtual_cluster_response = getVirtualClusterResponse


class BootstrapAPI(_Communicator):
    """The bootstrap's calls: the leader, the hierarchy and the control of virtual machines."""

    def __init__(self, address: NetworkAddress, timeout: float = 30.0) -> None:
        super().__init__(address, BOOTSTRAP, timeout)

    def getGroupLeaderDescription(self) -> GroupManagerDescription:
        return GroupManagerDescription.from_json(self.client.get_group_leader_description())

    def getCompleteHierarchy(self) -> dict[str, Any]:
        return self.client.get_complete_hierarchy()

    def getLocalControllerList(self) -> list[dict[str, Any]]:
        return self.client.get_local_controller_list()

    def getVirtualMachineMetaData(self, vm_id: str) -> VirtualMachineMetaData:
        return VirtualMachineMetaData.from_json(self.client.get_virtual_machine_meta_data(vm_id))

    def suspendVirtualMachine(self, vm_id: str) -> bool:
        return self.client.suspend_virtual_machine(vm_id)

    def resumeVirtualMachine(self, vm_id: str) -> bool:
        return self.client.resume_virtual_machine(vm_id)

    def shutdownVirtualMachine(self, vm_id: str) -> bool:
        return self.client.shutdown_virtual_machine(vm_id)

    def rebootVirtualMachine(self, vm_id: str) -> bool:
        return self.client.reboot_virtual_machine(vm_id)

    def destroyVirtualMachine(self, vm_id: str) -> bool:
        return self.client.destroy_virtual_machine(vm_id)

    def migrateVirtualMachine(self, vm_id: str, local_controller_id: str) -> bool:
        return self.client.migrate_virtual_machine(vm_id, local_controller_id)

    get_group_leader_description = getGroupLeaderDescription
    get_complete_hierarchy = getCompleteHierarchy
    get_local_controller_list = getLocalControllerList
    get_virtual_machine_meta_data = getVirtualMachineMetaData
    suspend_virtual_machine = suspendVirtualMachine
    resume_virtual_machine = resumeVirtualMachine
    shutdown_virtual_machine = shutdownVirtualMachine
    reboot_virtual_machine = rebootVirtualMachine
    destroy_virtual_machine = destroyVirtualMachine
    migrate_virtual_machine = migrateVirtualMachine


class CommunicatorFactory:
    """Makes communicators from a ``NetworkAddress``, as the original's factory did."""

    @staticmethod
    def newBootstrapCommunicator(address: NetworkAddress, timeout: float = 30.0) -> BootstrapAPI:
        return BootstrapAPI(address, timeout)

    @staticmethod
    def newGroupManagerCommunicator(address: NetworkAddress, timeout: float = 30.0) -> GroupManagerAPI:
        return GroupManagerAPI(address, timeout)

    new_bootstrap_communicator = newBootstrapCommunicator
    new_group_manager_communicator = newGroupManagerCommunicator
