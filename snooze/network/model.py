"""The network model's objects (Loch Ness's, in its JSON field names), checked when read.

Pure: dataclasses and validation, no I/O. Every object is read with ``from_json`` (any JSON
value: a bad one raises ``NetworkObjectError`` naming the field, e.g. ``rules[2].portEnd``) and
written with ``to_json``. Unknown fields are refused (a typo is not silently dropped).

Objects and their JSON fields (``metadata`` is a map of strings on every object but a VLAN):

* ``Network``: ``id``, ``metadata``: a logical collection of subnets.
* ``Subnet``: ``id``, ``network``, ``cidr`` (IPv4 or IPv6, host bits clear), ``gateway``
  (optional, inside the CIDR, outside the range), ``start``/``end`` (the first and last address
  handed out, inside the CIDR; default: the whole CIDR but its network and broadcast addresses
  and the gateway, when it is first), ``dns`` (a list of addresses).
* ``Flavor``: ``id``, ``image``, ``vcpus``, ``memory`` (KiB, as Snooze's capacity vector, where
  Loch Ness had MB), ``disk`` (KiB), ``rx``/``tx`` (KiB/s; 0 = not limited).
* ``FirewallGroup`` (``fwgroups``): ``id``, ``rules``: each ``source`` (a CIDR) or ``group`` (a
  firewall group's id: its guests' addresses), ``portStart``/``portEnd`` (both 0: every port),
  ``protocol`` (tcp, udp, icmp, icmpv6, all), ``action`` (allow, deny).
* ``VLAN``: ``tag`` (1-4094, its id), ``description``.
* ``VLANGroup``: ``id``, ``description``, ``vlans`` (tags).
* ``Guest``: ``id`` (the VM's id), ``type`` (kvm), ``flavor``, ``network``, ``subnet``,
  ``fwgroup``, ``vlangroup``, ``hypervisor``, ``mac``, ``ip``, ``bridge``.
* ``Hypervisor``: ``id`` (the local controller's id), ``subnets`` (subnet id -> bridge),
  ``config`` (a map of strings).

``refs()`` lists what an object names (field, kind, id): the store keeps a link znode under
each of them, so a delete of a used object is refused by ZooKeeper itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from snooze.codes import CodedError, ErrorCode
from snooze.ids import ID_RULE, is_valid_id

__all__ = [
    "KINDS", "VLAN", "Address", "FirewallGroup", "FirewallRule", "Flavor", "Guest", "Hypervisor",
    "IPNetwork", "Network", "NetworkObject", "NetworkObjectError", "Subnet", "VLANGroup", "check_bridge", "default_objects",
    "object_from_json",
]

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_METADATA = 64
MAX_TEXT = 1024
MAX_RULES = 1024
MAX_DNS = 8
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "all")
ACTIONS = ("allow", "deny")
GUEST_TYPES = ("kvm", "container")  # a container: a CNI port (localcontroller.cni)
#: Flavors' bounds: 1024 vCPUs, 16 TiB of memory, 1 PiB of disk, 100 Gb/s (in KiB/s).
MAX_VCPUS = 1024
MAX_MEMORY_KIB = 1 << 34
MAX_DISK_KIB = 1 << 40
MAX_RATE_KIBPS = 12_500_000
_MAC_RE = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}")
_BRIDGE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class NetworkObjectError(CodedError, ValueError):
    """A network object with a bad field; ``field`` names it (``cidr``, ``rules[1].portEnd``)."""

    code = ErrorCode.INVALID_NETWORK_OBJECT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)


# -- field readers -----------------------------------------------------------------------------
def _shown(value: Any) -> str:
    text = ascii(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _fields(d: Any, kind: str, allowed: tuple[str, ...], where: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise NetworkObjectError(where or kind, f"a {kind} is a JSON object, not {type(d).__name__}")
    for key in d:
        if key not in allowed:
            raise NetworkObjectError(f"{where}{key}" if isinstance(key, str) else where or kind,
                                     f"unknown field of a {kind} (known: {', '.join(allowed)})")
    return dict(d)


def _id(value: Any, name: str, *, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise NetworkObjectError(name, "missing")
        return None
    if not is_valid_id(value):
        raise NetworkObjectError(name, f"{_shown(value)} is not a valid id ({ID_RULE})")
    return str(value)


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise NetworkObjectError(name, f"a text of at most {MAX_TEXT} characters, not {_shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise NetworkObjectError(name, "not valid Unicode") from None
    return value


def _strings(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise NetworkObjectError(name, f"a map of strings, not {type(value).__name__}")
    if len(value) > MAX_METADATA:
        raise NetworkObjectError(name, f"at most {MAX_METADATA} entries")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or len(k) > 255:
            raise NetworkObjectError(name, f"a key must be a text of 1-255 characters, not {_shown(k)}")
        out[k] = _text(v, f"{name}.{k}")
    return out


def _int(value: Any, name: str, lo: int, hi: int, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise NetworkObjectError(name, f"an integer from {lo} to {hi}, not {_shown(value) if value is not None else 'missing'}")
    if not lo <= value <= hi:
        raise NetworkObjectError(name, f"{value} is out of range ({lo}-{hi})")
    return int(value)


def _address(value: Any, name: str) -> Address:
    if not isinstance(value, str):
        raise NetworkObjectError(name, f"an IP address, not {_shown(value) if value is not None else 'missing'}")
    if "%" in value:
        raise NetworkObjectError(name, f"{_shown(value)}: an address with a zone (scope) is not a guest's")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise NetworkObjectError(name, f"{_shown(value)} is not an IP address") from None


def _given(d: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` has a value (JSON's null and "" both mean: not given, use the default)."""
    return d.get(key) not in (None, "")


def _list(value: Any, name: str, limit: int, what: str) -> list[Any]:
    """A JSON list of at most ``limit`` items (absent: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise NetworkObjectError(name, f"a list of at most {limit} {what}")
    return value


def _cidr(value: Any, name: str) -> IPNetwork:
    if not isinstance(value, str) or "/" not in value:
        raise NetworkObjectError(name, f"a CIDR (ADDRESS/PREFIX), not {_shown(value) if value is not None else 'missing'}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise NetworkObjectError(name, f"{_shown(value)} is not a CIDR ({exc})") from None
        raise NetworkObjectError(name, f"{_shown(value)} has host bits set (the network is {loose})") from None


# -- objects ------------------------------------------------------------------------------------
Ref: TypeAlias = tuple[str, str, str]  # (field, kind, id)


class _Object:
    """What every object but a VLAN shares: its id is its key, it names nothing unless it says
    so, and its JSON opens with the same checked fields (``_read``)."""

    KIND: ClassVar[str]
    FIELDS: ClassVar[tuple[str, ...]]
    NAME: ClassVar[str]  # in messages: "a subnet is a JSON object"
    id: str

    @property
    def key(self) -> str:
        return self.id

    def refs(self) -> list[Ref]:
        return []

    @classmethod
    def _read(cls, d: Any) -> tuple[dict[str, Any], str, dict[str, str]]:
        """``d`` checked as a JSON object of this kind (no unknown field), with its ``id`` and
        ``metadata`` read: one block, where each kind had its own copy."""
        fields = _fields(d, cls.NAME, cls.FIELDS)
        return fields, str(_id(fields.get("id"), "id")), _strings(fields.get("metadata"), "metadata")


@dataclass
class Network(_Object):
    KIND: ClassVar[str] = "networks"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "metadata")
    NAME: ClassVar[str] = "network"
    id: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, d: Any) -> Network:
        _d, nid, metadata = cls._read(d)
        return cls(nid, metadata)


@dataclass
class Subnet(_Object):
    """A subnet: addresses from ``start`` to ``end`` (inclusive) are handed out."""

    KIND: ClassVar[str] = "subnets"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "metadata", "network", "cidr", "gateway", "start", "end", "dns")
    NAME: ClassVar[str] = "subnet"
    id: str
    network: str
    cidr: IPNetwork
    start: Address
    end: Address
    gateway: Address | None = None
    dns: tuple[Address, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """How many addresses the range holds."""
        return int(self.end) - int(self.start) + 1

    def address(self, offset: int) -> Address:
        """The ``offset``-th address of the range (0: ``start``)."""
        if not 0 <= offset < self.size:
            raise IndexError(offset)
        return ipaddress.ip_address(int(self.start) + offset)

    def offset(self, address: Address | str) -> int:
        """Where ``address`` is in the range; ValueError if it is not in it."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if ip.version != self.cidr.version or not self.start <= ip <= self.end:  # type: ignore[operator]
            raise ValueError(f"{address} is not in the range {self.start}-{self.end} of subnet {self.id}")
        return int(ip) - int(self.start)

    def overlaps(self, other: Subnet) -> bool:
        return self.cidr.version == other.cidr.version and self.cidr.overlaps(other.cidr)

    def refs(self) -> list[Ref]:
        return [("network", "networks", self.network)]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "metadata": dict(self.metadata), "network": self.network, "cidr": str(self.cidr),
            "gateway": str(self.gateway) if self.gateway is not None else None,
            "start": str(self.start), "end": str(self.end), "dns": [str(a) for a in self.dns],
        }

    @classmethod
    def from_json(cls, d: Any) -> Subnet:
        d, sid, metadata = cls._read(d)
        network = str(_id(d.get("network"), "network"))
        cidr = _cidr(d.get("cidr"), "cidr")
        v4 = cidr.version == 4
        # IPv4's network and broadcast addresses are never a host's (but in a /31 or /32).
        edge = v4 and cidr.prefixlen <= 30

        def inside(value: Any, name: str) -> Address:
            ip = _address(value, name)
            if ip.version != cidr.version:
                raise NetworkObjectError(name, f"{ip} is IPv{ip.version}, the cidr {cidr} is IPv{cidr.version}")
            if ip not in cidr:
                raise NetworkObjectError(name, f"{ip} is outside the cidr {cidr}")
            if edge and ip in (cidr.network_address, cidr.broadcast_address):
                what = "network" if ip == cidr.network_address else "broadcast"
                raise NetworkObjectError(name, f"{ip} is the {what} address of {cidr}")
            return ip

        gateway = inside(d["gateway"], "gateway") if _given(d, "gateway") else None
        # IPv6's first address is the subnet-router anycast address: not handed out by default.
        first = int(cidr.network_address) + (1 if edge or (not v4 and cidr.prefixlen < 127) else 0)
        last = int(cidr.broadcast_address) - (1 if edge else 0)
        if gateway is not None and int(gateway) == first and not _given(d, "start"):
            first += 1
        if gateway is not None and int(gateway) == last and not _given(d, "end"):
            last -= 1
        start = inside(d["start"], "start") if _given(d, "start") else ipaddress.ip_address(first)
        end = inside(d["end"], "end") if _given(d, "end") else ipaddress.ip_address(last)
        if int(start) > int(end):
            raise NetworkObjectError("end", f"{end} is before start {start}")
        if gateway is not None and int(start) <= int(gateway) <= int(end):
            raise NetworkObjectError("gateway", f"{gateway} is inside the range {start}-{end}: it would be handed out")
        dns = tuple(_address(a, f"dns[{i}]") for i, a in enumerate(_list(d.get("dns"), "dns", MAX_DNS, "addresses")))
        return cls(sid, network, cidr, start, end, gateway, dns, metadata)


@dataclass
class Flavor(_Object):
    KIND: ClassVar[str] = "flavors"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "metadata", "image", "vcpus", "memory", "disk", "rx", "tx")
    NAME: ClassVar[str] = "flavor"
    id: str
    vcpus: int
    memory: int  # KiB
    disk: int = 0  # KiB
    rx: int = 0  # KiB/s
    tx: int = 0  # KiB/s
    image: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "metadata": dict(self.metadata), "image": self.image, "vcpus": self.vcpus,
                "memory": self.memory, "disk": self.disk, "rx": self.rx, "tx": self.tx}

    @classmethod
    def from_json(cls, d: Any) -> Flavor:
        d, fid, metadata = cls._read(d)
        return cls(
            fid,
            _int(d.get("vcpus"), "vcpus", 1, MAX_VCPUS),
            _int(d.get("memory"), "memory", 1, MAX_MEMORY_KIB),
            _int(d.get("disk"), "disk", 0, MAX_DISK_KIB, 0),
            _int(d.get("rx"), "rx", 0, MAX_RATE_KIBPS, 0),
            _int(d.get("tx"), "tx", 0, MAX_RATE_KIBPS, 0),
            _id(d.get("image"), "image", required=False),
            metadata,
        )


@dataclass
class FirewallRule:
    FIELDS: ClassVar[tuple[str, ...]] = ("source", "group", "portStart", "portEnd", "protocol", "action")
    protocol: str = "tcp"
    port_start: int = 0
    port_end: int = 0
    action: str = "allow"
    source: IPNetwork | None = None  # None with no group: from anywhere
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source) if self.source is not None else None, "group": self.group,
                "portStart": self.port_start, "portEnd": self.port_end, "protocol": self.protocol,
                "action": self.action}

    @classmethod
    def from_json(cls, d: Any, where: str = "") -> FirewallRule:
        d = _fields(d, "firewall rule", cls.FIELDS, where)
        source = _cidr(d["source"], f"{where}source") if _given(d, "source") else None
        group = _id(d.get("group"), f"{where}group", required=False)
        if source is not None and group is not None:
            raise NetworkObjectError(f"{where}group", "a rule names a source or a group, not both")
        protocol = d.get("protocol", "tcp")
        if protocol not in PROTOCOLS:
            raise NetworkObjectError(f"{where}protocol", f"{_shown(protocol)} is not one of {', '.join(PROTOCOLS)}")
        action = d.get("action", "allow")
        if action not in ACTIONS:
            raise NetworkObjectError(f"{where}action", f"{_shown(action)} is not one of {', '.join(ACTIONS)}")
        start = _int(d.get("portStart"), f"{where}portStart", 0, 65535, 0)
        end = _int(d.get("portEnd"), f"{where}portEnd", 0, 65535, start)
        if protocol in ("tcp", "udp"):
            if (start == 0) != (end == 0):
                raise NetworkObjectError(f"{where}portStart" if start == 0 else f"{where}portEnd",
                                         "ports are both 0 (every port) or both from 1 to 65535")
            if start > end:
                raise NetworkObjectError(f"{where}portEnd", f"{end} is below portStart {start}")
        elif start or end:
            raise NetworkObjectError(f"{where}portStart", f"a {protocol} rule has no ports (both 0)")
        return cls(protocol, start, end, action, source, group)


@dataclass
class FirewallGroup(_Object):
    KIND: ClassVar[str] = "fwgroups"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "metadata", "rules")
    NAME: ClassVar[str] = "firewall group"
    id: str
    rules: list[FirewallRule] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def refs(self) -> list[Ref]:
        # A rule naming its own group (members talk to each other) is no link: the group could
        # never be deleted.
        seen: dict[str, Ref] = {}
        for i, rule in enumerate(self.rules):
            if rule.group and rule.group != self.id and rule.group not in seen:
                seen[rule.group] = (f"rules[{i}].group", "fwgroups", rule.group)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "metadata": dict(self.metadata), "rules": [r.to_json() for r in self.rules]}

    @classmethod
    def from_json(cls, d: Any) -> FirewallGroup:
        d, gid, metadata = cls._read(d)
        raw = _list(d.get("rules"), "rules", MAX_RULES, "rules")
        return cls(gid, [FirewallRule.from_json(r, f"rules[{i}].") for i, r in enumerate(raw)], metadata)


@dataclass
class VLAN:
    KIND: ClassVar[str] = "vlans"
    FIELDS: ClassVar[tuple[str, ...]] = ("tag", "description")
    tag: int
    description: str = ""

    @property
    def id(self) -> str:
        return str(self.tag)

    @property
    def key(self) -> str:
        return str(self.tag)

    def refs(self) -> list[Ref]:
        return []

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "description": self.description}

    @classmethod
    def from_json(cls, d: Any) -> VLAN:
        d = _fields(d, "VLAN", cls.FIELDS)
        return cls(_int(d.get("tag"), "tag", 1, 4094), _text(d.get("description"), "description"))


@dataclass
class VLANGroup(_Object):
    KIND: ClassVar[str] = "vlangroups"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "description", "metadata", "vlans")
    NAME: ClassVar[str] = "VLAN group"
    id: str
    vlans: list[int] = field(default_factory=list)
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def refs(self) -> list[Ref]:
        return [(f"vlans[{i}]", "vlans", str(tag)) for i, tag in enumerate(self.vlans)]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "metadata": dict(self.metadata),
                "vlans": list(self.vlans)}

    @classmethod
    def from_json(cls, d: Any) -> VLANGroup:
        d, gid, metadata = cls._read(d)
        tags = [_int(t, f"vlans[{i}]", 1, 4094) for i, t in enumerate(_list(d.get("vlans"), "vlans", 4094, "VLAN tags"))]
        for i, t in enumerate(tags):
            if t in tags[:i]:
                raise NetworkObjectError(f"vlans[{i}]", f"VLAN {t} is listed twice")
        return cls(gid, tags, _text(d.get("description"), "description"), metadata)


@dataclass
class Guest(_Object):
    """A VM in the network model: what it is tied to, its address and where it runs."""

    KIND: ClassVar[str] = "guests"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "metadata", "type", "flavor", "hypervisor", "network", "subnet",
                                         "fwgroup", "vlangroup", "mac", "ip", "bridge")
    NAME: ClassVar[str] = "guest"
    #: The optional references: (field, the kind it names).
    OPTIONAL_REFS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("subnet", "subnets"), ("fwgroup", "fwgroups"), ("vlangroup", "vlangroups"), ("hypervisor", "hypervisors"))
    id: str
    flavor: str
    network: str
    subnet: str | None = None
    fwgroup: str | None = None
    vlangroup: str | None = None
    hypervisor: str | None = None
    mac: str | None = None
    ip: Address | None = None
    bridge: str | None = None
    type: str = "kvm"
    metadata: dict[str, str] = field(default_factory=dict)

    def refs(self) -> list[Ref]:
        out: list[Ref] = [("flavor", "flavors", self.flavor)]
        for name, kind in self.OPTIONAL_REFS:
            value = getattr(self, name)
            if value:
                out.append((name, kind, value))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "metadata": dict(self.metadata), "type": self.type, "flavor": self.flavor,
                "hypervisor": self.hypervisor, "network": self.network, "subnet": self.subnet,
                "fwgroup": self.fwgroup, "vlangroup": self.vlangroup, "mac": self.mac,
                "ip": str(self.ip) if self.ip is not None else None, "bridge": self.bridge}

    @classmethod
    def from_json(cls, d: Any) -> Guest:
        d, gid, metadata = cls._read(d)
        kind = d.get("type")
        if kind in (None, ""):
            kind = "kvm"
        if kind not in GUEST_TYPES:
            raise NetworkObjectError("type", f"{_shown(kind)} is not one of {', '.join(GUEST_TYPES)}")
        mac = None
        if _given(d, "mac"):
            if not isinstance(d["mac"], str) or not _MAC_RE.fullmatch(d["mac"]):
                raise NetworkObjectError("mac", f"{_shown(d['mac'])} is not a MAC address (six hex octets)")
            mac = ":".join(format(int(p, 16), "02x") for p in d["mac"].split(":"))
        ip = _address(d["ip"], "ip") if _given(d, "ip") else None
        subnet, fwgroup, vlangroup, hypervisor = (_id(d.get(name), name, required=False) for name, _k in cls.OPTIONAL_REFS)
        return cls(
            gid, str(_id(d.get("flavor"), "flavor")), str(_id(d.get("network"), "network")),
            subnet, fwgroup, vlangroup, hypervisor,
            mac, ip, check_bridge(d["bridge"], "bridge") if _given(d, "bridge") else None, kind, metadata,
        )


def check_bridge(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _BRIDGE_RE.fullmatch(value) or value in (".", ".."):
        raise NetworkObjectError(name, f"{_shown(value)} is not a bridge name (1-15 letters, digits, '.', '_', '-')")
    return value


@dataclass
class Hypervisor(_Object):
    """A local controller as Loch Ness's hypervisor: which subnets it serves, on which bridge."""

    KIND: ClassVar[str] = "hypervisors"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "metadata", "config", "subnets")
    NAME: ClassVar[str] = "hypervisor"
    id: str
    subnets: dict[str, str] = field(default_factory=dict)  # subnet id -> bridge
    config: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def refs(self) -> list[Ref]:
        return [(f"subnets.{sid}", "subnets", sid) for sid in sorted(self.subnets)]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "metadata": dict(self.metadata), "config": dict(self.config),
                "subnets": dict(self.subnets)}

    @classmethod
    def from_json(cls, d: Any) -> Hypervisor:
        d, hid, metadata = cls._read(d)
        raw = d.get("subnets") or {}
        if not isinstance(raw, Mapping):
            raise NetworkObjectError("subnets", "a map of subnet id to bridge name")
        subnets = {str(_id(k, f"subnets.{k}")): check_bridge(v, f"subnets.{k}") for k, v in raw.items()}
        return cls(hid, subnets, _strings(d.get("config"), "config"), metadata)


NetworkObject: TypeAlias = Network | Subnet | Flavor | FirewallGroup | VLAN | VLANGroup | Guest | Hypervisor

#: Kind (the store's folder and the API's path) -> class.
KINDS: dict[str, type[NetworkObject]] = {
    c.KIND: c for c in (Network, Subnet, Flavor, FirewallGroup, VLAN, VLANGroup, Guest, Hypervisor)
}


def object_from_json(kind: str, d: Any) -> NetworkObject:
    """The object of ``kind`` (``networks``, ``subnets`` …) read from JSON ``d``."""
    cls = KINDS.get(kind)
    if cls is None:
        raise NetworkObjectError("kind", f"{_shown(kind)} is not one of {', '.join(KINDS)}")
    return cls.from_json(d)


#: The network every VM without one is on (``[groupmanager] virtual_machine_subnet``): every
#: token may use it; others are granted to a user's token (snooze.auth.tokens).
DEFAULT_NETWORK = "default"


def default_objects(cidr: str) -> tuple[Network, Subnet]:
    """Today's ``[groupmanager] virtual_machine_subnet`` as the default network: network
    ``default`` with one subnet ``default``, gateway the first host address, range the rest
    (what ``snooze.virtualcluster.subnet_hosts`` hands out)."""
    net = ipaddress.ip_network(cidr, strict=False)
    hosts = net.num_addresses - (2 if net.version == 4 and net.prefixlen <= 30 else 0)
    first = int(net.network_address) + (1 if net.version == 4 and net.prefixlen <= 30 else 0)
    body: dict[str, Any] = {"id": DEFAULT_NETWORK, "network": DEFAULT_NETWORK, "cidr": str(net)}
    if hosts > 2:
        body["gateway"] = str(ipaddress.ip_address(first))
    return Network(DEFAULT_NETWORK, {"origin": "virtual_machine_subnet"}), Subnet.from_json(body)
