"""os-vif's objects, with its names and fields, as versioned objects (``snooze.vif.versioned``).

A VIF says how one network card of a VM meets the host's network: which plugin plugs it
(``plugin``), the device on the host (``vif_name``), the bridge (``bridge_name``), and for Open
vSwitch a port profile (``VIFPortProfileOpenVSwitch``: ``interface_id``, ``datapath_type``,
``create_port``). ``Network`` and ``Subnet`` describe what it joins. ``InstanceInfo`` names the
VM. ``HostInfo`` → ``HostPluginInfo`` → ``HostVIFInfo`` (→ ``HostPortProfileInfo``) is what a
host can plug, at which versions: a local controller sends it when it joins, and its group
manager chooses the plugin and the versions within it (``snooze.vif.negotiate``).

Version history (a change of fields needs a new version: ``tests/unit/test_vif_objects.py``
holds every class's fingerprint):

* ``VIFPortProfileOpenVSwitch`` 1.1 added ``datapath_type``, 1.2 ``create_port`` (as os-vif).
* ``Network`` 1.1 added ``mtu``.
* ``HostVIFInfo`` 1.1 added ``supported_port_profiles`` (as os-vif).
* ``HostInfo.object_versions`` is Snooze's: every object's version on the host, so that its
  group manager back-levels the whole VIF (network, subnets) and not only the VIF class.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from snooze.vif.versioned import VersionedObject, checked, parse_version, register, since

__all__ = [
    "DATAPATH_TYPES",
    "HostInfo",
    "HostPluginInfo",
    "HostPortProfileInfo",
    "HostVIFInfo",
    "InstanceInfo",
    "Network",
    "Subnet",
    "VIFBase",
    "VIFBridge",
    "VIFGeneric",
    "VIFOpenVSwitch",
    "VIFPortProfileBase",
    "VIFPortProfileOpenVSwitch",
]

#: Open vSwitch datapaths: the kernel's (``system``) or the userspace one (``netdev``).
DATAPATH_TYPES = ("system", "netdev")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_OBJECT_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")


def _uuid(value: Any) -> str | None:
    try:
        return None if str(uuidlib.UUID(value)) == value else "must be a UUID in its canonical lower-case form"
    except (ValueError, AttributeError, TypeError):
        return "must be a UUID"


def _ifname(value: Any) -> str | None:
    # The kernel's IFNAMSIZ: 15 characters; no "/" or blanks (a path, a shell word).
    return None if _IFNAME.fullmatch(value) else "must be a device name of 1-15 letters, digits, _ . : -"


def _mac(value: Any) -> str | None:
    if not _MAC.fullmatch(value):
        return "must be a MAC address like 52:54:00:12:34:56 (lower case)"
    return "must be a unicast MAC address" if int(value[:2], 16) & 1 else None


def _cidr(value: Any) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return "must be a network in CIDR form with no host bits set"
    return None


def _ip(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def _vlan(value: Any) -> str | None:
    return None if 1 <= value <= 4094 else "must be a VLAN tag from 1 to 4094"


def _mtu(value: Any) -> str | None:
    return None if 68 <= value <= 65535 else "must be an MTU from 68 to 65535"


def _datapath(value: Any) -> str | None:
    return None if value in DATAPATH_TYPES else f"must be one of {', '.join(DATAPATH_TYPES)}"


def _version(value: Any) -> str | None:
    try:
        parse_version(value)
    except ValueError:
        return "must be a version MAJOR.MINOR"
    return None


def _object_name(value: Any) -> str | None:
    return None if _OBJECT_NAME.fullmatch(value) else "must be an object's class name"


def _text(limit: int) -> Any:
    def check(value: Any) -> str | None:
        return None if len(value) <= limit and value.isprintable() else f"must be printable text of at most {limit} characters"
    return check


# -- what a VIF joins ----------------------------------------------------------------------
@register
@dataclass(kw_only=True)
class Subnet(VersionedObject):
    VERSION = "1.0"
    cidr: str = field(metadata=checked(_cidr))
    gateway: str | None = field(default=None, metadata=checked(_ip))
    dns: list[str] = field(default_factory=list, metadata=checked(_ip))
    #: The VIF's own addresses in this subnet (os-vif: a FixedIPList).
    ips: list[str] = field(default_factory=list, metadata=checked(_ip))


@register
@dataclass(kw_only=True)
class Network(VersionedObject):
    VERSION = "1.1"
    id: str = field(metadata=checked(_text(63)))
    label: str = field(default="", metadata=checked(_text(255)))
    bridge: str | None = field(default=None, metadata=checked(_ifname))
    subnets: list[Subnet] = field(default_factory=list)
    multi_host: bool = False
    should_provide_bridge: bool = False
    should_provide_vlan: bool = False
    #: The host's interface the bridge reaches other hosts through (its VLAN's parent).
    bridge_interface: str | None = field(default=None, metadata=checked(_ifname))
    vlan: int | None = field(default=None, metadata=checked(_vlan))
    mtu: int | None = field(default=None, metadata=since("1.1", check=_mtu))


@register
@dataclass(kw_only=True)
class InstanceInfo(VersionedObject):
    VERSION = "1.0"
    uuid: str = field(metadata=checked(_uuid))
    name: str = field(default="", metadata=checked(_text(255)))
    project_id: str | None = field(default=None, metadata=checked(_text(255)))


# -- port profiles -------------------------------------------------------------------------
@register
@dataclass(kw_only=True)
class VIFPortProfileBase(VersionedObject):
    VERSION = "1.0"


@register
@dataclass(kw_only=True)
class VIFPortProfileOpenVSwitch(VIFPortProfileBase):
    VERSION = "1.2"
    #: Open vSwitch's ``iface-id`` external id: the port's id in the network's view.
    interface_id: str = field(metadata=checked(_uuid))
    profile_id: str = field(default="", metadata=checked(_text(255)))
    datapath_type: str = field(default="system", metadata=since("1.1", check=_datapath))
    #: The plugin creates the OVS port itself (libvirt then only opens the device).
    create_port: bool = field(default=False, metadata=since("1.2"))


# -- VIFs ----------------------------------------------------------------------------------
@register
@dataclass(kw_only=True)
class VIFBase(VersionedObject):
    VERSION = "1.0"
    id: str = field(metadata=checked(_uuid))
    address: str | None = field(default=None, metadata=checked(_mac))
    network: Network | None = None
    plugin: str = field(metadata=checked(_text(63)))
    active: bool = True
    preserve_on_delete: bool = False
    has_traffic_filtering: bool = False
    port_profile: VIFPortProfileBase | None = None


@register
@dataclass(kw_only=True)
class VIFGeneric(VIFBase):
    """A bare tap device; everything else is the plugin's (libvirt: ``type='ethernet'``)."""

    VERSION = "1.0"
    vif_name: str = field(metadata=checked(_ifname))


@register
@dataclass(kw_only=True)
class VIFBridge(VIFBase):
    """A tap device on a Linux bridge."""

    VERSION = "1.0"
    vif_name: str = field(metadata=checked(_ifname))
    bridge_name: str = field(metadata=checked(_ifname))


@register
@dataclass(kw_only=True)
class VIFOpenVSwitch(VIFBridge):
    """A port of an Open vSwitch bridge."""

    VERSION = "1.0"


# -- what a host can plug ------------------------------------------------------------------
@register
@dataclass(kw_only=True)
class HostPortProfileInfo(VersionedObject):
    VERSION = "1.0"
    profile_object_name: str = field(metadata=checked(_object_name))
    min_version: str = field(metadata=checked(_version))
    max_version: str = field(metadata=checked(_version))


@register
@dataclass(kw_only=True)
class HostVIFInfo(VersionedObject):
    VERSION = "1.1"
    vif_object_name: str = field(metadata=checked(_object_name))
    min_version: str = field(metadata=checked(_version))
    max_version: str = field(metadata=checked(_version))
    supported_port_profiles: list[HostPortProfileInfo] = field(default_factory=list, metadata=since("1.1"))


@register
@dataclass(kw_only=True)
class HostPluginInfo(VersionedObject):
    VERSION = "1.0"
    plugin_name: str = field(metadata=checked(_text(63)))
    vif_info: list[HostVIFInfo] = field(default_factory=list)


@register
@dataclass(kw_only=True)
class HostInfo(VersionedObject):
    VERSION = "1.0"
    plugin_info: list[HostPluginInfo] = field(default_factory=list)
    #: Every versioned object's newest version on the host (Snooze's addition).
    object_versions: dict[str, str] = field(default_factory=dict, metadata=checked(_version))

    def plugin(self, name: str) -> HostPluginInfo | None:
        return next((p for p in self.plugin_info if p.plugin_name == name), None)
