"""MAC addresses: the original's 54:56 + IP encoding, zero-padded as libvirt and OVS write
them, and compared normalised, so a record in the seed's unpadded form still matches."""

from __future__ import annotations

import ipaddress

import pytest

from snooze.records import VMRecord
from snooze.virtualcluster import mac_for_ip, normalise_mac, same_mac, subnet_hosts


def test_every_octet_has_two_digits() -> None:
    assert mac_for_ip("192.168.122.2") == "54:56:c0:a8:7a:02"
    assert mac_for_ip("10.0.0.1") == "54:56:0a:00:00:01"
    assert mac_for_ip("255.255.255.255") == "54:56:ff:ff:ff:ff"


def test_the_encoding_is_the_originals_and_reversible() -> None:
    for ip in subnet_hosts("10.20.0.0/22"):
        mac = mac_for_ip(ip)
        assert len(mac) == 17 and mac.startswith("54:56:")
        assert str(ipaddress.IPv4Address(bytes(int(x, 16) for x in mac.split(":")[2:]))) == ip
    # The original's unpadded form denotes the same address.
    assert same_mac("54:56:c0:a8:7a:2", mac_for_ip("192.168.122.2"))


@pytest.mark.parametrize(("raw", "normal"), [
    ("54:56:c0:a8:7a:2", "54:56:c0:a8:7a:02"),
    ("54:56:C0:A8:7A:02", "54:56:c0:a8:7a:02"),
    (" 54:56:a:0:0:2 ", "54:56:0a:00:00:02"),
    ("52:54:00:12:34:56", "52:54:00:12:34:56"),
])
def test_normalise(raw: str, normal: str) -> None:
    assert normalise_mac(raw) == normal


@pytest.mark.parametrize("bad", ["", "54:56:c0:a8:7a", "54:56:c0:a8:7a:2:1", "54:56:c0:a8:7a:zz", "54:56:c0:a8:7a:123"])
def test_not_a_mac(bad: str) -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        normalise_mac(bad)


def test_same_mac() -> None:
    assert same_mac("54:56:A:0:0:2", "54:56:0a:00:00:02")
    assert not same_mac("54:56:0a:00:00:02", "54:56:0a:00:00:03")
    assert same_mac(None, None) and not same_mac(None, "54:56:0a:00:00:02")


def test_a_seed_record_with_the_unpadded_form_still_reads() -> None:
    rec = VMRecord.pending("a", "t", (1.0, 1024.0, 0.0, 0.0), "10.0.0.2", "54:56:a:0:0:2")
    assert rec.mac is not None and same_mac(rec.mac, mac_for_ip("10.0.0.2"))
