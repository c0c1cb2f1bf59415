"""Firewall groups applied with real nft, in network namespaces this test creates and deletes.

One namespace stands in for a host (a bridge ``br0`` with the guests' gateway), three for guests,
each joined to the bridge by a veth whose host-side end is the guest's "tap":

- ``srv`` (group ``web``) listens on TCP 8080, 9090 and UDP 5353;
- ``mem`` (group ``clients``) is a member of the group ``web``'s rules name;
- ``out`` (group ``others``) is not.

Nothing is created in the root namespace: every link is born inside the test's namespaces, every
socket is made on a thread that entered a guest's namespace, and the root namespace's tables
are only read (listed before and after, to check they did not change).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from localcontroller.firewall import nft
from localcontroller.firewall.render import Group, Guest, HostFirewall, Rule
from snooze.dev import netns
from tests.netlab import close_all, namespace_prefix, serve_tcp, tcp_connects

pytestmark = pytest.mark.integration

SUBNET = "10.231.7"
SUBNET6 = "fd31:7::"
GUESTS = {  # name: (address, MAC, group); the IPv6 address ends as the IPv4 one
    "srv": (f"{SUBNET}.11", "52:54:00:e7:00:11", "web"),
    "mem": (f"{SUBNET}.12", "52:54:00:e7:00:12", "clients"),
    "out": (f"{SUBNET}.13", "52:54:00:e7:00:13", "others"),
}


def v6(address: str) -> str:
    return SUBNET6 + address.rsplit(".", 1)[1]
CONNECT_TIMEOUT = 1.0  # a dropped SYN: how long a refused attempt waits


@pytest.fixture(autouse=True)
def needs_netns_and_nft() -> None:
    reason = netns.available() or nft.available()
    if reason:
        pytest.skip(reason)


@dataclass
class Lab:
    host: str
    guests: dict[str, str]  # name -> namespace
    servers: list[socket.socket] = field(default_factory=list)
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def address(self, name: str) -> str:
        return GUESTS[name][0]

    def connects(self, client: str, server: str, port: int, version: int = 4) -> bool:
        """A TCP connection from guest ``client`` to guest ``server``'s ``port`` is set up."""
        target = self.address(server) if version == 4 else v6(self.address(server))
        return tcp_connects(self.guests[client], target, port, CONNECT_TIMEOUT)

    def refused_at_once(self, client: str, server: str, port: int) -> bool:
        """The connection is actively refused (a reset), not left unanswered."""
        ns = self.guests[client]
        target = self.address(server)
        assert netns.route_device(ns, target) == "eth0"

        def attempt() -> bool:
            try:
                with socket.create_connection((target, port), timeout=CONNECT_TIMEOUT):
                    return False
            except ConnectionRefusedError:
                return True
            except OSError:
                return False

        return netns.call_in(ns, attempt)

    def send_udp(self, client: str, server: str, port: int, payload: bytes, source: str | None = None) -> None:
        ns = self.guests[client]
        target = self.address(server)
        assert netns.route_device(ns, target) == "eth0"

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                if source:
                    s.bind((source, 0))
                s.sendto(payload, (target, port))

        netns.call_in(ns, send)


def _serve_udp(sock: socket.socket, received: list[tuple[str, bytes]]) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(2048)
        except OSError:
            return
        if peer is None:  # shut down
            return
        received.append((peer[0], data))


@pytest.fixture
def lab() -> Iterator[Lab]:
    prefix = namespace_prefix("n4fw")  # namespaces a killed earlier run left: deleted first
    host = f"{prefix}-host"
    guests = {name: f"{prefix}-{name}" for name in GUESTS}
    created: list[str] = []
    lab = Lab(host, guests)
    try:
        for ns in (host, *guests.values()):
            created.append(ns)
            netns.ip("netns", "add", ns)
            netns.ip("link", "set", "lo", "up", netns=ns)
        netns.add_bridge(host, "br0", f"{SUBNET}.1/24")
        for name, ns in guests.items():
            address, mac, _ = GUESTS[name]
            port = f"v{name}"
            netns.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, netns=host)
            netns.ip("link", "set", port, "master", "br0", "up", netns=host)
            netns.ip("link", "set", "eth0", "address", mac, netns=ns)
            netns.ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
            netns.ip("addr", "add", f"{v6(address)}/64", "dev", "eth0", "nodad", netns=ns)
            netns.ip("link", "set", "eth0", "up", netns=ns)

        def listen() -> list[socket.socket]:
            out = []
            for port in (8080, 9090):
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # dual stack
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::", port))
                s.listen(64)
                out.append(s)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", 5353))
            out.append(u)
            return out

        lab.servers = netns.call_in(guests["srv"], listen)
        serve_tcp(lab.servers[:2])
        threading.Thread(target=_serve_udp, args=(lab.servers[2], lab.received), daemon=True).start()
        yield lab
    finally:
        close_all(lab.servers)
        netns.delete_namespaces(created)


def guests_on_host(*, ports: bool = True) -> tuple[Guest, ...]:
    return tuple(
        Guest(name, (address, v6(address)), group, interface=f"v{name}" if ports else None, mac=mac)
        for name, (address, mac, group) in GUESTS.items()
    )


def members() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for address, _, group in GUESTS.values():
        out.setdefault(group, []).extend((address, v6(address)))
    return {k: tuple(v) for k, v in out.items()}


WEB = Group("web", (Rule(group="clients", port_start=8080, port_end=8080, protocol="tcp", action="accept"),
                    Rule(group="clients", port_start=5353, port_end=5353, protocol="udp", action="accept")))


def firewall(web: Group = WEB, *, ports: bool = True) -> HostFirewall:
    return HostFirewall(guests=guests_on_host(ports=ports), groups={"web": web, "clients": Group("clients"), "others": Group("others")},
                        members=members())


def other_tables(ns: str) -> dict[tuple[str, str], Any]:
    return {(f, n): nft.table(f, n, ns) for f, n in nft.list_tables(ns) if n != "snooze"}


def test_group_rules_filter_bridged_guests(lab: Lab) -> None:
    root_tables = nft.list_tables()
    # br_netfilter passes bridged traffic through table inet snooze's forward hook (per namespace).
    assert nft.bridge_filtering(lab.host).problem() is None

    # Before any firewall: everything passes (the lab itself works).
    assert lab.connects("mem", "srv", 8080) and lab.connects("out", "srv", 8080)
    assert lab.connects("mem", "srv", 8080, version=6) and lab.connects("out", "srv", 8080, version=6)
    assert lab.refused_at_once("srv", "mem", 8080), "control: a port nobody listens on answers a reset"

    # Tables the host had before Snooze: they must survive every render, unchanged.
    subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], check=True, text=True, input=(
        "table inet keepme {\n chain input {\n type filter hook input priority 10; policy accept;\n tcp dport 22 accept\n }\n}\n"
        "table ip natlike {\n set blocked {\n type ipv4_addr\n elements = { 192.0.2.7 }\n }\n}\n"
        "table bridge other {\n chain passing {\n type filter hook forward priority 10; policy accept;\n ether type arp accept\n }\n}\n"))
    before = other_tables(lab.host)
    assert len(before) == 3

    applied = nft.apply(firewall(), lab.host)
    print(f"\nfirst render: {applied.commands} commands applied in {applied.seconds * 1000:.1f} ms")
    assert other_tables(lab.host) == before

    assert lab.connects("mem", "srv", 8080), "a member of the group the rule names is allowed"
    assert not lab.connects("out", "srv", 8080), "a non-member is refused"
    assert lab.connects("mem", "srv", 8080, version=6), "IPv6: the member's IPv6 address is in the group's set"
    assert not lab.connects("out", "srv", 8080, version=6)
    assert not lab.connects("mem", "srv", 9090), "a port no rule allows is refused, even to a member"
    # mem listens on nothing: unfiltered, its kernel would answer a reset at once; its group
    # 'clients' has no rules, so the SYN is dropped before it (default deny): no answer at all.
    assert not lab.refused_at_once("srv", "mem", 8080)
    assert nft.table("inet", "snooze", lab.host) is not None

    # A rule change (allow 9090 from out's address by CIDR), re-rendered: in effect at once.
    changed = replace(WEB, rules=(*WEB.rules, Rule(source=f"{lab.address('out')}/32", port_start=9000, port_end=9100, protocol="tcp")))
    start = time.perf_counter()
    applied = nft.apply(firewall(changed), lab.host)
    first_ok = None
    for _ in range(50):
        if lab.connects("out", "srv", 9090):
            first_ok = time.perf_counter() - start
            break
    assert first_ok is not None, "the changed rule never took effect"
    print(f"rule change: nft applied {applied.commands} commands in {applied.seconds * 1000:.1f} ms; "
          f"first allowed connection {first_ok * 1000:.1f} ms after the render started")
    assert other_tables(lab.host) == before
    assert not lab.connects("out", "srv", 8080), "the group rule still excludes the non-member"
    assert lab.connects("mem", "srv", 8080)

    # Without br_netfilter's sysctl, bridged packets never reach table inet snooze: the check
    # says so, and enabling it (opt-in, per namespace) closes the hole.
    netns.ip("netns", "exec", lab.host, "sh", "-c", "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables")
    assert "bridge-nf-call-iptables is 0" in (nft.bridge_filtering(lab.host).problem() or "")
    assert lab.connects("out", "srv", 8080), "bridged traffic bypasses the inet table then"
    assert nft.enable_bridge_filtering(lab.host).ok
    assert not lab.connects("out", "srv", 8080)

    # A reject rule answers at once (a TCP reset through the bridge) instead of dropping.
    rejecting = replace(WEB, rules=(Rule(source=f"{lab.address('out')}/32", port_start=8080, port_end=8080, action="reject"), *WEB.rules))
    nft.apply(firewall(rejecting), lab.host)
    assert lab.refused_at_once("out", "srv", 8080)

    # Removing the rule again: refused again (a new connection; nothing stale is kept).
    nft.apply(firewall(), lab.host)
    assert not lab.connects("out", "srv", 9090)
    assert other_tables(lab.host) == before

    # Group membership change: 'out' joins 'clients' (the members set changes, not the rules).
    joined = firewall()
    joined = replace(joined, members={**joined.members, "clients": (*joined.members["clients"], lab.address("out"), v6(lab.address("out")))})
    applied = asyncio.run(nft.apply_async(joined, lab.host))  # the event loop's way (the LC's)
    assert applied.commands > 0
    assert lab.connects("out", "srv", 8080) and lab.connects("out", "srv", 8080, version=6)
    nft.apply(firewall(), lab.host)
    assert not lab.connects("out", "srv", 8080)

    # Removal leaves the other tables alone too.
    nft.remove(lab.host)
    assert nft.table("inet", "snooze", lab.host) is None and nft.table("bridge", "snooze", lab.host) is None
    assert other_tables(lab.host) == before
    assert lab.connects("out", "srv", 8080)

    # Nothing of this test in the root namespace.
    assert nft.list_tables() == root_tables


def test_bridge_ports_stop_address_spoofing(lab: Lab) -> None:
    """A non-member claiming a member's address gets past the group rule unless the guests'
    ports are checked (table bridge snooze)."""
    spoofed = lab.address("mem")
    netns.ip("addr", "add", f"{spoofed}/32", "dev", "eth0", netns=lab.guests["out"])

    def sent_and_seen(client: str, payload: bytes, source: str | None) -> bool:
        lab.send_udp(client, "srv", 5353, payload, source=source)
        for _ in range(20):
            if any(data == payload for _, data in lab.received):
                return True
            time.sleep(0.05)
        return False

    # Without the ports known: the spoofed datagram passes as if from the member.
    nft.apply(firewall(ports=False), lab.host)
    assert sent_and_seen("mem", b"genuine-1", None)
    assert sent_and_seen("out", b"spoofed-1", spoofed), "control: source address alone is trusted"

    # With the ports known: the genuine one passes, the spoofed one is dropped at the port.
    nft.apply(firewall(), lab.host)
    assert sent_and_seen("mem", b"genuine-2", None)
    assert not sent_and_seen("out", b"spoofed-2", spoofed)
    assert not sent_and_seen("out", b"plain-2", None), "out's own address is not a member either"


def test_refuses_batches_outside_its_tables(lab: Lab) -> None:
    before = nft.list_tables(lab.host)
    for batch in (
        {"nftables": [{"flush": {"ruleset": None}}]},
        {"nftables": [{"delete": {"table": {"family": "inet", "name": "filter"}}}]},
        {"nftables": [{"add": {"rule": {"family": "ip", "table": "snooze", "chain": "x", "expr": []}}}]},
    ):
        with pytest.raises(nft.NftError, match="not allowed|only"):
            nft.run_batch(batch, lab.host)
    # A refused batch that reaches nft is one NftError naming nft's message, and changes nothing.
    with pytest.raises(nft.NftError, match="No such file or directory") as info:
        nft.run_batch({"nftables": [{"add": {"rule": {"family": "inet", "table": "snooze", "chain": "nope", "expr": [{"drop": None}]}}}]}, lab.host)
    assert info.value.returncode == 1
    assert nft.list_tables(lab.host) == before
