"""The EC2 query API on its own port (the original's snoozeec2), in front of the bootstrap.

EC2 clients (boto3, libcloud's EC2 driver, the aws CLI) send ``Action=…&Version=…`` as a form
body (POST) or a query string (GET), signed with AWS Signature Version 4 (``sigv4``): there is
no anonymous access. Each action becomes calls of the bootstrap's own API through the
project's client (``snooze.client.aio``), exactly as an outside client would make them, so the
gateway has no second path into the cluster. Answers are EC2's XML, in the namespace of the
API version the request named; errors are EC2's ``<Response><Errors>`` with its codes.

How EC2's notions map onto Snooze's:

==================  =========================================================================
instance            a VM; its instance id is its VM id (``i-`` + 17 hex digits for the VMs
                    started here; any VM of the cluster is listed)
reservation         a virtual cluster (its task id)
instance type       a row of ``[ec2] instance_types``: ``NAME = [vcpus, memory KiB]``
image               ``imageId`` of the template; ``[ec2] images`` lists those offered
StopInstances       suspend (``stopped``); StartInstances resumes it
TerminateInstances  destroy
DescribeAddresses   always empty: no elastic addresses (a VM keeps the address it was given)
ClientToken         the submission's ``requestId``: a retried RunInstances starts nothing twice
==================  =========================================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from bootstrap.ec2.sigv4 import SignatureError, SignedRequest, verify
from snooze.client import SnoozeClient, SnoozeClientError
from snooze.codes import ErrorCode, VMStatus

log = logging.getLogger(__name__)

DEFAULT_VERSION = "2016-11-15"
MAX_BODY = 64 * 1024
MAX_INSTANCES = 100  # per RunInstances, as the submission's template limit allows
RUN_WAIT = 30.0  # seconds RunInstances waits for placement before answering "pending"

# Snooze's refusals that EC2 clients know as InsufficientInstanceCapacity.
CAPACITY_CODES = (ErrorCode.NOT_ENOUGH_CAPACITY, ErrorCode.NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY, ErrorCode.NO_GROUP_MANAGER)

# EC2 instance states (code, name) for Snooze's VM statuses.
PENDING, RUNNING, SHUTTING_DOWN, TERMINATED, STOPPING, STOPPED = (
    (0, "pending"), (16, "running"), (32, "shutting-down"), (48, "terminated"), (64, "stopping"), (80, "stopped"))
STATES: dict[str, tuple[int, str]] = {
    VMStatus.PENDING: PENDING, VMStatus.DISPATCHED: PENDING, VMStatus.RUNNING: RUNNING, VMStatus.PAUSED: STOPPED,
    VMStatus.SHUTDOWN: SHUTTING_DOWN, VMStatus.SHUTOFF: STOPPED, VMStatus.ERROR: TERMINATED,
    VMStatus.DESTROYED: TERMINATED, VMStatus.UNKNOWN: PENDING,
}


@dataclass
class Ec2Options:
    """What the gateway serves (``[ec2]`` in the bootstrap's configuration)."""

    bootstrap_url: str
    region: str = "us-east-1"  # what clients name; libcloud's EC2 driver accepts only AWS's region names
    keys: dict[str, str] = field(default_factory=dict)  # access key id -> secret
    instance_types: dict[str, list[int]] = field(default_factory=lambda: {"m1.small": [1, 1048576]})
    images: list[str] = field(default_factory=list)  # empty: any image id the cluster accepts
    owner_id: str = "snooze"
    token: str | None = None  # what the gateway presents to the bootstrap (snooze.auth)
    ca: str = ""  # with TLS: the authorities the bootstrap's certificate is checked against ("" = the system's)


class Ec2Error(Exception):
    """An EC2 error answer: ``code`` as AWS names it, HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text).lower() if isinstance(text, bool) else str(text)
    return el


def _state(parent: ET.Element, tag: str, state: tuple[int, str]) -> None:
    el = _sub(parent, tag)
    _sub(el, "code", state[0])
    _sub(el, "name", state[1])


def _indexed(params: dict[str, str], prefix: str) -> list[str]:
    """EC2's lists: ``Prefix.1``, ``Prefix.2``… in index order."""
    found = []
    for key, value in params.items():
        m = re.fullmatch(re.escape(prefix) + r"\.(\d{1,4})", key)
        if m:
            found.append((int(m[1]), value))
    return [v for _, v in sorted(found)]


def _count(params: dict[str, str], name: str) -> int:
    raw = params.get(name)
    if raw is None:
        raise Ec2Error("MissingParameter", f"the request must contain the parameter {name}")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_INSTANCES:
        raise Ec2Error("InvalidParameterValue", f"{name} must be a whole number from 1 to {MAX_INSTANCES}, got {raw[:20]!r}")
    return int(raw)


class Ec2Gateway:
    """The aiohttp application of the EC2 API; ``app`` is what a site serves."""

    def __init__(self, options: Ec2Options, client_factory: Callable[[], SnoozeClient] | None = None) -> None:
        self.options = options
        self._client_factory = client_factory or (lambda: SnoozeClient(options.bootstrap_url, token=options.token or "",
                                                                              ca=options.ca))
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_route("*", "/", self._handle)
        self.app.on_cleanup.append(self._close)
        self._client: SnoozeClient | None = None
        self._actions: dict[str, Callable[[dict[str, str], ET.Element], Awaitable[None]]] = {
            "DescribeInstances": self.describe_instances, "RunInstances": self.run_instances,
            "TerminateInstances": self.terminate_instances, "RebootInstances": self.reboot_instances,
            "StartInstances": self.start_instances, "StopInstances": self.stop_instances,
            "DescribeImages": self.describe_images, "DescribeInstanceTypes": self.describe_instance_types,
            "DescribeAddresses": self.describe_addresses,
        }

    @property
    def client(self) -> SnoozeClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def _close(self, _app: web.Application) -> None:
        if self._client is not None:
            await self._client.close()

    # -- the request -----------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        namespace = f"http://ec2.amazonaws.com/doc/{DEFAULT_VERSION}/"
        try:
            if request.method not in ("GET", "POST"):
                raise Ec2Error("InvalidAction", f"method {request.method} is not part of the EC2 query API", 405)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Ec2Error("RequestEntityTooLarge", f"the request body is larger than {MAX_BODY} bytes", 413) from None
            signed = SignedRequest(request.method, request.raw_path.split("?", 1)[0], request.query_string,
                                   dict(request.headers), body)
            verify(signed, self.options.keys.get, self.options.region)
            params = self._params(request, body)
            version = params.get("Version") or DEFAULT_VERSION
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version):
                raise Ec2Error("InvalidParameterValue", f"Version must be an API version date, got {version[:20]!r}")
            namespace = f"http://ec2.amazonaws.com/doc/{version}/"
            action = params.get("Action")
            if not action:
                raise Ec2Error("MissingAction", "the request must contain the parameter Action")
            handler = self._actions.get(action)
            if handler is None:
                raise Ec2Error("InvalidAction", f"the action {action[:60]!r} is not valid for this web service "
                                                f"(supported: {', '.join(sorted(self._actions))})")
            root = ET.Element(f"{action}Response", xmlns=namespace)
            _sub(root, "requestId", request_id)
            await handler(params, root)
            return self._xml(root)
        except SignatureError as exc:
            return self._error(exc.code, str(exc), 401 if exc.code == "AuthFailure" else 403, request_id)
        except Ec2Error as exc:
            return self._error(exc.code, str(exc), exc.status, request_id)
        except SnoozeClientError as exc:
            return self._error(*self._mapped(exc), request_id)

    @staticmethod
    def _params(request: web.Request, body: bytes) -> dict[str, str]:
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        if request.method == "POST" and body:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise Ec2Error("InvalidParameterValue", "the request body is not UTF-8 form data") from None
            params.update(parse_qsl(text, keep_blank_values=True))
        return params

    @staticmethod
    def _mapped(exc: SnoozeClientError) -> tuple[str, str, int]:
        """A Snooze error as the EC2 error a client of EC2 expects."""
        code = exc.code or ""
        if code in CAPACITY_CODES:
            return "InsufficientInstanceCapacity", str(exc.message), 500
        if exc.status is not None and 400 <= exc.status < 500:
            return "InvalidParameterValue", f"{exc.message} ({code}" + (f", field {exc.field})" if exc.field else ")"), 400
        return "Unavailable", f"the cluster cannot answer now: {exc.message} ({code}); retry", 503

    @staticmethod
    def _xml(root: ET.Element, status: int = 200) -> web.Response:
        text = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
        return web.Response(text=text, status=status, content_type="text/xml", charset="utf-8")

    def _error(self, code: str, message: str, status: int, request_id: str) -> web.Response:
        root = ET.Element("Response")
        err = _sub(_sub(root, "Errors"), "Error")
        _sub(err, "Code", code)
        _sub(err, "Message", message)
        _sub(root, "RequestID", request_id)
        if status >= 500:
            log.warning("EC2 %s: %s", code, message)
        return self._xml(root, status)

    # -- instances ---------------------------------------------------------------------------
    async def _vms(self) -> dict[str, dict[str, Any]]:
        return {vm["virtualMachineId"]: dict(vm.items()) for vm in await self.client.list_virtual_machines()}

    def _instance_type(self, requested: Any) -> str:
        if isinstance(requested, list) and len(requested) >= 2:
            for name, (vcpus, memory) in self.options.instance_types.items():
                if float(requested[0]) == vcpus and float(requested[1]) == memory:
                    return name
        return "custom"

    def _instance(self, parent: ET.Element, vm: dict[str, Any], index: int = 0) -> None:
        item = _sub(parent, "item")
        _sub(item, "instanceId", vm["virtualMachineId"])
        _sub(item, "imageId", vm.get("imageId") or "")
        _state(item, "instanceState", STATES.get(str(vm.get("status")), PENDING))
        _sub(item, "privateDnsName", "")
        _sub(item, "dnsName", "")
        _sub(item, "amiLaunchIndex", index)
        _sub(item, "instanceType", self._instance_type(vm.get("requestedCapacity")))
        _sub(item, "launchTime", time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
        placement = _sub(item, "placement")
        _sub(placement, "availabilityZone", self.options.region)
        location = vm.get("virtualMachineLocation") or {}
        if location.get("localControllerId"):
            _sub(placement, "hostId", location["localControllerId"])
        if vm.get("ipAddress"):
            _sub(item, "privateIpAddress", vm["ipAddress"])
        if vm.get("status") == VMStatus.ERROR:
            reason = _sub(item, "stateReason")
            _sub(reason, "code", vm.get("errorCode") or "Server.InternalError")
            _sub(reason, "message", vm.get("message") or "the VM failed")
        tags = _sub(item, "tagSet")
        tag = _sub(tags, "item")
        _sub(tag, "key", "Name")
        _sub(tag, "value", vm["virtualMachineId"])

    async def _known(self, params: dict[str, str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The InstanceId.N of the request, all known (else InvalidInstanceID.NotFound), and the VMs."""
        ids = _indexed(params, "InstanceId")
        vms = await self._vms()
        missing = [i for i in ids if i not in vms]
        if missing:
            raise Ec2Error("InvalidInstanceID.NotFound", f"the instance IDs {', '.join(missing[:10])!s} do not exist")
        return ids, vms

    async def describe_instances(self, params: dict[str, str], root: ET.Element) -> None:
        ids, vms = await self._known(params)
        chosen = [vms[i] for i in ids] if ids else list(vms.values())
        for n in range(1, 51):
            name = params.get(f"Filter.{n}.Name")
            if name is None:
                break
            values = set(_indexed(params, f"Filter.{n}.Value"))
            if name == "instance-id":
                chosen = [vm for vm in chosen if vm["virtualMachineId"] in values]
            elif name == "instance-state-name":
                chosen = [vm for vm in chosen if STATES.get(str(vm.get("status")), PENDING)[1] in values]
            else:
                raise Ec2Error("InvalidParameterValue", f"the filter {name[:60]!r} is not supported "
                                                        "(instance-id, instance-state-name)")
        reservations: dict[str, list[dict[str, Any]]] = {}
        for vm in chosen:
            reservations.setdefault(str(vm.get("taskId") or "r-unknown"), []).append(vm)
        rset = _sub(root, "reservationSet")
        for task_id, members in reservations.items():
            item = _sub(rset, "item")
            _sub(item, "reservationId", task_id)
            _sub(item, "ownerId", self.options.owner_id)
            _sub(item, "groupSet")
            instances = _sub(item, "instancesSet")
            for i, vm in enumerate(members):
                self._instance(instances, vm, i)

    async def run_instances(self, params: dict[str, str], root: ET.Element) -> None:
        image = params.get("ImageId")
        if not image:
            raise Ec2Error("MissingParameter", "the request must contain the parameter ImageId")
        if self.options.images and image not in self.options.images:
            raise Ec2Error("InvalidAMIID.NotFound", f"the image id {image[:60]!r} does not exist")
        type_name = params.get("InstanceType") or next(iter(self.options.instance_types))
        if type_name not in self.options.instance_types:
            raise Ec2Error("InvalidParameterValue", f"InstanceType {type_name[:40]!r} is not one of "
                                                    f"{', '.join(self.options.instance_types)}")
        vcpus, memory = self.options.instance_types[type_name]
        least, most = _count(params, "MinCount"), _count(params, "MaxCount")
        if least > most:
            raise Ec2Error("InvalidParameterValue", "MinCount must not be greater than MaxCount")
        token = params.get("ClientToken") or uuid.uuid4().hex
        # The names follow from the token: a retry with the same ClientToken is the same
        # submission (same requestId, same templates), which the leader answers with the same task.
        seed = hashlib.sha256(f"{type_name}/{image}/{most}/{token}".encode()).hexdigest()
        names = [f"i-{hashlib.sha256(f'{seed}/{i}'.encode()).hexdigest()[:17]}" for i in range(most)]
        templates = [{"vcpus": vcpus, "memory": memory, "imageId": image, "name": name} for name in names]
        task_id = await self.client.start_virtual_cluster(
            {"virtualMachineTemplates": templates, "requestId": f"ec2-{seed[:40]}"})
        try:
            response = await asyncio.wait_for(self.client.wait_for_virtual_cluster(task_id, timeout=RUN_WAIT), RUN_WAIT + 5)
        except (SnoozeClientError, TimeoutError):
            response = None
        metas: dict[str, dict[str, Any]] = {}
        if response is not None:
            metas = {m["virtualMachineId"]: dict(m.items()) for m in response.get("virtualMachineMetaData") or []}
            started = [n for n in names if metas.get(n, {}).get("status") == VMStatus.RUNNING]
            if len(started) < least:
                for name in started:  # all or nothing below MinCount, as EC2
                    try:
                        await self.client.destroy_virtual_machine(name)
                    except SnoozeClientError as exc:
                        log.warning("could not destroy %s after a short RunInstances: %s", name, exc)
                why = "; ".join(sorted({str(m.get("message") or m.get("errorCode")) for m in metas.values()
                                        if m.get("status") != VMStatus.RUNNING}))[:300]
                raise Ec2Error("InsufficientInstanceCapacity",
                               f"only {len(started)} of MinCount {least} instances could be started ({why})", 500)
            names = started
        _sub(root, "reservationId", task_id)
        _sub(root, "ownerId", self.options.owner_id)
        _sub(root, "groupSet")
        instances = _sub(root, "instancesSet")
        for i, name in enumerate(names):
            vm = metas.get(name) or {"virtualMachineId": name, "status": VMStatus.PENDING}
            vm.setdefault("imageId", image)
            vm["requestedCapacity"] = [vcpus, memory]
            self._instance(instances, vm, i)

    async def _change(self, params: dict[str, str], root: ET.Element, act: Callable[[str], Awaitable[bool]],
                      after: tuple[int, str]) -> None:
        ids, vms = await self._known(params)
        if not ids:
            raise Ec2Error("MissingParameter", "the request must contain the parameter InstanceId.1")
        out = _sub(root, "instancesSet")
        for vm_id in ids:
            before = STATES.get(str(vms[vm_id].get("status")), PENDING)
            if before != after:
                await act(vm_id)
            item = _sub(out, "item")
            _sub(item, "instanceId", vm_id)
            _state(item, "currentState", after)
            _state(item, "previousState", before)

    async def terminate_instances(self, params: dict[str, str], root: ET.Element) -> None:
        await self._change(params, root, self.client.destroy_virtual_machine, TERMINATED)

    async def stop_instances(self, params: dict[str, str], root: ET.Element) -> None:
        await self._change(params, root, self.client.suspend_virtual_machine, STOPPED)

    async def start_instances(self, params: dict[str, str], root: ET.Element) -> None:
        await self._change(params, root, self.client.resume_virtual_machine, RUNNING)

    async def reboot_instances(self, params: dict[str, str], root: ET.Element) -> None:
        ids, _vms = await self._known(params)
        if not ids:
            raise Ec2Error("MissingParameter", "the request must contain the parameter InstanceId.1")
        for vm_id in ids:
            await self.client.reboot_virtual_machine(vm_id)
        _sub(root, "return", True)

    # -- catalogue ---------------------------------------------------------------------------
    async def describe_images(self, params: dict[str, str], root: ET.Element) -> None:
        wanted = _indexed(params, "ImageId")
        images = self.options.images
        missing = [i for i in wanted if images and i not in images]
        if missing:
            raise Ec2Error("InvalidAMIID.NotFound", f"the image ids {', '.join(missing[:10])} do not exist")
        out = _sub(root, "imagesSet")
        for image in wanted or images:
            item = _sub(out, "item")
            for tag, value in (("imageId", image), ("imageLocation", image), ("imageState", "available"),
                               ("imageOwnerId", self.options.owner_id), ("isPublic", True), ("architecture", "x86_64"),
                               ("imageType", "machine"), ("name", image), ("rootDeviceType", "instance-store"),
                               ("virtualizationType", "hvm"), ("hypervisor", "kvm")):
                _sub(item, tag, value)

    async def describe_addresses(self, params: dict[str, str], root: ET.Element) -> None:
        """No elastic addresses in Snooze (a VM keeps the address it was given); libcloud's
        ``list_nodes`` asks for them."""
        _sub(root, "addressesSet")

    async def describe_instance_types(self, params: dict[str, str], root: ET.Element) -> None:
        wanted = _indexed(params, "InstanceType")
        unknown = [t for t in wanted if t not in self.options.instance_types]
        if unknown:
            raise Ec2Error("InvalidInstanceType", f"the instance types {', '.join(unknown[:10])} do not exist")
        out = _sub(root, "instanceTypeSet")
        for name in wanted or list(self.options.instance_types):
            vcpus, memory = self.options.instance_types[name]
            item = _sub(out, "item")
            _sub(item, "instanceType", name)
            _sub(item, "currentGeneration", True)
            _sub(_sub(item, "vCpuInfo"), "defaultVCpus", vcpus)
            _sub(_sub(item, "memoryInfo"), "sizeInMiB", memory // 1024)
            _sub(item, "hypervisor", "kvm")
