"""Zeroconf discovery as an operator meets it: a browser that starts before any group manager
keeps retrying (and says so) instead of exiting, a host-name advertised address, and a
loopback ZooKeeper string advertised as the group manager's own address.

Zeroconf runs on 127.0.0.1 only (explicit loopback; never all interfaces). Each test uses its
own cluster name, so parallel runs do not find each other.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace

import pytest

from snooze import config as cfg
from snooze.discovery import (
    Advertiser,
    DiscoveryError,
    advertised_zookeeper,
    discover_zookeeper,
    zeroconf_interfaces,
)

LO = ["127.0.0.1"]


def _name() -> str:
    return f"zc-{uuid.uuid4().hex[:10]}"


async def test_browser_keeps_retrying_until_a_group_manager_advertises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="snooze.discovery")
    name = _name()
    browse = asyncio.create_task(discover_zookeeper(name, LO, log_every=0.5))
    advertiser = Advertiser(LO)
    try:
        for _ in range(100):  # two "retrying" lines: it did not give up after the first wait
            await asyncio.sleep(0.1)
            if sum("retrying" in r.getMessage() for r in caplog.records) >= 2:
                break
        assert not browse.done(), browse
        lines = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert len(lines) >= 2
        assert lines[0].startswith(f"no snooze cluster {name} found by zeroconf on 127.0.0.1; retrying")
        await advertiser.start("gm-1", "127.0.0.1", 5001, {"cluster": name, "zookeeper": "127.0.0.1:2181"})
        assert await asyncio.wait_for(browse, 30) == "127.0.0.1:2181"
    finally:
        browse.cancel()
        await advertiser.stop()


async def test_stop_ends_the_search_at_once() -> None:
    # The process's SIGTERM sets its stop event: a browser with no deadline must end on it.
    stop = asyncio.Event()
    browse = asyncio.create_task(discover_zookeeper(_name(), LO, log_every=0.3, stop=stop))
    await asyncio.sleep(0.5)
    assert not browse.done()
    stop.set()
    with pytest.raises(DiscoveryError, match="stopped while looking for snooze cluster"):
        await asyncio.wait_for(browse, 5)


async def test_deadline_still_available_and_named() -> None:
    name = _name()
    with pytest.raises(DiscoveryError, match=f"no snooze cluster '{name}' found by zeroconf on 127.0.0.1 within 1.0s"):
        await discover_zookeeper(name, LO, timeout=1.0, log_every=0.3)


async def test_host_name_address_and_loopback_zookeeper_rewritten() -> None:
    # "localhost" as the advertised address (a host name; it used to kill the GM with
    # "illegal IP address string passed to inet_aton"): resolved, and loopback stays loopback.
    name = _name()
    advertiser = Advertiser(LO)
    try:
        await advertiser.start("gm-h", "localhost", 5001, {"cluster": name, "zookeeper": "localhost:2181"})
        assert advertiser.address == "127.0.0.1"
        assert await discover_zookeeper(name, LO, timeout=30) == "localhost:2181"
    finally:
        await advertiser.stop()
    # A group manager advertising 192.0.2.10 (its address on a network of hosts; only written
    # into the records, nothing is sent to it) with its ZooKeeper on its loopback: LCs must be
    # sent to 192.0.2.10, not to their own loopback.
    name = _name()
    advertiser = Advertiser(LO)
    try:
        await advertiser.start("gm-r", "192.0.2.10", 5001, {"cluster": name, "zookeeper": "127.0.0.1:2181,zk2:2181/snz"})
        assert await discover_zookeeper(name, LO, timeout=30) == "192.0.2.10:2181,zk2:2181/snz"
    finally:
        await advertiser.stop()


@pytest.mark.parametrize(("connect", "address", "expected"), [
    ("127.0.0.1:2181", "10.0.0.5", "10.0.0.5:2181"),
    ("localhost:2181,127.0.0.1:2182,zk3:2181/chroot", "10.0.0.5", "10.0.0.5:2181,10.0.0.5:2182,zk3:2181/chroot"),
    ("127.0.0.1", "10.0.0.5", "10.0.0.5:2181"),  # the default port, made explicit
    ("[::1]:2181", "10.0.0.5", "10.0.0.5:2181"),
    ("10.0.0.9:2181", "10.0.0.5", "10.0.0.9:2181"),
    ("127.0.0.1:2181", "127.0.0.1", "127.0.0.1:2181"),  # all on one host: unchanged
])
def test_advertised_zookeeper(connect: str, address: str, expected: str) -> None:
    assert advertised_zookeeper(connect, address) == expected


def test_default_interfaces_follow_the_listen_address() -> None:
    def s(listen: str, interfaces: list[str] | None = None) -> SimpleNamespace:
        return SimpleNamespace(node=SimpleNamespace(listen_address=listen),
                               cluster=SimpleNamespace(zeroconf_interfaces=interfaces or []))

    assert zeroconf_interfaces(s("10.0.0.5")) == ["10.0.0.5"]
    assert zeroconf_interfaces(s("0.0.0.0")) == ["127.0.0.1"]
    assert zeroconf_interfaces(s("::")) == ["127.0.0.1"]
    assert zeroconf_interfaces(s("10.0.0.5", ["10.9.9.9"])) == ["10.9.9.9"]
    assert cfg.Settings().cluster.zeroconf_interfaces == []  # the default defers to the above
    assert zeroconf_interfaces(cfg.Settings()) == ["127.0.0.1"]
