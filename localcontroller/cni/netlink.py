"""The container's interface made, checked and removed with pyroute2: the one module that talks
netlink, and the one that maps pyroute2's errors (``NetlinkError``, ``OSError``) to the CNI's.

A port in ``veth`` mode is a veth pair born with its peer already in the container's namespace
under ``CNI_IFNAME`` (the kernel refuses an existing name there: that is the "ADD fails if the
interface exists" check, with no window), its host end plugged into the host bridge that holds
the subnet's gateway. In ``macvlan`` mode it is a macvlan sub-interface of a host interface,
moved into the namespace under a temporary name and renamed there. MAC, MTU, address and
routes are set inside the namespace; an error at any step removes what was made, and is
returned (Contrail's ADD ignored an error of the interface's creation).

The plugin is a short-lived single-threaded process, so it enters the container's namespace by
switching its own thread (``setns``) and back: netlink sockets keep the namespace they were
opened in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from localcontroller.cni.spec import (
    CHECK_FAILED,
    INTERFACE_EXISTS,
    LINK_FAILED,
    CniError,
    PortConfig,
)

__all__ = ["add_port", "check_port", "delete_host_link", "delete_in_netns", "host_link_exists", "netns_exists"]

CLONE_NEWNET = 0x40000000
_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_exists(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(LINK_FAILED, f"cannot open the container's network namespace {path}", exc.strerror or "") from exc


@contextlib.contextmanager
def _inside(netns_fd: int) -> Iterator[IPRoute]:
    """A netlink socket in the namespace ``netns_fd``; this thread is back in its own after."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd)
        try:
            ipr = IPRoute()
        finally:
            _setns(home)
        with ipr:
            yield ipr
    finally:
        os.close(home)


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def host_link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _index(ipr, name) is not None


def _link_mac(ipr: IPRoute, index: int) -> str:
    link = ipr.get_links(index)[0]
    return str(link.get("IFLA_ADDRESS") or "")


def _ensure_bridge(ipr: IPRoute, bridge: str, gateway: str | None, plen: int, mtu: int) -> int:
    """The host bridge's index, made (up, forwarding at once) if missing; it holds the gateway
    address so containers and VMs on it reach their gateway (the reference plugin's isGateway)."""
    index = _index(ipr, bridge)
    if index is None:
        with contextlib.suppress(NetlinkError):  # made meanwhile by a concurrent ADD
            ipr.link("add", ifname=bridge, kind="bridge", br_forward_delay=0, br_stp_state=0)
        index = _index(ipr, bridge)
        if index is None:
            raise CniError(LINK_FAILED, f"cannot make the bridge {bridge}")
    if gateway:
        present = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
        if gateway not in present:
            with contextlib.suppress(NetlinkError):  # EEXIST: added meanwhile
                ipr.addr("add", index=index, address=gateway, prefixlen=plen)
    ipr.link("set", index=index, state="up")
    return index


def add_port(netns: str, ifname: str, host_if: str, cfg: PortConfig, mtu: int, mode: str,
             bridge: str, parent: str) -> str:
    """Make the port; returns the host end's MAC ("" in macvlan mode). CniError 100 if
    ``ifname`` exists in the namespace, 101 for any other failure, nothing left behind."""
    fd = _open_netns(netns)
    made_host = False
    made = False  # only what this call made is removed on failure (a duplicate ADD's EEXIST is not ours)
    try:
        with IPRoute() as host:
            try:
                if mode == "veth":
                    br = _ensure_bridge(host, bridge, cfg.gateway, cfg.ip.network.prefixlen, mtu) if bridge else None
                    host.link("add", ifname=host_if, kind="veth", mtu=mtu,
                              peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu, "address": cfg.mac})
                    made_host = made = True
                    hidx = _index(host, host_if)
                    assert hidx is not None
                    if br is not None:
                        host.link("set", index=hidx, master=br)
                    host.link("set", index=hidx, state="up")
                    host_mac = _link_mac(host, hidx)
                else:
                    pidx = _index(host, parent)
                    if pidx is None:
                        raise CniError(LINK_FAILED, f"macvlan parent {parent} does not exist")
                    host.link("add", ifname=host_if, kind="macvlan", link=pidx, macvlan_mode="bridge",
                              address=cfg.mac, mtu=mtu)
                    made_host = made = True
                    hidx = _index(host, host_if)
                    assert hidx is not None
                    host.link("set", index=hidx, net_ns_fd=fd)
                    made_host = False  # it lives in the container now
                    host_mac = ""
            except NetlinkError as exc:
                if exc.code == errno.EEXIST and not made_host:
                    with _inside(fd) as ipr:
                        if _index(ipr, ifname) is not None:
                            raise CniError(INTERFACE_EXISTS, f"interface {ifname} exists in {netns} already") from None
                    raise CniError(LINK_FAILED, f"host interface {host_if} exists already (another port's?)") from None
                raise CniError(LINK_FAILED, f"cannot make the port's interface: {exc}") from None
        try:
            with _inside(fd) as ipr:
                if mode == "macvlan":
                    if _index(ipr, ifname) is not None:
                        raise CniError(INTERFACE_EXISTS, f"interface {ifname} exists in {netns} already")
                    ipr.link("set", index=_index(ipr, host_if), ifname=ifname)
                idx = _index(ipr, ifname)
                if idx is None:
                    raise CniError(LINK_FAILED, f"{ifname} did not appear in {netns}")
                ipr.link("set", index=idx, address=cfg.mac, mtu=mtu)
                ipr.addr("add", index=idx, address=str(cfg.ip.ip), prefixlen=cfg.ip.network.prefixlen)
                ipr.link("set", index=idx, state="up")
                lo = _index(ipr, "lo")
                if lo is not None:
                    ipr.link("set", index=lo, state="up")
                if cfg.gateway:
                    dst = "0.0.0.0/0" if cfg.ip.version == 4 else "::/0"
                    ipr.route("add", dst=dst, gateway=cfg.gateway, oif=idx)
        except NetlinkError as exc:
            raise CniError(LINK_FAILED, f"cannot configure {ifname} in {netns}: {exc}") from None
        except OSError as exc:
            raise CniError(LINK_FAILED, f"cannot enter {netns}: {exc}") from None
        return host_mac
    except BaseException:
        # Nothing half-made stays: the veth (both ends) or the macvlan goes.
        if not made:
            raise
        with contextlib.suppress(Exception):
            delete_host_link(host_if)
        if mode == "macvlan":
            with contextlib.suppress(Exception):
                _delete_named_in(fd, host_if)
        raise
    finally:
        os.close(fd)


def _delete_named_in(fd: int, name: str) -> bool:
    with _inside(fd) as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        ipr.link("del", index=idx)
        return True


def delete_in_netns(netns: str, ifname: str) -> bool:
    """Remove ``ifname`` from the namespace (a veth's host end goes with it); False if the
    namespace or the interface is not there (a DEL is idempotent)."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _delete_named_in(fd, ifname)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise CniError(LINK_FAILED, f"cannot remove {ifname} from {netns}: {exc}") from None
    finally:
        os.close(fd)


def delete_host_link(name: str) -> bool:
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise CniError(LINK_FAILED, f"cannot remove {name}: {exc}") from None
        return True


def check_port(netns: str, ifname: str, mac: str, addresses: list[str]) -> None:
    """CHECK: the interface is in the namespace, up, with ``mac`` and every address of
    ``addresses`` (CIDR strings); CniError 103 saying what differs."""
    if not netns_exists(netns):
        raise CniError(CHECK_FAILED, f"network namespace {netns} is gone")
    fd = _open_netns(netns)
    try:
        with _inside(fd) as ipr:
            idx = _index(ipr, ifname)
            if idx is None:
                raise CniError(CHECK_FAILED, f"interface {ifname} is not in {netns}")
            have_mac = _link_mac(ipr, idx).lower()
            if mac and have_mac != mac.lower():
                raise CniError(CHECK_FAILED, f"{ifname} has MAC {have_mac}, not {mac}")
            present = {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)}
            for want in addresses:
                norm = str(ipaddress.ip_interface(want))
                if norm not in present:
                    raise CniError(CHECK_FAILED, f"{ifname} in {netns} lacks address {norm}",
                                   f"has: {', '.join(sorted(present)) or 'none'}")
    except NetlinkError as exc:
        raise CniError(CHECK_FAILED, f"cannot read {ifname} in {netns}: {exc}") from None
    finally:
        os.close(fd)
