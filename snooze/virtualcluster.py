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
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as DET

from snooze.codes import UNBOUND_HOST_ID
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
    "NETWORK_FIELDS",
    "VMSpec",
    "apply_flavor",
    "domain_xml",
    "mac_for_ip",
    "normalise_mac",
    "parse_submission",
    "parse_template",
    "same_mac",
    "set_mac",
    "subnet_hosts",
]


class InvalidSubmission(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


#: A template's references to the network model (issue 12): template key -> VMSpec attribute.
NETWORK_FIELDS = {"flavor": "flavor", "network": "network", "subnet": "subnet", "firewallGroup": "fwgroup",
                  "vlanGroup": "vlangroup"}
#: A spec's JSON keys for them (``subnetId``: a group manager's order to a local controller
#: already says ``subnet`` for the CIDR), with the subnet's CIDR and gateway.
SPEC_KEYS = {"flavor": "flavor", "network": "network", "subnetId": "subnet", "firewallGroup": "fwgroup",
             "vlanGroup": "vlangroup", "cidr": "cidr", "gateway": "gateway"}


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
    #: The network model's objects the template named (ids, checked to exist by the leader).
    flavor: str | None = None
    network: str | None = None
    subnet: str | None = None
    fwgroup: str | None = None
    vlangroup: str | None = None
    #: Set by the leader with the address: the subnet's CIDR and gateway (the guest's config).
    cidr: str | None = None
    gateway: str | None = None
    #: What a template left to its flavor (``parse_template``), until ``apply_flavor`` fills
    #: it in: not part of the JSON.
    unresolved: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "requested": list(self.requested), "xml": self.xml, "imageId": self.image_id,
               "hostId": self.host_id, "ip": self.ip, "mac": self.mac, **({"extra": self.extra} if self.extra else {})}
        # Written only when set: a spec without them is what every version wrote and reads.
        for key, attr in SPEC_KEYS.items():
            value = getattr(self, attr)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VMSpec:
        r = d["requested"]
        spec = cls(d["id"], (float(r[0]), float(r[1]), float(r[2]), float(r[3])), d["xml"], d.get("imageId"),
                   d.get("hostId"), d.get("ip"), d.get("mac"), dict(d.get("extra") or {}))
        for key, attr in SPEC_KEYS.items():
            value = d.get(key)
            setattr(spec, attr, value if isinstance(value, str) else None)
        return spec

    @property
    def references(self) -> dict[str, str]:
        """The template keys naming network-model objects, with the ids they name."""
        return {key: v for key, attr in NETWORK_FIELDS.items() if (v := getattr(self, attr)) is not None}


#: A number written as a JSON string, as the original's clients sent some (``"vcpus": "2"``) and
#: its Jackson accepted: plain decimal notation only (no NaN, no infinity, no hex), bounded length.
_NUMERIC_TEXT = re.compile(r"[ \t]*-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?[ \t]*")


def _number(value: Any, where: str, *, minimum: float, maximum: float, integer: bool = False) -> float:
    """A JSON number within [minimum, maximum] (or one written as a string, as the original
    accepted): never a boolean, NaN, an infinity or an integer too large for a float or for
    msgpack (the bounds are far below 2**64)."""
    if isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value):
        text = value.strip()
        value = float(text) if any(c in text for c in ".eE") else int(text)
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
    and numbers), joined to the policy's ``default_bridge`` (``[templates] default_bridge``),
    else to the first network it allows, else without a network card; the card and the disk
    are virtio (what a cloud image, and the tiny guest image, has drivers for)."""
    policy = policy or DomainPolicy.default()
    disk = ""
    if image_id and "disk" in policy.devices:
        disk = (f'<disk type="file" device="disk"><driver name="qemu" type="qcow2"/>'
                f'<source file="{image_id}"/><target dev="vda" bus="virtio"/></disk>')
    nic = ""
    if "interface" in policy.devices and policy.default_bridge:
        nic = f'<interface type="bridge"><source bridge="{policy.default_bridge}"/><model type="virtio"/></interface>'
    elif "interface" in policy.devices and policy.networks:
        nic = f'<interface type="network"><source network="{sorted(policy.networks)[0]}"/><model type="virtio"/></interface>'
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
    if isinstance(image_id, str) and "/" in image_id and ".." not in image_id.split("/"):
        # The 2.1 client sent a path: its last component names the image (only that is used).
        image_id = image_id.rsplit("/", 1)[-1]
    if image_id is not None:
        image_id = _id(image_id, where + ".imageId", "an image name (or a path whose last component is one)")
    host_id = t.get("hostId")
    if host_id in ("", UNBOUND_HOST_ID):
        host_id = None  # the original's "not bound to a host"
    if host_id is not None:
        host_id = _id(host_id, where + ".hostId", "a local controller id")
    extra: dict[str, Any] = {}
    for key in ("affinityGroup", "antiAffinityGroup"):
        if t.get(key) is not None:
            extra[key] = _id(t[key], f"{where}.{key}", "a group name")
    # The network model's objects (issue 12): a bad id is this request's fault (400); an id
    # that names nothing fails the VM when the leader looks it up.
    refs: dict[str, str] = {}
    for key in NETWORK_FIELDS:
        if t.get(key) not in (None, ""):
            refs[NETWORK_FIELDS[key]] = _id(t[key], f"{where}.{key}", f"a {key} id")
    # libVirtDescription: the same template under its other name in the original's classes; a
    # blank one beside vcpus/memory/name means none (the original's clients sent "" with them).
    xml_key = "libVirtTemplate" if t.get("libVirtTemplate") is not None else "libVirtDescription"
    xml = t.get(xml_key)
    if isinstance(xml, str) and not xml.strip() and any(t.get(k) is not None for k in ("vcpus", "memory", "name")):
        xml = None
    if xml is not None:
        field_name = f"{where}.{xml_key}"
        try:
            dom = rebuild_domain(xml, policy)
        except PolicyViolation as exc:
            raise InvalidSubmission(f"{field_name}: {exc}", field_name) from None
        return _with(VMSpec(dom.name, (float(dom.vcpus), float(dom.memory_kib), rx, tx), dom.xml, image_id, host_id,
                            extra=extra), refs)
    if "flavor" in refs and t.get("name") is not None:
        # vcpus and memory may come from the flavor: the domain is built once it is read
        # (``apply_flavor``); what the template gives is checked now and overrides the flavor.
        name = _id(t["name"], where + ".name", "a name")
        given: dict[str, Any] = {"where": where, "imageId": image_id}
        if t.get("vcpus") is not None:
            given["vcpus"] = _number(t["vcpus"], where + ".vcpus", minimum=1, maximum=MAX_VCPUS, integer=True)
        if t.get("memory") is not None:
            given["memory"] = _number(t["memory"], where + ".memory", minimum=1024, maximum=MAX_MEMORY_KIB, integer=True)
        for key, value in (("rxBytes", "rx"), ("txBytes", "tx")):
            if demand.get(key) is not None:
                given[value] = rx if value == "rx" else tx
        return _with(VMSpec(name, (given.get("vcpus", 0.0), given.get("memory", 0.0), rx, tx), "", image_id, host_id,
                            extra=extra, unresolved=given), refs)
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
    return _with(VMSpec(name, (vcpus, memory, rx, tx), dom.xml, image_id, host_id, extra=extra), refs)


def _with(spec: VMSpec, refs: dict[str, str]) -> VMSpec:
    for attr, value in refs.items():
        setattr(spec, attr, value)
    return spec


def apply_flavor(spec: VMSpec, flavor: Any, policy: DomainPolicy | None = None) -> None:
    """Fill in what ``spec``'s template left to its flavor (``snooze.network.model.Flavor``:
    ``vcpus``, ``memory`` KiB, ``image``, ``rx``/``tx`` KiB/s); what the template gave stays
    (explicit vcpus/memory override the flavor). A spec given as a ``libVirtTemplate`` keeps
    its domain. InvalidSubmission (naming the template's field) if the result is not a VM the
    policy takes."""
    given = spec.unresolved
    if given is None:
        return
    where = str(given.get("where") or "virtualMachineTemplates")
    vcpus = int(given.get("vcpus") or flavor.vcpus)
    memory = int(given.get("memory") or flavor.memory)
    if not 1 <= vcpus <= MAX_VCPUS or not 1024 <= memory <= MAX_MEMORY_KIB:
        raise InvalidSubmission(f"{where}.flavor: flavor {flavor.id} gives {vcpus} vcpus and {memory} KiB, outside "
                                f"1-{MAX_VCPUS} vcpus and 1024-{MAX_MEMORY_KIB} KiB", where + ".flavor")
    image_id = given.get("imageId") or flavor.image
    rx = float(given["rx"]) if "rx" in given else float(flavor.rx)
    tx = float(given["tx"]) if "tx" in given else float(flavor.tx)
    try:
        dom = rebuild_domain(domain_xml(spec.id, vcpus, memory, image_id, policy), policy or DomainPolicy.default())
    except PolicyViolation as exc:
        raise InvalidSubmission(f"{where}: the template policy refuses this VM: {exc}", where) from None
    spec.requested, spec.xml, spec.image_id, spec.unresolved = (float(vcpus), float(memory), rx, tx), dom.xml, image_id, None


# -- addresses -------------------------------------------------------------------------------
def mac_for_ip(ip: str) -> str:
    """The original's MAC for an IP: 54:56 then the four octets in hex, each of two digits
    (``192.168.122.2`` -> ``54:56:c0:a8:7a:02``). The original wrote them without leading zeros
    (``…:7a:2``); libvirt and Open vSwitch normalise to two digits, so this is what they show."""
    return "54:56:" + ":".join(format(int(o), "02x") for o in ip.split("."))


def normalise_mac(mac: str) -> str:
    """A MAC address as libvirt and OVS write it: lower case, two hex digits per octet
    (``54:56:C0:A8:7A:2`` -> ``54:56:c0:a8:7a:02``); ValueError if it is not six octets."""
    parts = mac.strip().split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    try:
        return ":".join(format(int(p, 16), "02x") for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r}") from None


def same_mac(a: str | None, b: str | None) -> bool:
    """Whether two MAC addresses are the same, however written (case, leading zeros): compare
    MACs only this way, since a record may hold the original's unpadded form and libvirt
    reports the padded one."""
    if a is None or b is None:
        return a is b
    try:
        return normalise_mac(a) == normalise_mac(b)
    except ValueError:
        return a.strip().lower() == b.strip().lower()


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
    mac_el.set("address", normalise_mac(mac))
    return '<?xml version="1.0" encoding="UTF-8" standalone="no"?>' + ET.tostring(root, encoding="unicode")
