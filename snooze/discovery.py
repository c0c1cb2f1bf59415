"""Zeroconf discovery: find a cluster's ZooKeeper without a configured address.

Group managers advertise ``_snooze._tcp.local.`` with the cluster name and ZooKeeper connect
string; a local controller or bootstrap whose config leaves ``zookeeper`` empty browses for it.
Zeroconf only ever runs on the interfaces named in ``[cluster] zeroconf_interfaces`` (loopback
by default): the library's default, all interfaces, would multicast on the real network.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_snooze._tcp.local."


class DiscoveryError(RuntimeError):
    pass


class Advertiser:
    def __init__(self, interfaces: list[str]) -> None:
        if not interfaces:
            raise DiscoveryError("zeroconf needs explicit interfaces")
        self.interfaces = list(interfaces)
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    async def start(self, instance: str, address: str, port: int, properties: dict[str, str]) -> None:
        self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(address)],
            port=port,
            properties=properties,
            server=f"{instance}.local.",
        )
        await self._zc.async_register_service(self._info, allow_name_change=True)

    async def stop(self) -> None:
        if self._zc is not None:
            if self._info is not None:
                await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
            self._zc = None


async def discover_zookeeper(cluster: str, interfaces: list[str], timeout: float = 60.0) -> str:
    """The ZooKeeper connect string advertised for ``cluster``; raises DiscoveryError on timeout."""
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

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        zk = await asyncio.wait_for(found, timeout)
        log.info("discovered cluster %s: zookeeper %s", cluster, zk)
        return zk
    except TimeoutError as exc:
        raise DiscoveryError(f"no cluster {cluster!r} found by zeroconf on {interfaces} within {timeout}s") from exc
    finally:
        await browser.async_cancel()
        for t in tasks:
            t.cancel()
        await zc.async_close()
