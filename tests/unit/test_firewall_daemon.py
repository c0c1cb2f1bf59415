"""The firewall daemon's logic without ZooKeeper or nft: when it syncs (the pacer, on a fake
clock), what it applies (a fake source and a fake nft), the model → renderer mapping, the
guests' ports found by MAC, and whether it runs at all. tests/integration/test_firewall_daemon.py
runs it for real."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest

from localcontroller.firewall import nft
from localcontroller.firewall.daemon import FirewallDaemon, FirewallSettings, Pacer, decide
from localcontroller.firewall.ports import (
    Link,
    PortsError,
    guest_ports,
    parse_fdb,
    parse_links,
    tap_mac,
)
from localcontroller.firewall.render import chain_name
from localcontroller.firewall.source import Snapshot, SourceError, host_firewall
from snooze.network import model

S = FirewallSettings(debounce=0.2, max_delay=2.0, resync_interval=30.0, retry_base=1.0, retry_cap=30.0)


# -- the pacer ----------------------------------------------------------------------------------
def test_first_sync_at_once_then_every_resync_interval() -> None:
    p = Pacer(S, now=100.0)
    assert p.due() == 100.0
    p.begin(100.0)
    p.done(100.1, ok=True)
    assert p.due() == pytest.approx(130.1)


def test_a_burst_of_changes_is_one_sync_after_the_debounce() -> None:
    p = Pacer(S, now=0.0)
    p.begin(0.0)
    p.done(0.0, ok=True)
    for t in (5.0, 5.05, 5.1, 5.15):
        p.changed(t)
    assert p.due() == pytest.approx(5.35)
    p.begin(5.35)
    p.done(5.4, ok=True)
    assert p.due() == pytest.approx(35.4), "nothing pending after the sync"


def test_a_continuous_burst_is_synced_by_max_delay() -> None:
    p = Pacer(S, now=0.0)
    p.begin(0.0)
    p.done(0.0, ok=True)
    t = 10.0
    while t < 13.0:
        p.changed(t)
        t += 0.1  # never 0.2 s of quiet
    assert p.due() == pytest.approx(12.0)


def test_a_change_during_a_sync_is_synced_again() -> None:
    p = Pacer(S, now=0.0)
    p.begin(0.0)
    p.changed(0.05)  # a watch fired while the sync was reading
    p.done(0.1, ok=True)
    assert p.due() == pytest.approx(0.25)


def test_failures_back_off_exponentially_with_jitter_and_changes_do_not_shorten_it() -> None:
    low = Pacer(S, now=0.0, rng=lambda: 0.0)
    high = Pacer(S, now=0.0, rng=lambda: 1.0)
    waits = []
    for p in (low, high):
        now = 0.0
        got = []
        for _ in range(7):
            p.begin(now)
            p.done(now, ok=False)
            got.append(p.due() - now)
            now = p.due()
        waits.append(got)
    assert waits[1] == [1, 2, 4, 8, 16, 30, 30]
    assert waits[0] == [0.5, 1, 2, 4, 8, 15, 15]
    p = Pacer(S, now=0.0, rng=lambda: 1.0)
    p.begin(0.0)
    p.done(0.0, ok=False)
    p.changed(0.1)
    assert p.due() == 1.0
    p.begin(1.0)
    p.done(1.0, ok=True)
    assert p.due() == 31.0 and p.failures == 0


def test_reconnection_syncs_at_once_whatever_the_backoff() -> None:
    p = Pacer(S, now=0.0, rng=lambda: 1.0)
    for now in (0.0, 1.0, 3.0, 7.0):
        p.begin(now)
        p.done(now, ok=False)
    assert p.due() == 15.0
    p.reconnected(9.0)
    assert p.due() == pytest.approx(9.0)


# -- whether it runs ----------------------------------------------------------------------------
def test_decide() -> None:
    assert decide("auto", False, None)[0] is True
    assert decide("auto", True, None) == (False, "off: libvirt's test driver runs no guest to protect (firewall = auto)")
    on, why = decide("auto", False, "nft (Debian package nftables) is not installed")
    assert not on and "not installed" in why
    assert decide("off", False, None)[0] is False
    assert decide("on", True, None)[0] is True
    with pytest.raises(ValueError, match="firewall = on, but nft cannot be used here: nope"):
        decide("on", False, "nope")
    with pytest.raises(ValueError, match="one of auto, on, off"):
        decide("maybe", False, None)


# -- the model mapped onto the renderer ---------------------------------------------------------
def guest(gid: str, ip: str, group: str | None, mac: str | None = None, hv: str = "lc-1") -> model.Guest:
    return model.Guest(gid, "small", "net", "sub", group, hypervisor=hv, mac=mac, ip=ipaddress.ip_address(ip))


WEB = model.FirewallGroup.from_json({"id": "web", "rules": [
    {"group": "clients", "portStart": 8080, "portEnd": 8080, "protocol": "tcp", "action": "allow"},
    {"source": "192.168.0.0/16", "protocol": "all", "action": "deny"},
    {"protocol": "icmp"},
]})


def snapshot(*extra_members: str) -> Snapshot:
    return Snapshot((guest("srv", "10.0.0.2", "web", "52:54:00:00:00:02"), guest("lone", "fd00::9", None)),
                    {"web": WEB}, {"clients": ("10.0.0.3", *extra_members)})


def test_host_firewall_maps_the_model() -> None:
    fw = host_firewall(snapshot(), {"52:54:00:00:00:02": "vnet3"})
    srv, lone = fw.guests
    assert (srv.id, srv.addresses, srv.group, srv.interface, srv.mac) == ("srv", ("10.0.0.2",), "web", "vnet3", "52:54:00:00:00:02")
    assert (lone.addresses, lone.group, lone.interface) == (("fd00::9",), None, None)
    rules = fw.groups["web"].rules
    assert [(r.group, r.source, r.port_start, r.port_end, r.protocol, r.action) for r in rules] == [
        ("clients", None, 8080, 8080, "tcp", "allow"), (None, "192.168.0.0/16", 0, 0, "all", "deny"), (None, None, 0, 0, "icmp", "allow")]
    assert fw.members == {"clients": ("10.0.0.3",)}


# -- the daemon's syncs, with a fake source and a fake nft ---------------------------------------
class FakeSource:
    def __init__(self) -> None:
        self.snapshot = snapshot()
        self.error: Exception | None = None

    def read(self, watch: Any) -> Snapshot:
        if self.error is not None:
            raise self.error
        return self.snapshot


class FakeNft:
    def __init__(self) -> None:
        self.batches: list[Mapping[str, Any]] = []
        self.table_handles = {("inet", "snooze"): 1, ("bridge", "snooze"): 2, ("inet", "other"): 3}
        self.error: nft.NftError | None = None
        self.removed = 0

    async def apply(self, batch: Mapping[str, Any]) -> nft.Applied:
        nft.check_scope(batch)
        if self.error is not None:
            raise self.error
        self.batches.append(batch)
        return nft.Applied(len(batch["nftables"]), 0.001)

    async def handles(self) -> dict[tuple[str, str], int]:
        return dict(self.table_handles)

    async def remove(self) -> nft.Applied:
        self.removed += 1
        return nft.Applied(4, 0.001)


def daemon(ports: Mapping[str, str] | Exception | None = None) -> tuple[FirewallDaemon, FakeSource, FakeNft]:
    async def find(macs: list[str]) -> Mapping[str, str]:
        if isinstance(ports, Exception):
            raise ports
        return ports or {}

    source, backend = FakeSource(), FakeNft()
    return FirewallDaemon(source, backend, settings=S, ports=find, clock=lambda: 0.0), source, backend


def members_in(batch: Mapping[str, Any]) -> list[str]:
    for c in batch["nftables"]:
        s = c.get("add", {}).get("set")
        if s and s["name"] == "members4_clients":
            return list(s.get("elem", []))
    raise AssertionError("no members set")


async def test_applies_only_when_the_rendering_changed() -> None:
    d, source, backend = daemon()
    assert await d.sync() and len(backend.batches) == 1
    assert await d.sync() and len(backend.batches) == 1, "same inputs: nothing applied"
    source.snapshot = snapshot("10.0.0.4")
    assert await d.sync() and len(backend.batches) == 2
    assert members_in(backend.batches[-1]) == ["10.0.0.3", "10.0.0.4"]
    assert d.status.applies == 2 and d.status.syncs == 3 and d.status.guests == 2


async def test_tables_replaced_by_someone_else_are_applied_again() -> None:
    d, _source, backend = daemon()
    await d.sync()
    backend.table_handles[("inet", "snooze")] = 7  # deleted and made again behind our back
    await d.sync()
    assert len(backend.batches) == 2
    await d.sync()
    assert len(backend.batches) == 2
    del backend.table_handles[("bridge", "snooze")]
    await d.sync()
    assert len(backend.batches) == 3


async def test_zookeeper_unreachable_keeps_the_rules_and_retries() -> None:
    d, source, backend = daemon()
    await d.sync()
    source.error = SourceError("ZooKeeper: ConnectionLoss()")
    assert not await d.sync() and not await d.sync()
    assert len(backend.batches) == 1 and backend.removed == 0, "nothing applied, nothing removed"
    assert d.status.failures == 2 and "ConnectionLoss" in (d.status.last_error or "")
    assert d.pacer.retry_at is not None
    source.error = None
    source.snapshot = snapshot("10.0.0.4")
    assert await d.sync()
    assert len(backend.batches) == 2 and d.status.failures == 0 and d.status.last_error is None


async def test_a_refused_apply_is_retried_until_it_takes() -> None:
    d, _source, backend = daemon()
    backend.error = nft.NftError("nft -j -f - failed (exit status 1): Operation not permitted")
    assert not await d.sync()
    assert d.status.failures == 1 and d.pacer.retry_at is not None
    backend.error = None
    assert await d.sync(), "the same rendering is applied: the last apply failed"
    assert len(backend.batches) == 1


async def test_a_bad_record_is_a_failed_sync_not_a_crash() -> None:
    d, source, backend = daemon()
    await d.sync()
    source.snapshot = Snapshot((guest("a", "10.0.0.2", None), guest("b", "10.0.0.2", None)))  # one address twice
    assert not await d.sync()
    assert "also guest a's address" in (d.status.last_error or "")
    assert len(backend.batches) == 1


async def test_ports_found_anti_spoofing_follows_and_a_failure_renders_without() -> None:
    d, _source, backend = daemon({"52:54:00:00:00:02": "vnet3"})
    await d.sync()
    assert any(c.get("add", {}).get("chain", {}).get("name") == "port_srv" for c in backend.batches[-1]["nftables"])
    d2, _source2, backend2 = daemon(PortsError("ip: not found"))
    assert await d2.sync(), "the filter does not need the ports"
    assert d2.status.ports == 0
    inet_chains = [c["add"]["chain"]["name"] for c in backend2.batches[-1]["nftables"] if "chain" in c.get("add", {})]
    assert chain_name("web") in inet_chains and "port_srv" not in inet_chains


async def test_remove_deletes_only_snoozes_tables() -> None:
    d, _source, backend = daemon()
    await d.sync()
    await d.close()
    assert backend.removed == 0, "close leaves the tables protecting the running guests"
    await d.remove()
    assert backend.removed == 1
    await d.sync()
    assert len(backend.batches) == 2, "after a remove, a sync applies the tables again"


# -- ports by MAC ---------------------------------------------------------------------------------
def test_ports_by_libvirts_tap_mac_then_the_forwarding_database() -> None:
    links = parse_links([
        {"ifname": "br-vm", "address": "6a:00:00:00:00:01"},
        {"ifname": "vnet0", "address": "FE:54:00:00:00:02", "master": "br-vm"},
        {"ifname": "veth7", "address": "a2:11:22:33:44:55", "master": "br-vm"},
        {"ifname": "eth0", "address": "fe:54:00:00:00:09"},  # not a bridge port
        {"bad": 1},
    ])
    assert links[1] == Link("vnet0", "fe:54:00:00:00:02", "br-vm")
    fdb = parse_fdb([
        {"mac": "52:54:00:00:00:03", "ifname": "veth7", "master": "br-vm", "state": ""},
        {"mac": "a2:11:22:33:44:55", "ifname": "veth7", "master": "br-vm", "state": "permanent"},
        {"mac": "52:54:00:00:00:04", "ifname": "veth7", "flags": ["self"], "state": "permanent"},
        {"mac": "52:54:00:00:00:05", "ifname": "gone0", "master": "br-vm"},
    ])
    assert fdb == {"52:54:00:00:00:03": "veth7", "52:54:00:00:00:05": "gone0"}
    assert tap_mac("52:54:00:AB:00:02") == "fe:54:00:ab:00:02"
    found = guest_ports(["52:54:00:00:00:02", "52:54:00:00:00:03", "52:54:00:00:00:05", "52:54:00:00:00:09"], links, fdb)
    assert found == {"52:54:00:00:00:02": "vnet0", "52:54:00:00:00:03": "veth7"}
    with pytest.raises(PortsError):
        parse_links({"not": "a list"})
