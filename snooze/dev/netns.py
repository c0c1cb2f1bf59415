"""Network namespaces for the local cluster: every process on its own "host", all joined by a
bridge, on a subnet that exists only inside them (``snooze cluster up --netns``).

The layout of one cluster (``Fabric``):

- a *fabric* namespace holding a bridge (``br0``) with the subnet's first address, so a client
  run inside the fabric namespace reaches every process;
- per process (ZooKeeper too) its own namespace with ``lo`` and ``eth0``, the other end of a veth
  pair whose fabric-side end (``v-ID``) is a port of the bridge. Setting that end down
  (``ip -n FABRIC link set v-ID down``) cuts the process off; up heals it.

Nothing is ever created in the root namespace: each veth pair is made inside the fabric
namespace with its peer born in the process's namespace. That matters: from the root namespace
a 10.x address is routed out to the real network. Names derive from a short hash of the state
dir (``snzHHHHHH-ID``), so two clusters never share a namespace; the subnet is
``10.213.N.0/24`` with ``N`` from the same hash (only cosmetic: the subnets are private to each
cluster's namespaces, so equal ones never meet).

Code of this process reaches into a namespace by thread: Python 3.11 has no ``os.setns``, so
``enter`` calls libc's ``setns`` through ctypes, which switches the calling thread only; a socket
keeps the namespace it was created in, whichever thread uses it later. ``call_in`` runs a
function on such a thread; ``Forwarder`` (``python -m snooze.dev.netns forward``) relays a port
on 127.0.0.1 of the root namespace to an address inside a namespace, which is how clients in
the root namespace reach the cluster's bootstrap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "BRIDGE",
    "Fabric",
    "add_bridge",
    "Forwarder",
    "Host",
    "NamespaceExecutor",
    "NetnsError",
    "available",
    "call_in",
    "delete_namespaces",
    "enter",
    "ip",
    "namespace_pids",
    "namespaces",
    "route_device",
    "set_link",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
INSIDE = "eth0"  # the process's end of its link, in its own namespace
#: With --hypervisor qemu --vif: the guests' network across hosts, in the fabric namespace.
GUEST_BRIDGE = "br-guests"
#: A host's end of its link to GUEST_BRIDGE (its VIF plugin puts it on the host's VM bridge).
GUEST_UPLINK = "vm-uplink"
PREFIX = "snz"
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class NetnsError(RuntimeError):
    """A namespace, link or address could not be made, changed or removed; says which and why."""


def available() -> str | None:
    """None if this machine can make network namespaces; else why not (for a clear refusal)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or without --netns)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    return None


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS``; its output, or NetnsError with what it said."""
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def namespaces(prefix: str = "") -> list[str]:
    """Named network namespaces whose name starts with ``prefix``."""
    names = [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def namespace_pids(name: str) -> list[int]:
    """Processes running in namespace ``name`` (empty if it does not exist)."""
    return [int(p) for p in ip("netns", "pids", name, check=False).split() if p.isdigit()]


def delete_namespaces(names: list[str]) -> list[str]:
    """Delete each named namespace (its veths and bridge go with it); returns those deleted.

    A name that does not exist (any more) is skipped: this also cleans up after an ``up`` that
    died between recording a name and creating it.
    """
    existing = set(namespaces())
    deleted = []
    for name in names:
        if name in existing:
            ip("netns", "delete", name, check=False)
            deleted.append(name)
    return deleted


def set_link(fabric_netns: str, interface: str, up: bool) -> None:
    """Bring one fabric-side link ``up`` or down: heal or cut the process behind it."""
    ip("link", "set", interface, "up" if up else "down", netns=fabric_netns)


def add_bridge(netns: str, name: str, address: str) -> None:
    """A bridge ``name`` in namespace ``netns`` holding ``address`` (``A.B.C.D/PREFIX``), up;
    nothing is done if it is already there with that address. Guests' taps are plugged into it
    (a host's VM network: the gateway of the VM subnet, reachable from that namespace only)."""
    if not IFNAME.fullmatch(name):
        raise NetnsError(f"invalid interface name {name!r}")
    existing = ip("-o", "addr", "show", "dev", name, netns=netns, check=False)
    if f" {address} " in existing:
        return
    ip("link", "add", name, "type", "bridge", netns=netns)
    # Forward at once: no STP listening delay before a new guest's port passes traffic.
    ip("link", "set", name, "type", "bridge", "forward_delay", "0", "stp_state", "0", netns=netns)
    ip("addr", "add", address, "dev", name, netns=netns)
    ip("link", "set", name, "up", netns=netns)


def route_device(netns: str, address: str) -> str:
    """The device namespace ``netns`` routes ``address`` through (to check before sending)."""
    out = ip("route", "get", address, netns=netns)
    match = re.search(r"\bdev (\S+)", out)
    if not match:
        raise NetnsError(f"no route to {address} in namespace {netns}: {out.strip()}")
    return match.group(1)


# -- entering a namespace from Python ------------------------------------------------------
_libc: Any = None


def enter(netns: str) -> None:
    """Move the calling thread (only it) into network namespace ``netns``."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"no network namespace {netns}: {exc.strerror}") from exc
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(netns: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a fresh thread inside ``netns``: its sockets live there."""
    result: Future[T] = Future()

    def run() -> None:
        try:
            enter(netns)
            result.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller, whatever it is
            result.set_exception(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    return result.result()


class NamespaceExecutor(ThreadPoolExecutor):
    """A thread pool whose threads all live in ``netns``: what they create (sockets) is there."""

    def __init__(self, netns: str, workers: int = 1) -> None:
        super().__init__(max_workers=workers, thread_name_prefix=f"netns-{netns}", initializer=enter, initargs=(netns,))
        self.netns = netns


# -- one cluster's namespaces --------------------------------------------------------------
@dataclass
class Host:
    """A process's namespace, its address on the fabric and the fabric-side end of its link."""

    process_id: str
    netns: str
    address: str
    link: str


@dataclass
class Fabric:
    """The namespaces of one cluster (see the module docstring); nothing exists until created.

    ``on_change`` is called before each namespace is created, so the caller can record its name
    first (an ``up`` that dies right after still leaves a record of what to delete).
    """

    prefix: str
    octet: int
    hosts: dict[str, Host] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    on_change: Callable[[], None] = field(default=lambda: None, repr=False)

    @classmethod
    def for_state_dir(cls, state_dir: Path, on_change: Callable[[], None] | None = None) -> Fabric:
        digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()
        return cls(prefix=f"{PREFIX}{digest[:6]}", octet=int(digest[6:8], 16), on_change=on_change or (lambda: None))

    @property
    def netns(self) -> str:
        return f"{self.prefix}-fabric"

    @property
    def subnet(self) -> str:
        return f"10.213.{self.octet}.0/24"

    @property
    def address(self) -> str:
        """The bridge's own address: a client in the fabric namespace sends from it."""
        return f"10.213.{self.octet}.1"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this cluster, made or planned: what ``delete`` removes."""
        return [self.netns, *(h.netns for h in self.hosts.values())]

    def links(self) -> dict[str, str]:
        return {h.process_id: h.link for h in self.hosts.values()}

    def plan_host(self, process_id: str) -> Host:
        """Name, address and link of ``process_id``'s namespace (made by ``add_host``)."""
        if process_id in self.hosts:
            return self.hosts[process_id]
        n = len(self.hosts) + 2  # .1 is the bridge
        if n > 254:
            raise NetnsError(f"no address left in {self.subnet} for {process_id}")
        link = f"v-{process_id}"
        if not IFNAME.fullmatch(link):
            link = f"v{n}"  # interface names: at most 15 characters
        host = Host(process_id, f"{self.prefix}-{process_id}", f"10.213.{self.octet}.{n}", link)
        self.hosts[process_id] = host
        return host

    def _add_namespace(self, name: str) -> None:
        self.created.append(name)
        self.on_change()  # recorded before it exists
        ip("netns", "add", name)
        ip("link", "set", "lo", "up", netns=name)

    def create(self) -> None:
        """The fabric namespace and its bridge, with the subnet's first address."""
        self._add_namespace(self.netns)
        ip("link", "add", BRIDGE, "type", "bridge", netns=self.netns)
        # Without snooping the bridge floods multicast heartbeats to every port (no querier here).
        ip("link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0", netns=self.netns)
        ip("addr", "add", f"{self.address}/24", "dev", BRIDGE, netns=self.netns)
        ip("link", "set", BRIDGE, "up", netns=self.netns)

    def add_host(self, process_id: str) -> Host:
        """Make ``process_id``'s namespace and plug it into the bridge."""
        host = self.plan_host(process_id)
        if host.netns in self.created:
            return host
        self._add_namespace(host.netns)
        # Both ends are born outside the root namespace: the peer directly in the process's one.
        ip("link", "add", host.link, "type", "veth", "peer", "name", INSIDE, "netns", host.netns, netns=self.netns)
        ip("link", "set", host.link, "master", BRIDGE, "up", netns=self.netns)
        ip("addr", "add", f"{host.address}/24", "dev", INSIDE, netns=host.netns)
        ip("link", "set", INSIDE, "up", netns=host.netns)
        return host

    def add_guest_network(self, gateway: str) -> None:
        """The guests' own network across hosts (``--hypervisor qemu --vif``): a bridge
        ``br-guests`` in the fabric namespace holding the VM subnet's gateway (``A.B.C.D/P``);
        each host joins it by an uplink (``add_guest_uplink``) that its VIF plugin puts on the
        host's VM bridge. A client here reaches every guest, wherever it runs."""
        add_bridge(self.netns, GUEST_BRIDGE, gateway)

    def add_guest_uplink(self, process_id: str, *, no_tx_offload: bool = False) -> str:
        """A veth from ``br-guests`` to ``process_id``'s namespace, named ``vm-uplink`` there (its
        VIF plugin enslaves it); the fabric side's name is returned. ``no_tx_offload``: both
        ends without transmit checksum offload (Open vSwitch's userspace datapath forwards
        such packets with their checksums never filled in)."""
        host = self.hosts[process_id]
        link = f"g-{process_id}" if IFNAME.fullmatch(f"g-{process_id}") else f"g{host.link[1:]}"[:15]
        ip("link", "add", link, "type", "veth", "peer", "name", GUEST_UPLINK, "netns", host.netns, netns=self.netns)
        ip("link", "set", link, "master", GUEST_BRIDGE, "up", netns=self.netns)
        ip("link", "set", GUEST_UPLINK, "up", netns=host.netns)
        if no_tx_offload:
            for ns, dev in ((self.netns, link), (host.netns, GUEST_UPLINK)):
                subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"], capture_output=True,
                               check=False, timeout=30)
        return link

    def cut(self, process_id: str) -> None:
        set_link(self.netns, self.hosts[process_id].link, False)

    def heal(self, process_id: str) -> None:
        set_link(self.netns, self.hosts[process_id].link, True)

    def delete(self) -> list[str]:
        deleted = delete_namespaces(list(dict.fromkeys(self.created + self.namespaces)))
        self.created.clear()
        return deleted

    def to_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "subnet": self.subnet, "address": self.address, "links": self.links()}


# -- the forwarder: root namespace 127.0.0.1:PORT -> ADDRESS:PORT inside a namespace ----------
class Forwarder:
    """Relays TCP connections accepted on ``listen`` (in this process's namespace) to ``target``,
    connecting from inside ``netns``: the outgoing sockets are made on a thread living there."""

    def __init__(self, listen: tuple[str, int], netns: str, target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.pool = NamespaceExecutor(netns)

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        server = await asyncio.start_server(self._relay, *self.listen, reuse_address=True)
        log.info("forwarding %s:%d to %s:%d in namespace %s", *self.listen, *self.target, self.pool.netns)
        async with server:
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()
        self.pool.shutdown(wait=False)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(self.pool, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot make a socket in namespace %s: %s", self.pool.netns, exc)
            writer.close()
            return
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, self.target), 10)
            out_reader, out_writer = await asyncio.open_connection(sock=sock)
        except (TimeoutError, OSError) as exc:
            log.warning("cannot reach %s:%d: %s", *self.target, exc)
            sock.close()
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, out_writer), _pipe(out_reader, writer))
        finally:
            for w in (writer, out_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of file, then pass the half-close on; on an error close the writer, which
    ends the other direction too (it shares the socket)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snooze.dev.netns", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser("forward", help="relay LISTEN (here) to TARGET, connecting from inside NETNS")
    fwd.add_argument("listen", type=_address, help="HOST:PORT to listen on, in this namespace")
    fwd.add_argument("netns", help="the namespace the outgoing connections start from")
    fwd.add_argument("target", type=_address, help="HOST:PORT to connect to, from inside NETNS")
    fwd.add_argument("--name", default="", help="a marker for this process's command line (ignored)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    forwarder = Forwarder(args.listen, args.netns, args.target)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(forwarder.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
