"""The host's side of a VM's interface over netlink (pyroute2): bridges, VLAN sub-interfaces and
tap devices, made idempotently. The one module of ``localcontroller.vif`` that talks netlink,
and the one that maps pyroute2's errors (``NetlinkError``, ``OSError``) to ``VifNetlinkError``.

It works in the namespace of the calling process (a local controller of the ``--hypervisor
qemu`` local cluster runs inside its host's namespace). Every call is blocking: the local
controller runs them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["Link", "VifNetlinkError", "delete_link", "ensure_bridge", "ensure_tap", "ensure_vlan", "get_link", "set_master"]


class VifNetlinkError(Exception):
    """A netlink operation that failed: ``what`` it was, and the kernel's reason."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "bridge", "tun", "vlan", "veth", "" …
    master: int | None
    mtu: int
    up: bool
    address: str


@contextlib.contextmanager
def _ipr(what: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise VifNetlinkError(what, f"{errno.errorcode.get(exc.code, exc.code)} ({exc.args[-1] if exc.args else ''})") from exc
    except OSError as exc:
        raise VifNetlinkError(what, exc.strerror or str(exc)) from exc


def _link(ipr: IPRoute, name: str) -> Link | None:
    # A request for that one name (RTM_GETLINK with IFLA_IFNAME): link_lookup would dump every
    # link of the host, slower with each tap plugged (a host with 200 VMs: a p99 of 300 ms).
    try:
        (msg,) = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
    return Link(index=msg["index"], name=name, kind=kind or "", master=msg.get_attr("IFLA_MASTER"),
                mtu=msg.get_attr("IFLA_MTU") or 0, up=bool(msg["flags"] & 1), address=msg.get_attr("IFLA_ADDRESS") or "")


def get_link(name: str) -> Link | None:
    with _ipr(f"look up {name}") as ipr:
        return _link(ipr, name)


def _settle(ipr: IPRoute, link: Link, *, mtu: int | None, master: int | None | str = "keep", up: bool = True,
            address: str | None = None) -> None:
    changes: dict[str, Any] = {}
    if mtu and link.mtu != mtu:
        changes["mtu"] = mtu
    if master != "keep" and link.master != master:
        changes["master"] = master or 0
    if address and link.address != address:
        changes["address"] = address
    if up and not link.up:
        changes["state"] = "up"
    if changes:
        ipr.link("set", index=link.index, **changes)


def ensure_bridge(name: str, mtu: int | None = None) -> bool:
    """The bridge ``name``, up (and of ``mtu``); True if this call made it."""
    with _ipr(f"make bridge {name}") as ipr:
        link = _link(ipr, name)
        made = False
        if link is None:
            ipr.link("add", ifname=name, kind="bridge")
            made = True
            link = _link(ipr, name)
            assert link is not None
        elif link.kind != "bridge":
            raise VifNetlinkError(f"make bridge {name}", f"{name} exists and is a {link.kind or 'plain'} device, not a bridge")
        _settle(ipr, link, mtu=mtu)
        return made


def ensure_vlan(parent: str, tag: int, bridge: str, mtu: int | None = None) -> tuple[str, bool]:
    """The VLAN sub-interface ``vlanTAG`` of ``parent``, a port of ``bridge``, up; its name and
    whether this call made it."""
    name = f"vlan{tag}"
    with _ipr(f"make VLAN {tag} on {parent}") as ipr:
        base = _link(ipr, parent)
        if base is None:
            raise VifNetlinkError(f"make VLAN {tag} on {parent}", f"no device {parent}")
        br = _link(ipr, bridge)
        if br is None:
            raise VifNetlinkError(f"make VLAN {tag} on {parent}", f"no bridge {bridge}")
        link = _link(ipr, name)
        made = False
        if link is None:
            ipr.link("add", ifname=name, kind="vlan", link=base.index, vlan_id=tag)
            made = True
            link = _link(ipr, name)
            assert link is not None
        _settle(ipr, link, mtu=mtu, master=br.index)
        return name, made


def set_master(name: str, bridge: str) -> None:
    """``name`` a port of ``bridge`` (an uplink), up."""
    with _ipr(f"put {name} on {bridge}") as ipr:
        link, br = _link(ipr, name), _link(ipr, bridge)
        if link is None or br is None:
            raise VifNetlinkError(f"put {name} on {bridge}", f"no device {name if link is None else bridge}")
        _settle(ipr, link, mtu=None, master=br.index)


def ensure_tap(name: str, *, bridge: str | None, mtu: int | None = None, guest_mac: str | None = None) -> bool:
    """A persistent tap device ``name`` (a VM's network card's host end; QEMU opens it), on
    ``bridge`` unless None, up; True if this call made it.

    Its own MAC is the guest's with the first byte ``fe``, as libvirt does: a bridge takes the
    lowest MAC of its ports as its own, and must never take a guest's."""
    with _ipr(f"make tap {name}") as ipr:
        link = _link(ipr, name)
        made = False
        if link is None:
            ipr.link("add", ifname=name, kind="tuntap", mode="tap")
            made = True
            link = _link(ipr, name)
            assert link is not None
        elif link.kind != "tun":
            raise VifNetlinkError(f"make tap {name}", f"{name} exists and is a {link.kind or 'plain'} device, not a tap")
        master: int | None | str = "keep"
        if bridge is not None:
            br = _link(ipr, bridge)
            if br is None:
                raise VifNetlinkError(f"make tap {name}", f"no bridge {bridge}")
            master = br.index
        _settle(ipr, link, mtu=mtu, master=master, address=f"fe{guest_mac[2:]}" if guest_mac else None)
        return made


def delete_link(name: str) -> bool:
    """Remove the device ``name``; False if there was none."""
    with _ipr(f"remove {name}") as ipr:
        link = _link(ipr, name)
        if link is None:
            return False
        try:
            ipr.link("del", index=link.index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True
