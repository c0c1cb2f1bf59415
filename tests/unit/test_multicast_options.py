"""Multicast heartbeat options: errors that name the option, and the interface actually used.

``[heartbeat] multicast_group`` must be ADDR:PORT with a multicast address; ``[heartbeat]
multicast_interface`` (empty = the advertised address) is the interface joined and sent on,
never a wildcard. Real multicast runs here on loopback (TTL 0: nothing leaves the host); the
netns local cluster tests it across namespaces.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from snooze import config as cfg
from snooze.heartbeat import HeartbeatEndpoint, MulticastError, parse_multicast_group
from tests.support import port_range


@pytest.mark.parametrize(("value", "says"), [
    ("239.23.1.1", "must be ADDR:PORT"),
    ("239.23.1.1:", "must be a number in 1..65535"),
    ("239.23.1.1:0", "must be a number in 1..65535"),
    ("239.23.1.1:65536", "must be a number in 1..65535"),
    ("239.23.1.1:five", "must be a number in 1..65535"),
    ("10.0.0.1:5555", "is not a multicast address"),
    ("my-group:5555", "is not an IPv4 address"),
    (":5555", "must be ADDR:PORT"),
])
def test_bad_multicast_group_names_the_option(value: str, says: str) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.from_dict({"heartbeat": {"multicast_group": value}})
    assert str(info.value).startswith("[heartbeat] multicast_group:")
    assert says in str(info.value)


def test_good_multicast_group() -> None:
    s = cfg.from_dict({"heartbeat": {"multicast_group": "239.23.1.1:5555", "multicast_interface": "10.1.2.3"}})
    assert parse_multicast_group(s.heartbeat.multicast_group) == ("239.23.1.1", 5555)
    assert s.heartbeat.multicast_interface == "10.1.2.3"
    assert cfg.Settings().heartbeat.multicast_interface == ""  # default: the advertised address


@pytest.mark.parametrize("value", ["0.0.0.0", "239.1.1.1", "eth0", "10.0.0.300"])
def test_bad_multicast_interface_names_the_option(value: str) -> None:
    with pytest.raises(cfg.ConfigError, match=r"^\[heartbeat\] multicast_interface"):
        cfg.from_dict({"heartbeat": {"multicast_interface": value}})


def test_bad_multicast_ttl() -> None:
    with pytest.raises(cfg.ConfigError, match=r"multicast_ttl"):
        cfg.from_dict({"heartbeat": {"multicast_ttl": 256}})


def _group() -> str:
    # Administratively scoped (239/8), random: parallel test runs do not hear each other.
    return f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}:{port_range(1)}"


async def test_wildcard_interface_is_refused_before_anything_is_bound() -> None:
    ep = HeartbeatEndpoint(b"k", "a", multicast_group=_group(), multicast_interface="0.0.0.0")
    with pytest.raises(MulticastError, match=r"\[heartbeat\] multicast_interface") as info:
        await ep.start("127.0.0.1", port_range(1))
    assert "wildcard" in str(info.value)
    assert ep._transport is None and ep._mtransport is None


async def test_interface_not_on_this_host_names_the_option() -> None:
    # 192.0.2.77 (TEST-NET-1) is no address of this host: the kernel says "No such device".
    # Nothing is sent: the join fails locally.
    port = port_range(1)
    ep = HeartbeatEndpoint(b"k", "a", multicast_group=_group(), multicast_interface="192.0.2.77")
    with pytest.raises(MulticastError) as info:
        await ep.start("127.0.0.1", port)
    message = str(info.value)
    assert "on interface 192.0.2.77 ([heartbeat] multicast_interface)" in message
    assert ep._transport is None
    # The unicast port was closed again (transports close on the loop's next turn).
    await asyncio.sleep(0.01)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))


async def test_multicast_on_loopback_with_interface_and_ttl() -> None:
    group = _group()
    heard: list[str] = []
    a = HeartbeatEndpoint(b"k", "a", multicast_group=group, ttl=0, multicast_interface="127.0.0.1")
    # A host name is accepted and resolved (the advertised address may be one).
    b = HeartbeatEndpoint(b"k", "b", multicast_group=group, ttl=0, multicast_interface="localhost")
    b.on("gm.heartbeat", lambda env, addr: heard.append(env.sender))
    base = port_range(2)
    await a.start("127.0.0.1", base)
    try:
        await b.start("127.0.0.1", base + 1)
        try:
            assert a.interface == "127.0.0.1" and b.interface == "127.0.0.1"
            assert a._mtransport is not None
            sock = a._mtransport.get_extra_info("socket")
            assert socket.inet_ntoa(sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)) == "127.0.0.1"
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 0
            assert sock.getsockname()[0] == group.split(":")[0]  # bound to the group, not 0.0.0.0
            for _ in range(50):  # no unicast peers: only multicast can carry it
                a.send("gm.heartbeat", 0, {}, [])
                await asyncio.sleep(0.1)
                if heard:
                    break
            assert heard and heard[0] == "a"
        finally:
            b.close()
    finally:
        a.close()


async def test_advertised_address_is_the_default_interface() -> None:
    # What the service passes when [heartbeat] multicast_interface is empty.
    s = cfg.from_dict({"node": {"advertise_address": "127.0.0.1"}, "heartbeat": {"multicast_group": _group()}})
    ep = HeartbeatEndpoint(b"k", "a", multicast_group=s.heartbeat.multicast_group, ttl=0,
                           multicast_interface=s.heartbeat.multicast_interface or s.advertise_address())
    await ep.start("127.0.0.1", port_range(1))
    try:
        assert ep.interface == "127.0.0.1"
    finally:
        ep.close()
