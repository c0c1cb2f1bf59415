"""Virtual clusters: validating a submission, and the VM records and metadata built from it.

A submission is checked whole before anything is allocated: any bad template makes the
request a 400 that names the field (``virtualMachineTemplates[2].memory``). A valid template
becomes a ``VMSpec`` with its id (the domain's name, as in the original), requested capacity
``[cpu, memory KiB, rx, tx]`` and domain XML; addresses are added by the leader. The domain XML
is never the client's text: ``snooze.domainxml`` checks it against the operator's template
policy and rebuilds it, and the spec holds the rebuilt XML.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as DET

from snooze.domainxml import (
    MAX_MEMORY_KIB,
    MAX_VCPUS,
    DomainPolicy,
    PolicyViolation,
    rebuild_domain,
)
from snooze.ids import ID_RULE, is_valid_id
from snooze.models import Capacity

MAX_TEMPLATES = 5000
MAX_NETWORK_KIB = 100 * 1024**2  # 100 GiB/s

__all__ = [
    "MAX_MEMORY_KIB",
    "MAX_NETWORK_KIB",
    "MAX_TEMPLATES",
    "MAX_VCPUS",
    "InvalidSubmission",
    "VMSpec",
    "domain_xml",
    "mac_for_ip",
    "parse_submission",
    "parse_template",
    "set_mac",
    "subnet_hosts",
]


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
    """A JSON number within [minimum, maximum]: never a string, a boolean, NaN, an infinity or
    an integer too large for a float or for msgpack (the bounds are far below 2**64)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSubmission(f"{where}: expected a number, got {type(value).__name__}", where)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSubmission(f"{where}: must be a finite number", where)
    if not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:21] + "..."
        raise InvalidSubmission(f"{where}: must be between {minimum:g} and {maximum:g}, got {shown}", where)
    if integer and int(value) != value:
        raise InvalidSubmission(f"{where}: must be a whole number, got {value!r}", where)
    return float(value)


def _id(value: Any, where: str, what: str) -> str:
    if not is_valid_id(value):
        raise InvalidSubmission(f"{where}: {what} must be {ID_RULE}", where)
    return str(value)


def domain_xml(name: str, vcpus: int, memory_kib: int, image_id: str | None, policy: DomainPolicy | None = None) -> str:
    """The domain XML for a template given as vcpus/memory/imageId/name (all already valid ids
    and numbers), joined to the first bridge (or network) the policy allows."""
    policy = policy or DomainPolicy.default()
    disk = ""
    if image_id and "disk" in policy.devices:
        disk = (f'<disk type="file" device="disk"><driver name="qemu" type="qcow2"/>'
                f'<source file="{image_id}"/><target dev="vda" bus="virtio"/></disk>')
    nic = ""
    if "interface" in policy.devices and policy.bridges:
        nic = f'<interface type="bridge"><source bridge="{sorted(policy.bridges)[0]}"/></interface>'
    elif "interface" in policy.devices and policy.networks:
        nic = f'<interface type="network"><source network="{sorted(policy.networks)[0]}"/></interface>'
    serial = '<serial type="pty"><target port="0"/></serial>' if "serial" in policy.devices else ""
    return (
        f'<domain type="kvm"><name>{name}</name><uuid>{uuid.uuid4()}</uuid>'
        f"<memory>{memory_kib}</memory><currentMemory>{memory_kib}</currentMemory><vcpu>{vcpus}</vcpu>"
        '<os><type arch="x86_64">hvm</type><boot dev="hd"/></os><features><acpi/><apic/></features>'
        '<clock offset="utc"/><on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>'
        f"<on_crash>restart</on_crash><devices>{disk}{nic}{serial}</devices></domain>"
    )


def parse_submission(body: Any, policy: DomainPolicy | None = None) -> list[VMSpec]:
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
    policy = policy or DomainPolicy.default()
    specs: list[VMSpec] = []
    seen: set[str] = set()
    for i, t in enumerate(templates):
        where = f"virtualMachineTemplates[{i}]"
        spec = parse_template(t, where, policy)
        if spec.id in seen:
            raise InvalidSubmission(f"{where}: name {spec.id!r} is used twice in this virtual cluster", where + ".name")
        seen.add(spec.id)
        specs.append(spec)
    return specs


def parse_template(t: Any, where: str, policy: DomainPolicy | None = None) -> VMSpec:
    if not isinstance(t, dict):
        raise InvalidSubmission(f"{where}: must be an object", where)
    policy = policy or DomainPolicy.default()
    demand = t.get("networkCapacityDemand")
    if demand is None:
        demand = {}
    if not isinstance(demand, dict):
        raise InvalidSubmission(f"{where}.networkCapacityDemand: must be an object", where + ".networkCapacityDemand")
    rx = _number(demand.get("rxBytes", 0.0), where + ".networkCapacityDemand.rxBytes", minimum=0, maximum=MAX_NETWORK_KIB)
    tx = _number(demand.get("txBytes", 0.0), where + ".networkCapacityDemand.txBytes", minimum=0, maximum=MAX_NETWORK_KIB)
    image_id = t.get("imageId")
    if image_id is not None:
        image_id = _id(image_id, where + ".imageId", "a file name in the image store")
    host_id = t.get("hostId")
    if host_id is not None:
        host_id = _id(host_id, where + ".hostId", "a local controller id")
    extra: dict[str, Any] = {}
    for key in ("affinityGroup", "antiAffinityGroup"):
        if t.get(key) is not None:
            extra[key] = _id(t[key], f"{where}.{key}", "a group name")
    if t.get("libVirtTemplate") is not None:
        field_name = where + ".libVirtTemplate"
        try:
            dom = rebuild_domain(t["libVirtTemplate"], policy)
        except PolicyViolation as exc:
            raise InvalidSubmission(f"{field_name}: {exc}", field_name) from None
        return VMSpec(dom.name, (float(dom.vcpus), float(dom.memory_kib), rx, tx), dom.xml, image_id, host_id, extra=extra)
    missing = [k for k in ("vcpus", "memory", "name") if t.get(k) is None]
    if missing:
        raise InvalidSubmission(
            f"{where}: give libVirtTemplate, or vcpus, memory and name (missing: {', '.join(missing)})", f"{where}.{missing[0]}"
        )
    vcpus = _number(t["vcpus"], where + ".vcpus", minimum=1, maximum=MAX_VCPUS, integer=True)
    memory = _number(t["memory"], where + ".memory", minimum=1024, maximum=MAX_MEMORY_KIB, integer=True)
    name = _id(t["name"], where + ".name", "a name")
    try:
        dom = rebuild_domain(domain_xml(name, int(vcpus), int(memory), image_id, policy), policy)
    except PolicyViolation as exc:
        # Only an operator's policy that refuses its own generated domains gets here.
        raise InvalidSubmission(f"{where}: the template policy refuses this VM: {exc}", where) from None
    return VMSpec(name, (vcpus, memory, rx, tx), dom.xml, image_id, host_id, extra=extra)


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
    root = DET.fromstring(xml.encode(), forbid_dtd=True)
    iface = root.find("devices/interface")
    if iface is None:
        return xml
    mac_el = iface.find("mac")
    if mac_el is None:
        mac_el = ET.Element("mac")
        iface.insert(0, mac_el)
    mac_el.set("address", mac)
    return '<?xml version="1.0" encoding="UTF-8" standalone="no"?>' + ET.tostring(root, encoding="unicode")
