"""The group manager's part of VIF plugging (os-vif's model, ``snooze.vif``): a joining host's
``HostInfo`` is checked (a host whose VIF objects are newer than ours is refused: upgrade group
managers first), and each VM started on a host that plugs gets a VIF in its start order, built
here with the plugin and versions chosen within that host's ``HostInfo`` and back-levelled to
them."""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from typing import Any

from snooze.codes import ErrorCode
from snooze.config import GroupManagerSettings
from snooze.http import ApiError
from snooze.vif import objects as o
from snooze.vif.negotiate import check_host, choose
from snooze.vif.versioned import ObjectError, VersionTooNew, from_wire, to_wire

__all__ = ["tap_name", "vif_for", "vif_host_info"]

#: The namespace of VIF ids derived from VM ids.
VIF_NAMESPACE = uuid.UUID("5f0c1c8e-4d55-4bd6-9d5e-5e1b0a7f1c2a")


def vif_host_info(lc_id: str, raw: Any) -> o.HostInfo | None:
    """The joining host's HostInfo (None if it sent none); ApiError refusing the join if it does
    not read, or if its objects are newer than ours."""
    if raw is None:
        return None
    try:
        host = from_wire(raw, o.HostInfo, field="hostInfo")
        check_host(lc_id, host)
    except VersionTooNew as exc:
        raise ApiError(ErrorCode.VIF_VERSION_TOO_NEW, exc.message, field="hostInfo") from exc
    except ObjectError as exc:
        raise ApiError(ErrorCode.BAD_JOIN, f"bad join request: {exc.message}", field=exc.field or "hostInfo") from exc
    return host


def tap_name(vm_id: str) -> str:
    """The VM's tap device on its host: ``tap`` + 11 hex digits of its id's hash (15 characters
    at most, the kernel's limit; the same on every host, so a migrated domain finds it)."""
    return "tap" + hashlib.sha256(vm_id.encode()).hexdigest()[:11]


def _mac(raw: Any) -> str | None:
    if not isinstance(raw, str) or not raw:
        return None
    parts = raw.split(":")
    return ":".join(p.zfill(2) for p in parts).lower() if len(parts) == 6 else raw.lower()


def vif_for(vm: dict[str, Any], lc_id: str, host: o.HostInfo, settings: GroupManagerSettings) -> dict[str, Any]:
    """The wire form of the VIF of ``vm`` on host ``lc_id``; NoMatchingPlugin if the host has
    none of ``[groupmanager] vif_plugins``."""
    choice = choose(lc_id, host, settings.vif_plugins)
    vm_id = str(vm["id"])
    cidr = str(vm.get("cidr") or vm.get("subnet") or settings.virtual_machine_subnet)
    ip = vm.get("ip")
    # The gateway the guest's config drive gets too: the subnet's first address.
    net = ipaddress.ip_network(cidr, strict=False)
    gateway = str(vm.get("gateway") or next(net.hosts(), net.network_address))
    subnet = o.Subnet(cidr=str(net), gateway=gateway, ips=[str(ip)] if ip else [])
    network = o.Network(id=str(vm.get("network") or "default"), bridge=settings.vif_bridge, subnets=[subnet],
                        should_provide_bridge=True, mtu=settings.vif_mtu or None,
                        bridge_interface=settings.vif_uplink or None)
    common: dict[str, Any] = {"id": str(uuid.uuid5(VIF_NAMESPACE, vm_id)), "address": _mac(vm.get("mac")),
                              "network": network, "plugin": choice.plugin, "vif_name": tap_name(vm_id)}
    vif: o.VIFBase
    if choice.vif_object_name == "VIFOpenVSwitch":
        vif = o.VIFOpenVSwitch(**common, bridge_name=settings.vif_bridge,
                               port_profile=o.VIFPortProfileOpenVSwitch(interface_id=common["id"]))
    elif choice.vif_object_name == "VIFBridge":
        vif = o.VIFBridge(**common, bridge_name=settings.vif_bridge)
    else:
        vif = o.VIFGeneric(**common)
    return to_wire(vif, choice.manifest)
