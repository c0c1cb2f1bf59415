"""Zeroconf discovery: find a cluster's ZooKeeper without a configured address.

Group managers advertise ``_snooze._tcp.local.`` with the cluster name and ZooKeeper connect
string; a local controller or bootstrap whose config leaves ``zookeeper`` empty browses for it,
and keeps browsing (one log line a while, never an exit) until a group manager of its cluster
answers: group managers may well start after it.

Zeroconf only ever runs on the interfaces of ``[cluster] zeroconf_interfaces``; empty means the
listen address when that is one address, else loopback (``zeroconf_interfaces``). Never all
interfaces: the library's default would multicast on every network of the host.

What a group manager advertises must be usable on *another* host: its address may be a host
name (resolved here), and ZooKeeper hosts on loopback (``127.0.0.1:2181``, ``localhost``) are
advertised as the group manager's own address, since an LC reaching "127.0.0.1" would reach
itself (``advertised_zookeeper``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from snooze.config import zookeeper_servers

log = logging.getLogger(__name__)

SERVICE_TYPE = "_snooze._tcp.local."
#: Seconds between "not found yet" lines while browsing without a deadline.
RETRY_LOG_INTERVAL = 30.0
_WILDCARDS = ("", "0.0.0.0", "::", "*")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class DiscoveryError(OSError):
    """Zeroconf could not give what was asked (an OSError: like a refused connection, it is
    the network's answer, and start-up reports it as one line)."""


def zeroconf_interfaces(settings: Any) -> list[str]:
    """The interfaces zeroconf uses for these settings: ``[cluster] zeroconf_interfaces`` when
    given, else ``[node] listen_address`` when it is one address, else loopback."""
    configured = list(settings.cluster.zeroconf_interfaces)
    if configured:
        return configured
    listen = str(settings.node.listen_address).strip()
    if listen in _WILDCARDS:
        return ["127.0.0.1"]
    return [listen]


def _is_loopback_host(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def advertised_zookeeper(connect: str, address: str) -> str:
    """``connect`` with every loopback host replaced by ``address`` (this group manager's
    advertised address): a ZooKeeper on this group manager's loopback is reachable from other
    hosts, if at all, at this host's address. Unchanged when ``address`` is itself loopback
    (everything on one host) and for other hosts; a ``/chroot`` suffix is kept."""
    if not connect or _is_loopback_host(address):
        return connect
    _servers, slash, chroot = connect.partition("/")
    out: list[str] = []
    for host, port in zookeeper_servers(connect):  # the one parser of connect strings
        if _is_loopback_host(host):
            host = address
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return ",".join(out) + slash + chroot


async def resolve_ipv4(address: str, what: str = "[node] advertise_address") -> str:
    """``address`` as an IPv4 address: itself, or the first A record of a host name."""
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(address, None, family=socket.AF_INET,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DiscoveryError(f"{what} = {address!r}: cannot resolve it to an IPv4 address for zeroconf: {exc}") from None
    if not infos:
        raise DiscoveryError(f"{what} = {address!r}: no IPv4 address for zeroconf")
    return str(infos[0][4][0])


class Advertiser:
    def __init__(self, interfaces: list[str]) -> None:
        if not interfaces:
            raise DiscoveryError("zeroconf needs explicit interfaces")
        self.interfaces = list(interfaces)
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        #: What was advertised (after resolving the address and rewriting loopback ZooKeeper hosts).
        self.properties: dict[str, str] = {}
        self.address: str | None = None

    async def start(self, instance: str, address: str, port: int, properties: dict[str, str]) -> None:
        """Advertise ``instance`` at ``address:port`` (an address or a host name). A
        ``zookeeper`` property naming loopback hosts is rewritten to ``address``'s."""
        self.address = await resolve_ipv4(address)
        self.properties = dict(properties)
        if self.properties.get("zookeeper"):
            self.properties["zookeeper"] = advertised_zookeeper(self.properties["zookeeper"], self.address)
            if self.properties["zookeeper"] != properties["zookeeper"]:
                log.info("zeroconf: advertising ZooKeeper as %s ([cluster] zookeeper %s is on loopback)",
                         self.properties["zookeeper"], properties["zookeeper"])
        self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(self.address)],
            port=port,
            properties=self.properties,
            server=f"{instance}.local.",
        )
        await self._zc.async_register_service(self._info, allow_name_change=True)
        log.info("zeroconf: advertising cluster %s on %s", self.properties.get("cluster", "?"), ", ".join(self.interfaces))

    async def stop(self) -> None:
        if self._zc is not None:
            if self._info is not None:
                await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
            self._zc = None


async def discover_zookeeper(
    cluster: str, interfaces: list[str], timeout: float | None = None, *, log_every: float = RETRY_LOG_INTERVAL,
    stop: asyncio.Event | None = None,
) -> str:
    """The ZooKeeper connect string advertised for ``cluster``.

    Without ``timeout`` it browses until one is found, logging "no snooze cluster NAME found by
    zeroconf on INTERFACES; retrying" every ``log_every`` seconds; with one it raises
    DiscoveryError when it passes. Setting ``stop`` (the process's SIGTERM) ends it at once
    with a DiscoveryError, as does cancelling the task.
    """
    if not interfaces:
        raise DiscoveryError("zeroconf needs explicit interfaces")
    zc = AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if props.get("cluster") == cluster and props.get("zookeeper") and not found.done():
            found.set_result(props["zookeeper"])

    tasks: set[asyncio.Task[None]] = set()

    def on_change(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.ensure_future(resolve(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    where = ", ".join(interfaces)
    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waited = 0.0
        while not found.done():
            step = log_every if deadline is None else min(log_every, max(0.0, deadline - loop.time()))
            stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
            waiting: set[asyncio.Future[Any]] = {found} if stopped is None else {found, stopped}
            try:
                await asyncio.wait(waiting, timeout=step, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if stopped is not None:
                    stopped.cancel()
            if found.done():
                break
            if stop is not None and stop.is_set():
                raise DiscoveryError(f"stopped while looking for snooze cluster {cluster!r} with zeroconf on {where}")
            waited += step
            if deadline is not None and loop.time() >= deadline:
                raise DiscoveryError(f"no snooze cluster {cluster!r} found by zeroconf on {where} within {timeout}s")
            log.warning("no snooze cluster %s found by zeroconf on %s; retrying (waited %.0fs; is a group manager "
                        "of that cluster advertising on this network? see [cluster] zeroconf_interfaces)",
                        cluster, where, waited)
        zk = found.result()
        log.info("discovered cluster %s: zookeeper %s", cluster, zk)
        return zk
    finally:
        await browser.async_cancel()
        for t in tasks:
            t.cancel()
        if not found.done():
            found.cancel()
        await zc.async_close()
