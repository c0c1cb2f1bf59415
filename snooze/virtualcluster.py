"""Virtual clusters: validating a submission, and the VM records and metadata built from it.

A submission is checked whole before anything is allocated: any bad template makes the
request a 400 that names the field (``virtualMachineTemplates[2].memory``). A valid template
becomes a ``VMSpec`` with its id (the domain's name, as in the original), requested capacity
``[cpu, memory KiB, rx, tx]`` and domain XML; addresses are added by the leader.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from snooze.models import Capacity

MAX_TEMPLATES = 5000
MAX_VCPUS = 1024
MAX_MEMORY_KIB = 16 * 1024**3  # 16 TiB
MAX_NETWORK_KIB = 100 * 1024**2  # 100 GiB/s
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MEMORY_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
                 "mb": 1e6 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1e9 / 1024, "t": 1024**3, "tib": 1024**3}


class InvalidSubmission(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class VMSpec:
    id: str
    requested: Capacity
    xml: str
    image_id: str | None = None
    host_id: str | None = None
    ip: str | None = None
    mac: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "requested": list(self.requested), "xml": self.xml, "imageId": self.image_id,
                "hostId": self.host_id, "ip": self.ip, "mac": self.mac, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VMSpec:
        r = d["requested"]
        return cls(d["id"], (float(r[0]), float(r[1]), float(r[2]), float(r[3])), d["xml"], d.get("imageId"),
                   d.get("hostId"), d.get("ip"), d.get("mac"), dict(d.get("extra") or {}))


def _number(value: Any, where: str, *, minimum: float, maximum: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSubmission(f"{where}: expected a number, got {value!r}", where)
    if value != value or not minimum <= value <= maximum:
        raise InvalidSubmission(f"{where}: must be between {minimum:g} and {maximum:g}, got {value!r}", where)
    if integer and int(value) != value:
        raise InvalidSubmission(f"{where}: must be a whole number, got {value!r}", where)
    return float(value)


def _memory_kib(elem: ET.Element, where: str) -> float:
    try:
        value = float((elem.text or "").strip())
    except ValueError as exc:
        raise InvalidSubmission(f"{where}: <memory> is not a number", where) from exc
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS:
        raise InvalidSubmission(f"{where}: unknown memory unit {unit!r}", where)
    return _number(value * _MEMORY_UNITS[unit], where + ".memory", minimum=1024, maximum=MAX_MEMORY_KIB)


def parse_domain_xml(text: str, where: str) -> tuple[ET.Element, str, float, float]:
    """(root, name, vcpus, memory KiB) of a domain XML; InvalidSubmission if unusable."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSubmission(f"{where}: expected domain XML text", where)
    try:
        root = ET.fromstring(text.strip().encode())
    except ET.ParseError as exc:
        raise InvalidSubmission(f"{where}: domain XML does not parse: {exc}", where) from exc
    if root.tag != "domain":
        raise InvalidSubmission(f"{where}: root element must be <domain>, got <{root.tag}>", where)
    name = (root.findtext("name") or "").strip()
    if not NAME_RE.match(name):
        raise InvalidSubmission(f"{where}: <name> must be 1-63 letters, digits, '.', '_' or '-'", where)
    mem = root.find("memory")
    if mem is None:
        raise InvalidSubmission(f"{where}: <memory> is missing", where)
    vcpu_text = (root.findtext("vcpu") or "1").strip()
    try:
        vcpus = float(int(vcpu_text))
    except ValueError as exc:
        raise InvalidSubmission(f"{where}: <vcpu> is not a whole number", where) from exc
    _number(vcpus, where + ".vcpu", minimum=1, maximum=MAX_VCPUS, integer=True)
    return root, name, vcpus, _memory_kib(mem, where)


def domain_xml(name: str, vcpus: int, memory_kib: int, image_id: str | None) -> str:
    """The domain XML for a template given as vcpus/memory/imageId/name."""
    disk = ""
    if image_id:
        disk = (f'<disk type="file" device="disk"><driver name="qemu" type="qcow2"/>'
                f'<source file="{image_id}"/><target dev="vda" bus="virtio"/></disk>')
    return (
        f'<domain type="kvm"><name>{name}</name><uuid>{uuid.uuid4()}</uuid>'
        f"<memory>{memory_kib}</memory><currentMemory>{memory_kib}</currentMemory><vcpu>{vcpus}</vcpu>"
        '<os><type arch="x86_64">hvm</type><boot dev="hd"/></os><features><acpi/><apic/></features>'
        '<clock offset="utc"/><on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>'
        f'<on_crash>restart</on_crash><devices>{disk}<interface type="bridge"><source bridge="virbr0"/>'
        "</interface><serial type=\"pty\"><target port=\"0\"/></serial></devices></domain>"
    )


def parse_submission(body: Any) -> list[VMSpec]:
    """Validate a startVirtualCluster body; the whole list, or an InvalidSubmission naming the field."""
    if not isinstance(body, dict):
        raise InvalidSubmission("body must be a JSON object with virtualMachineTemplates", "body")
    templates = body.get("virtualMachineTemplates")
    if templates is None:
        raise InvalidSubmission("virtualMachineTemplates is missing", "virtualMachineTemplates")
    if not isinstance(templates, list):
        raise InvalidSubmission("virtualMachineTemplates must be a list", "virtualMachineTemplates")
    if not templates:
        raise InvalidSubmission("virtualMachineTemplates is empty", "virtualMachineTemplates")
    if len(templates) > MAX_TEMPLATES:
        raise InvalidSubmission(f"at most {MAX_TEMPLATES} templates per virtual cluster", "virtualMachineTemplates")
    specs: list[VMSpec] = []
    seen: set[str] = set()
    for i, t in enumerate(templates):
        where = f"virtualMachineTemplates[{i}]"
        spec = parse_template(t, where)
        if spec.id in seen:
            raise InvalidSubmission(f"{where}: name {spec.id!r} is used twice in this virtual cluster", where + ".name")
        seen.add(spec.id)
        specs.append(spec)
    return specs


def parse_template(t: Any, where: str) -> VMSpec:
    if not isinstance(t, dict):
        raise InvalidSubmission(f"{where}: must be an object", where)
    demand = t.get("networkCapacityDemand") or {}
    if not isinstance(demand, dict):
        raise InvalidSubmission(f"{where}.networkCapacityDemand: must be an object", where + ".networkCapacityDemand")
    rx = _number(demand.get("rxBytes", 0.0), where + ".networkCapacityDemand.rxBytes", minimum=0, maximum=MAX_NETWORK_KIB)
    tx = _number(demand.get("txBytes", 0.0), where + ".networkCapacityDemand.txBytes", minimum=0, maximum=MAX_NETWORK_KIB)
    image_id = t.get("imageId")
    if image_id is not None and (not isinstance(image_id, str) or not image_id or "/" in image_id or image_id.startswith(".")):
        raise InvalidSubmission(f"{where}.imageId: must be a file name in the image directory", where + ".imageId")
    host_id = t.get("hostId")
    if host_id is not None and not isinstance(host_id, str):
        raise InvalidSubmission(f"{where}.hostId: must be a string", where + ".hostId")
    extra = {k: t[k] for k in ("affinityGroup", "antiAffinityGroup") if isinstance(t.get(k), str)}
    if "libVirtTemplate" in t and t["libVirtTemplate"] is not None:
        _root, name, vcpus, memory = parse_domain_xml(t["libVirtTemplate"], where + ".libVirtTemplate")
        return VMSpec(name, (vcpus, memory, rx, tx), t["libVirtTemplate"].strip(), image_id, host_id, extra=extra)
    missing = [k for k in ("vcpus", "memory", "name") if t.get(k) is None]
    if missing:
        raise InvalidSubmission(
            f"{where}: give libVirtTemplate, or vcpus, memory and name (missing: {', '.join(missing)})", f"{where}.{missing[0]}"
        )
    vcpus = _number(t["vcpus"], where + ".vcpus", minimum=1, maximum=MAX_VCPUS, integer=True)
    memory = _number(t["memory"], where + ".memory", minimum=1024, maximum=MAX_MEMORY_KIB, integer=True)
    name = t["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidSubmission(f"{where}.name: must be 1-63 letters, digits, '.', '_' or '-'", where + ".name")
    return VMSpec(name, (vcpus, memory, rx, tx), domain_xml(name, int(vcpus), int(memory), image_id), image_id, host_id, extra=extra)


# -- addresses -------------------------------------------------------------------------------
def mac_for_ip(ip: str) -> str:
    """The original's MAC for an IP: 54:56 then the four octets in hex, without leading zeros."""
    return "54:56:" + ":".join(format(int(o), "x") for o in ip.split("."))


def subnet_hosts(cidr: str) -> list[str]:
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version != 4:
        raise ValueError("only IPv4 VM subnets are supported")
    hosts = [str(h) for h in net.hosts()]
    # The first address is conventionally the gateway (libvirt's virbr0: .1): never hand it out.
    return hosts[1:] if len(hosts) > 2 else hosts


def set_mac(xml: str, mac: str) -> str:
    """The domain XML with ``mac`` on its first interface; a domain without one is left alone
    (its address is still reserved and reported)."""
    root = ET.fromstring(xml.encode())
    iface = root.find("devices/interface")
    if iface is None:
        return xml
    mac_el = iface.find("mac")
    if mac_el is None:
        mac_el = ET.Element("mac")
        iface.insert(0, mac_el)
    mac_el.set("address", mac)
    return '<?xml version="1.0" encoding="UTF-8" standalone="no"?>' + ET.tostring(root, encoding="unicode")


def vm_metadata(rec: dict[str, Any], spec: dict[str, Any] | None, *, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """A VM's metadata in the seed's shape (getVirtualClusterResponse, getVirtualMachineMetaData)."""
    location = {
        "virtualMachineId": rec["virtualMachineId"],
        "localControllerId": rec.get("localControllerId"),
        "groupManagerId": rec.get("groupManagerId"),
        "groupManagerControlDataAddress": rec.get("groupManagerControlDataAddress"),
        "localControllerControlDataAddress": rec.get("localControllerControlDataAddress"),
    }
    return {
        "virtualMachineId": rec["virtualMachineId"],
        "status": rec.get("status"),
        "errorCode": rec.get("errorCode"),
        "message": rec.get("message"),
        "virtualMachineLocation": location,
        "usedCapacity": (live or {}).get("usedCapacity") or {},
        "requestedCapacity": rec.get("requestedCapacity"),
        "ipAddress": rec.get("ipAddress"),
        "macAddress": rec.get("macAddress"),
        "groupManagerControlDataAddress": rec.get("groupManagerControlDataAddress"),
        "xmlRepresentation": (spec or {}).get("xml"),
        "imageId": (spec or {}).get("imageId"),
        "adaptations": rec.get("adaptations") or [],
        "rejections": rec.get("rejections") or {},
        "taskId": rec.get("taskId"),
        "lastMigration": rec.get("lastMigration"),
    }
