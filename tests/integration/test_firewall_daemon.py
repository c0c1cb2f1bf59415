"""The local controller's firewall daemon against a real ZooKeeper and real nft, in network
namespaces this test creates and deletes.

The network model (network, subnet, flavor, firewall groups, guests) is written to ZooKeeper
with the store, which hands out the guests' addresses and MACs; the namespaces are then made
with those: one "host" (a bridge ``br0``; the daemon's nft runs there) and one per guest, each
joined to the bridge by a veth whose host end carries the MAC libvirt would give the guest's tap
(``fe:`` + the guest's MAC without its first octet), so the daemon finds the ports as on a
real host.

- ``srv`` (group ``web``, on this host) listens on TCP 8080 and 9090; ``web`` allows 8080 from
  the members of ``clients``;
- ``mem`` (group ``clients``) is placed on *another* host: only its address matters here;
- ``out`` (group ``others``, on this host) is not a member.

Nothing is created in the root namespace; its tables are only listed, before and after.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from localcontroller.firewall import nft
from localcontroller.firewall.daemon import FirewallDaemon, FirewallSettings
from localcontroller.firewall.ports import tap_mac
from snooze.dev import netns
from snooze.dev.zookeeper import ZooKeeperServer
from snooze.network import model
from snooze.network.store import NetworkStore
from tests.netlab import close_all, namespace_prefix, serve_tcp, tcp_connects

pytestmark = pytest.mark.integration

ROOT = "/snooze-fwd"
HOST = "lc-fw"
OTHER_HOST = "lc-other"
PLACED = {"srv": ("web", HOST), "mem": ("clients", OTHER_HOST), "out": ("others", HOST)}
CONNECT_TIMEOUT = 1.0  # a dropped SYN: how long a refused attempt waits
WAIT = 30.0  # generous bound of every "eventually" (the delays seen are printed)
SETTINGS = FirewallSettings(resync_interval=3.0, retry_base=0.5, retry_cap=2.0, read_timeout=2.0)


@pytest.fixture(autouse=True)
def needs_netns_and_nft() -> None:
    reason = netns.available() or nft.available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def client(zookeeper: ZooKeeperServer) -> Iterator[KazooClient]:
    # Reconnects quickly once the server is back (kazoo's default backs off for up to a minute).
    c = KazooClient(hosts=zookeeper.address, timeout=10,
                    connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0))
    c.start(timeout=15)
    try:
        yield c
    finally:
        if zookeeper.process is None or zookeeper.process.poll() is not None:
            zookeeper.start()  # a test failed while it was stopped: stop() would retry for ever
        c.stop()
        c.close()


@dataclass
class World:
    store: NetworkStore
    guests: dict[str, model.Guest]

    def address(self, name: str) -> str:
        return str(self.guests[name].ip)


@pytest.fixture
def world(client: KazooClient) -> World:
    store = NetworkStore(client, ROOT)
    store.ensure()
    store.create(model.Network("net"))
    store.create(model.Subnet.from_json({"id": "sub", "network": "net", "cidr": "10.231.8.0/24", "gateway": "10.231.8.1",
                                         "start": "10.231.8.10", "end": "10.231.8.60"}))
    store.create(model.Flavor("small", vcpus=1, memory=65536))
    for hv in (HOST, OTHER_HOST):
        store.ensure_hypervisor(hv)
    for gid in ("clients", "others"):
        store.create(model.FirewallGroup(gid))
    store.create(model.FirewallGroup.from_json({"id": "web", "rules": [
        {"group": "clients", "portStart": 8080, "portEnd": 8080, "protocol": "tcp", "action": "allow"}]}))
    guests = {}
    for name, (group, hv) in PLACED.items():
        g = store.create_guest(model.Guest(name, "small", "net", fwgroup=group, hypervisor=hv))
        assert isinstance(g, model.Guest) and g.ip is not None and g.mac is not None
        guests[name] = g
    return World(store, guests)


@dataclass
class Lab:
    host: str
    namespaces: dict[str, str]  # guest -> namespace
    world: World
    servers: list[socket.socket] = field(default_factory=list)

    def connects(self, client: str, server: str, port: int) -> bool:
        """A TCP connection from guest ``client`` to guest ``server``'s ``port`` is set up."""
        return tcp_connects(self.namespaces[client], self.world.address(server), port, CONNECT_TIMEOUT)

    async def aconnects(self, client: str, server: str, port: int) -> bool:
        return await asyncio.to_thread(self.connects, client, server, port)


@pytest.fixture
def lab(world: World) -> Iterator[Lab]:
    prefix = namespace_prefix("n4fd")  # namespaces a killed earlier run left: deleted first
    host = f"{prefix}-host"
    spaces = {name: f"{prefix}-{name}" for name in PLACED}
    created: list[str] = []
    lab = Lab(host, spaces, world)
    try:
        for ns in (host, *spaces.values()):
            created.append(ns)
            netns.ip("netns", "add", ns)
            netns.ip("link", "set", "lo", "up", netns=ns)
        netns.add_bridge(host, "br0", "10.231.8.1/24")
        for name, ns in spaces.items():
            g = world.guests[name]
            assert g.mac is not None
            port = f"p{name}"
            netns.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, netns=host)
            netns.ip("link", "set", port, "address", tap_mac(g.mac), netns=host)  # as libvirt does for a tap
            netns.ip("link", "set", port, "master", "br0", "up", netns=host)
            netns.ip("link", "set", "eth0", "address", g.mac, netns=ns)
            netns.ip("addr", "add", f"{g.ip}/24", "dev", "eth0", netns=ns)
            netns.ip("link", "set", "eth0", "up", netns=ns)

        def listen() -> list[socket.socket]:
            out = []
            for p in (8080, 9090):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", p))
                s.listen(64)
                out.append(s)
            return out

        lab.servers = netns.call_in(spaces["srv"], listen)
        serve_tcp(lab.servers)
        yield lab
    finally:
        close_all(lab.servers)
        netns.delete_namespaces(created)


def other_tables(ns: str) -> dict[tuple[str, str], Any]:
    return {(f, n): nft.table(f, n, ns) for f, n in nft.list_tables(ns) if n != "snooze"}


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> float:
    """Seconds until ``predicate()`` (evaluated on the loop) holds; fails after ``timeout``."""
    start = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - start < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


async def until_connects(lab: Lab, client: str, server: str, port: int, what: str) -> float:
    start = time.perf_counter()
    while not await lab.aconnects(client, server, port):
        assert time.perf_counter() - start < WAIT, f"{what}: not within {WAIT} s"
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


async def test_daemon_keeps_the_tables_equal_to_zookeeper(world: World, lab: Lab, zookeeper: ZooKeeperServer,
                                                           client: KazooClient) -> None:
    root_tables = nft.list_tables()
    assert nft.bridge_filtering(lab.host).problem() is None
    assert await lab.aconnects("out", "srv", 8080), "control: before the daemon everything passes"

    # A table the host had before: it must survive every re-render, unchanged.
    await asyncio.to_thread(subprocess.run, ["ip", "netns", "exec", lab.host, "nft", "-f", "-"], check=True, text=True, input=(
        "table inet keepme {\n chain input {\n type filter hook input priority 10; policy accept;\n tcp dport 22 accept\n }\n}\n"))
    before = other_tables(lab.host)
    assert list(before) == [("inet", "keepme")]

    daemon = FirewallDaemon.for_host(client, ROOT, HOST, netns=lab.host, settings=SETTINGS)
    started = time.perf_counter()
    daemon.start()
    try:
        await until(lambda: daemon.status.applies >= 1, "the first apply")
        print(f"\nfirst apply {time.perf_counter() - started:.3f} s after start: {daemon.status.commands} commands")
        assert daemon.status.guests == 2, "srv and out are this host's; mem is another's"
        assert daemon.status.ports == 2, "both ports found by libvirt's tap MAC"
        assert await lab.aconnects("mem", "srv", 8080), "a member of the group the rule names (on another host) is allowed"
        assert not await lab.aconnects("out", "srv", 8080), "a non-member is refused"
        assert not await lab.aconnects("mem", "srv", 9090), "a port no rule allows is refused"
        assert other_tables(lab.host) == before

        # A rule change written to ZooKeeper: allow 9090 from out's address (a CIDR rule).
        web, _version = world.store.get("fwgroups", "web")
        assert isinstance(web, model.FirewallGroup)
        changed = replace(web, rules=[*web.rules, model.FirewallRule.from_json(
            {"source": f"{world.address('out')}/32", "portStart": 9090, "portEnd": 9090, "protocol": "tcp"})])
        applies = daemon.status.applies
        await asyncio.to_thread(world.store.update, changed)
        delay = await until_connects(lab, "out", "srv", 9090, "the rule change")
        print(f"rule change in ZooKeeper -> first allowed connection: {delay:.3f} s "
              f"(applies {applies} -> {daemon.status.applies})")
        assert not await lab.aconnects("out", "srv", 8080), "the group rule still excludes the non-member"
        assert other_tables(lab.host) == before

        # ZooKeeper stopped: the rules applied last stay (fail static), nothing is removed.
        handles = await nft.table_handles_async(lab.host)
        applies = daemon.status.applies
        await asyncio.to_thread(zookeeper.stop)
        await until(lambda: daemon.status.failures >= 2, "syncs failing while ZooKeeper is away", 60)
        print(f"ZooKeeper away: {daemon.status.failures} failed syncs; last: {daemon.status.last_error}")
        assert daemon.status.applies == applies
        assert await nft.table_handles_async(lab.host) == handles, "the tables were not touched"
        assert await lab.aconnects("mem", "srv", 8080)
        assert await lab.aconnects("out", "srv", 9090)
        assert not await lab.aconnects("out", "srv", 8080)

        # Back: a resync, then a guest added to the group gains access.
        await asyncio.to_thread(zookeeper.start)
        back = await until(lambda: daemon.status.connected and daemon.status.failures == 0, "a sync after ZooKeeper is back", 60)
        print(f"ZooKeeper back: synced again within {back:.3f} s")
        out, _version = world.store.get("guests", "out")
        assert isinstance(out, model.Guest)
        await asyncio.to_thread(world.store.update, replace(out, fwgroup="clients"))
        delay = await until_connects(lab, "out", "srv", 8080, "a guest joining the group")
        print(f"out joined clients in ZooKeeper -> its first allowed connection: {delay:.3f} s")
        assert other_tables(lab.host) == before

        # A burst of changes: printed, not asserted (how many applies depends on the timing).
        applies = daemon.status.applies

        def burst() -> float:
            t = time.perf_counter()
            for port in range(7000, 7010):
                grp, _v = world.store.get("fwgroups", "web")
                assert isinstance(grp, model.FirewallGroup)
                world.store.update(replace(grp, rules=[*grp.rules, model.FirewallRule(port_start=port, port_end=port)]))
            return time.perf_counter() - t

        took = await asyncio.to_thread(burst)
        await until(lambda: daemon.status.applies > applies, "the burst applied")
        await asyncio.sleep(SETTINGS.max_delay + 0.5)
        print(f"10 rule changes written in {took:.3f} s -> {daemon.status.applies - applies} applies")
        assert other_tables(lab.host) == before
    finally:
        await daemon.close()

    # close() leaves the tables protecting the guests; remove() takes only Snooze's away.
    assert nft.table("inet", "snooze", lab.host) is not None
    assert not await lab.aconnects("mem", "srv", 9090)
    await daemon.remove()
    assert nft.table("inet", "snooze", lab.host) is None and nft.table("bridge", "snooze", lab.host) is None
    assert other_tables(lab.host) == before
    assert await lab.aconnects("mem", "srv", 9090)
    assert nft.list_tables() == root_tables, "nothing of this test in the root namespace"


async def test_anti_spoofing_follows_the_ports_found(world: World, lab: Lab, client: KazooClient) -> None:
    """out claims mem's address: dropped at its port once the daemon found it by MAC."""
    spoofed = world.address("mem")
    daemon = FirewallDaemon.for_host(client, ROOT, HOST, netns=lab.host, settings=SETTINGS)
    daemon.start()
    try:
        await until(lambda: daemon.status.applies >= 1, "the first apply")
        assert daemon.status.ports == 2
        netns.ip("addr", "add", f"{spoofed}/32", "dev", "eth0", netns=lab.namespaces["out"])
        netns.ip("addr", "del", f"{spoofed}/32", "dev", "eth0", netns=lab.namespaces["out"])
        assert await lab.aconnects("mem", "srv", 8080)

        def spoofed_connect() -> bool:
            ns = lab.namespaces["out"]
            netns.ip("addr", "add", f"{spoofed}/32", "dev", "eth0", netns=ns)
            try:
                return tcp_connects(ns, world.address("srv"), 8080, CONNECT_TIMEOUT, source=spoofed)
            finally:
                netns.ip("addr", "del", f"{spoofed}/32", "dev", "eth0", netns=ns)

        assert not await asyncio.to_thread(spoofed_connect), "a member's address from a non-member's port is dropped"
    finally:
        await daemon.close()
        await daemon.remove()
