"""The Apache libcloud compute driver for Snooze, registered as provider ``"snooze"`` on import.

After ``import snooze.client.libcloud_driver`` the seed's code runs as written::

    Snooze = get_driver(Provider.SNOOZE)
    driver = Snooze("127.0.0.1", "5000")          # key = bootstrap host, secret = its port
    nodes = driver.create_node(libvirt_templates=["debian1.xml"], tx=12800, rx=12800)

A virtual machine is a ``Node`` whose id is its ``virtualMachineId``; ``create_node`` submits
one virtual cluster, waits for the group leader's response and returns a list of nodes (one
per VM, as the original driver did). HTTP goes through ``SyncSnoozeClient``; its errors
become ``SnoozeLibcloudError`` (a ``LibcloudError``) here, at libcloud's boundary.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from libcloud.common.base import ConnectionUserAndKey
from libcloud.common.types import LibcloudError
from libcloud.compute import providers
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeSize
from libcloud.compute.types import NodeState, Provider

from snooze.client.errors import SnoozeClientError
from snooze.client.sync import SyncSnoozeClient
from snooze.client.templates import (
    DEFAULT_NETWORK_DEMAND,
    domain_name,
    libvirt_template,
    libvirt_template_file,
    sized_template,
)
from snooze.client.types import FAILED_STATUSES, VirtualMachineMetaDataJson
from snooze.codes import ErrorCode, VMStatus

__all__ = ["PROVIDER", "SnoozeLibcloudError", "SnoozeNodeDriver", "node_state", "register"]

PROVIDER = "snooze"

# Snooze's virtual-machine statuses as libcloud node states; the words beside ours are the
# original's and other servers' (a driver reads what it is given).
STATES: dict[str, NodeState] = {
    VMStatus.RUNNING: NodeState.RUNNING,
    "BOOTING": NodeState.STARTING,
    "STARTING": NodeState.STARTING,
    VMStatus.PENDING: NodeState.PENDING,
    VMStatus.PAUSED: NodeState.SUSPENDED,
    "SUSPENDED": NodeState.SUSPENDED,
    VMStatus.SHUTOFF: NodeState.STOPPED,
    VMStatus.SHUTDOWN: NodeState.STOPPED,
    "STOPPED": NodeState.STOPPED,
    "SHUTTING_DOWN": NodeState.STOPPING,
    "REBOOTING": NodeState.REBOOTING,
    "MIGRATING": NodeState.MIGRATING,
    "ONMIGRATION": NodeState.MIGRATING,
    "ONRELOCATION": NodeState.MIGRATING,
    VMStatus.DESTROYED: NodeState.TERMINATED,
    "TERMINATED": NodeState.TERMINATED,
    VMStatus.DISPATCHED: NodeState.PENDING,
    VMStatus.ERROR: NodeState.ERROR,
    "FAILED": NodeState.ERROR,
}


def node_state(status: str | None) -> NodeState:
    return STATES.get((status or "").upper(), NodeState.UNKNOWN)


class SnoozeLibcloudError(LibcloudError):
    """A failed Snooze call or virtual machine; ``code`` is the Snooze error code."""

    def __init__(self, code: str, message: str, driver: Any = None, *, status: int | None = None,
                 nodes: Sequence[Node] = ()) -> None:
        super().__init__(f"{code}: {message}", driver)
        self.code = code
        self.message = message
        self.status = status
        # With a partly failed virtual cluster, the nodes that did start (so they can be destroyed).
        self.nodes = list(nodes)


class _NoConnection(ConnectionUserAndKey):
    """libcloud's HTTP connection, never opened: the driver speaks through ``SyncSnoozeClient``."""

    def connect(self, *args: Any, **kwargs: Any) -> None:
        return None


class SnoozeNodeDriver(NodeDriver):
    """Virtual machines of a Snooze cluster, reached through its bootstrap."""

    type = PROVIDER
    name = "Snooze"
    website = "http://snooze.inria.fr"
    connectionCls = _NoConnection
    features: dict[str, list[str]] = {"create_node": []}

    def __init__(self, key: str = "127.0.0.1", secret: str | int = "5000", secure: bool = False,
                 host: str | None = None, port: str | int | None = None, *, timeout: float = 30.0,
                 token: str | None = None, ca: str | None = None, **kwargs: Any) -> None:
        """``key`` is the bootstrap's host (or a whole URL) and ``secret`` its port, as in the seed;
        ``token``: the API token when the cluster requires one (default: $SNOOZE_TOKEN);
        ``secure=True`` (or an ``https://`` URL): a bootstrap with TLS, its certificate checked
        against ``ca``, a PEM file of authorities (default: $SNOOZE_CA, else the system's)."""
        host = host or key
        port = port if port is not None else secret
        if "://" in host:
            url = host.rstrip("/")
        else:
            url = f"{'https' if secure else 'http'}://{host}:{int(port)}"
        super().__init__(  # type: ignore[no-untyped-call]  # libcloud is untyped
            key=host, secret=str(port), secure=secure, host=host, port=int(port) if port else None, **kwargs
        )
        self.bootstrap_url = url
        self.client = SyncSnoozeClient(url, timeout=timeout, token=token, ca=ca)

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except SnoozeClientError as exc:
            raise SnoozeLibcloudError(exc.code, exc.message, self, status=exc.status) from exc

    # -- nodes --------------------------------------------------------------------------------

    def _to_node(self, vm: Mapping[str, Any]) -> Node:
        location = dict(vm.get("virtualMachineLocation") or {})
        vm_id = str(vm.get("virtualMachineId") or location.get("virtualMachineId") or "")
        ip = vm.get("ipAddress")
        extra = {
            "virtualMachineLocation": location,
            "metadata": dict(vm),
            "status": vm.get("status"),
            "errorCode": vm.get("errorCode"),
            "message": vm.get("message"),
            "macAddress": vm.get("macAddress"),
            "requestedCapacity": vm.get("requestedCapacity"),
            "usedCapacity": vm.get("usedCapacity"),
            "localControllerId": location.get("localControllerId"),
            "groupManagerId": location.get("groupManagerId"),
        }
        name = domain_name(str(vm.get("xmlRepresentation") or "")) or vm_id
        return Node(id=vm_id, name=name, state=node_state(vm.get("status")), public_ips=[ip] if ip else [],
                    private_ips=[], driver=self, extra=extra)

    def create_node(  # type: ignore[override]  # returns a list: one node per VM, as the original did
        self, name: str | None = None, size: NodeSize | None = None, image: NodeImage | str | None = None,
        location: Any = None, auth: Any = None, *, libvirt_templates: Sequence[str] | None = None,
        tx: float = DEFAULT_NETWORK_DEMAND, rx: float = DEFAULT_NETWORK_DEMAND, vcpus: int | None = None,
        memory: int | None = None, image_id: str | None = None, count: int = 1, ex_timeout: float = 300.0,
        ex_poll_interval: float = 0.5, ex_allow_partial: bool = False,
    ) -> list[Node]:
        """Start one virtual cluster and return its nodes once the group leader has placed them.

        Either ``libvirt_templates`` (paths to domain XML files, or XML strings) or a size:
        ``vcpus`` and ``memory`` (KiB) — or a libcloud ``size`` (``ram`` in MiB, ``extra["vcpus"]``)
        — with ``image_id`` (or ``image``) and ``name``, ``count`` times. A VM that fails raises
        ``SnoozeLibcloudError`` naming its error code, unless ``ex_allow_partial``.
        """
        templates: list[Any] = []
        with self._errors():
            for t in libvirt_templates or []:
                templates.append(libvirt_template(t, rx=rx, tx=tx) if t.lstrip().startswith("<")
                                 else libvirt_template_file(t, rx=rx, tx=tx))
            if vcpus is not None or memory is not None or size is not None:
                if size is not None:
                    vcpus = vcpus if vcpus is not None else int((size.extra or {}).get("vcpus", 1))
                    memory = memory if memory is not None else int(size.ram) * 1024
                if image is not None and image_id is None:
                    image_id = image if isinstance(image, str) else str(image.id)
                prefix = name or "vm"
                for i in range(count):
                    templates.append(sized_template(
                        vcpus=vcpus or 1, memory=memory or 0, image_id=image_id or "",
                        name=prefix if count == 1 else f"{prefix}-{i + 1}", rx=rx, tx=tx))
            if not templates:
                raise SnoozeClientError(ErrorCode.BAD_TEMPLATE, "create_node needs libvirt_templates, or vcpus and memory "
                                        "(or a size) with image_id and name", "libvirt_templates")
            response = self.client.submit_virtual_cluster(templates, timeout=ex_timeout,
                                                          poll_interval=ex_poll_interval)
        vms: list[VirtualMachineMetaDataJson] = list(response.get("virtualMachineMetaData") or [])
        nodes = [self._to_node(vm) for vm in vms]
        failed = [vm for vm in vms if str(vm.get("status", "")).upper() in FAILED_STATUSES]
        if response.get("errorCode") and not vms:
            raise SnoozeLibcloudError(str(response["errorCode"]),
                                      f"virtual cluster {response.get('taskId', '')} failed", self)
        if failed and not ex_allow_partial:
            what = "; ".join(f"{vm.get('virtualMachineId')}: {vm.get('errorCode') or ErrorCode.UNKNOWN}"
                             + (f" ({vm['message']})" if vm.get("message") else "") for vm in failed)
            code = str(failed[0].get("errorCode") or response.get("errorCode") or ErrorCode.VM_FAILED)
            raise SnoozeLibcloudError(code, f"{len(failed)} of {len(vms)} virtual machines failed: {what}", self,
                                      nodes=[n for n in nodes if n.state != NodeState.ERROR])
        return nodes

    def list_nodes(self, *args: Any, **kwargs: Any) -> list[Node]:
        with self._errors():
            return [self._to_node(vm) for vm in self.client.list_virtual_machines()]

    def ex_get_node(self, node_id: str) -> Node:
        with self._errors():
            return self._to_node(self.client.get_virtual_machine_meta_data(node_id))

    def reboot_node(self, node: Node) -> bool:
        with self._errors():
            return self.client.reboot_virtual_machine(str(node.id))

    def destroy_node(self, node: Node) -> bool:
        with self._errors():
            return self.client.destroy_virtual_machine(str(node.id))

    def start_node(self, node: Node) -> bool:
        """Resumes a suspended node (Snooze has no separate "start")."""
        return self.ex_resume_node(node)

    def stop_node(self, node: Node) -> bool:
        """Shuts the node down (ACPI), as ``shutdownVirtualMachine`` does."""
        with self._errors():
            return self.client.shutdown_virtual_machine(str(node.id))

    def ex_suspend_node(self, node: Node) -> bool:
        with self._errors():
            return self.client.suspend_virtual_machine(str(node.id))

    def ex_resume_node(self, node: Node) -> bool:
        with self._errors():
            return self.client.resume_virtual_machine(str(node.id))

    def ex_migrate(self, node: Node, virtualMachineLocation: Mapping[str, Any] | Node | str | None) -> bool:  # noqa: N803
        """Live-migrate ``node`` to the local controller of ``virtualMachineLocation``.

        The destination is a location (``other.extra["virtualMachineLocation"]``, as in the seed:
        the node goes where that VM runs), another ``Node``, or a local controller id.
        """
        target = virtualMachineLocation
        if isinstance(target, Node):
            target = target.extra.get("virtualMachineLocation") or {}
        lc_id = target if isinstance(target, str) else (target or {}).get("localControllerId")
        if not lc_id:
            raise SnoozeLibcloudError(ErrorCode.BAD_LOCATION, "the destination names no localControllerId", self)
        with self._errors():
            return self.client.migrate_virtual_machine(str(node.id), str(lc_id))

    def migrate(self, node: Node, location: Mapping[str, Any] | Node | str | None) -> bool:
        """The seed's name for ``ex_migrate``."""
        return self.ex_migrate(node, location)

    # -- the original driver's method names -----------------------------------------------------

    def get_info(self, node: Node) -> dict[str, Any]:
        """The VM's metadata now (the original's ``get_info``: status, location, addresses, usage)."""
        with self._errors():
            return dict(self.client.get_virtual_machine_meta_data(str(node.id)).items())

    def suspend(self, node: Node) -> bool:
        return self.ex_suspend_node(node)

    def resume(self, node: Node) -> bool:
        return self.ex_resume_node(node)

    def shutdown(self, node: Node) -> bool:
        return self.stop_node(node)

    def reboot(self, node: Node) -> bool:
        return self.reboot_node(node)

    def destroy(self, node: Node) -> bool:
        return self.destroy_node(node)

    # -- images (the repository's /images) ------------------------------------------------------

    def _to_image(self, img: Mapping[str, Any]) -> NodeImage:
        return NodeImage(id=str(img.get("id")), name=str(img.get("name") or img.get("id")), driver=self, extra=dict(img))

    def list_images(self, location: Any = None, ex_only_active: bool = True) -> list[NodeImage]:  # noqa: ARG002
        """The images of the repository: ``NodeImage(id, name, extra=the repository's record)``
        (format, capacity, allocation, path, size, checksum, usedBy)."""
        with self._errors():
            return [self._to_image(img) for img in self.client.list_images()]

    def get_image(self, image_id: str) -> NodeImage:
        with self._errors():
            return self._to_image(self.client.get_image(image_id))

    def delete_image(self, node_image: NodeImage) -> bool:
        """Delete an image of the repository (refused while a VM uses it)."""
        with self._errors():
            return self.client.delete_image(str(node_image.id))

    def ex_upload_image(self, path: str, name: str | None = None, image_format: str | None = None) -> NodeImage:
        """Upload a qcow2 (or, with ``image_format="raw"``, raw) disk image to the repository."""
        with self._errors():
            return self._to_image(self.client.upload_image(path, name, image_format=image_format))

    def list_sizes(self, location: Any = None) -> list[NodeSize]:
        """The original driver's four sizes (RAM in MiB, bandwidth in KiB/s); ``create_node(size=…)``
        takes one, or any ``NodeSize`` (``extra["vcpus"]``, default 1)."""
        sizes = [("1", "Small", 128, 4, 500, 4), ("2", "Medium", 512, 16, 1500, 8), ("3", "Big", 4096, 32, 2500, 32),
                 ("4", "XXL Big", 8192, 128, 7500, 64)]
        return [NodeSize(id=i, name=name, ram=ram, disk=disk, bandwidth=bw, price=price, driver=self,
                         extra={"vcpus": 1}) for i, name, ram, disk, bw, price in sizes]


def _add_provider_constant() -> None:
    """Make ``Provider.SNOOZE`` exist (= ``"snooze"``), as a proper member of libcloud's enum.

    ``Provider`` is a closed ``Enum``; the seed writes ``get_driver(Provider.SNOOZE)``, so the
    member is added the way the enum machinery itself stores members. Should a future enum
    implementation refuse, a plain ``"snooze"`` string attribute still lets that line work.
    """
    if "SNOOZE" in Provider.__members__:
        return
    try:
        member = str.__new__(Provider, PROVIDER)
        member._name_ = "SNOOZE"
        member._value_ = PROVIDER
        setattr(member, "__objclass__", Provider)  # noqa: B010  (enum internals mypy does not model)
        setattr(member, "_sort_order_", len(Provider._member_names_))  # noqa: B010
        type.__setattr__(Provider, "SNOOZE", member)
        Provider._member_map_["SNOOZE"] = member
        Provider._member_names_.append("SNOOZE")
        Provider._value2member_map_[PROVIDER] = member
    except (TypeError, AttributeError):
        type.__setattr__(Provider, "SNOOZE", PROVIDER)
    assert getattr(Provider, "SNOOZE") == PROVIDER  # noqa: B009  (mypy does not know the member)


def register() -> None:
    """Register the driver with libcloud; importing this module does it, repeating it is harmless."""
    _add_provider_constant()
    if PROVIDER not in providers.DRIVERS:
        # libcloud's annotations say module and class, its code (and its docs) take their names.
        providers.set_driver(PROVIDER, __name__, SnoozeNodeDriver.__name__)  # type: ignore[arg-type]


register()
