"""The advertised address (``Settings.advertise_address``): what peers are told to use.

The rule: ``[node] advertise_address`` if set; else ``listen_address`` when that is one address;
else (a wildcard) this host's source address on the route to the first ZooKeeper server. A
wildcard is never advertised, nor a loopback address while ZooKeeper is elsewhere. Only route
look-ups happen here (a UDP socket's connect sends nothing), and no server listens.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from bootstrap.service import Bootstrap
from snooze import config as cfg


def settings(listen: str = "127.0.0.1", advertise: str = "", zookeeper: str = "127.0.0.1:2181") -> cfg.Settings:
    return cfg.from_dict({"node": {"listen_address": listen, "advertise_address": advertise},
                          "cluster": {"zookeeper": zookeeper}})


def test_a_specific_listen_address_is_advertised_and_advertise_address_wins() -> None:
    assert settings("127.0.0.1").advertise_address() == "127.0.0.1"
    assert settings("127.0.0.5").advertise_address() == "127.0.0.5"
    assert settings("127.0.0.1", "127.0.0.7").advertise_address() == "127.0.0.7"
    # A host name is kept as given: peers resolve it.
    assert settings("127.0.0.1", "localhost").advertise_address() == "localhost"


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_listen_address_advertises_the_route_to_zookeeper(wildcard: str) -> None:
    assert settings(wildcard, zookeeper="127.0.0.1:2181").advertise_address() == "127.0.0.1"
    assert settings(wildcard, zookeeper="127.0.0.3:2181,127.0.0.4:2181").advertise_address() == "127.0.0.1"
    # Host names are accepted (resolved for the route look-up).
    assert ipaddress.ip_address(settings(wildcard, zookeeper="localhost:2181").advertise_address()).is_loopback
    # The first server of a remote ensemble: this host's address towards it, whatever it is,
    # but never a wildcard or loopback; or, with no route there, an error naming the option.
    try:
        got = settings(wildcard, zookeeper="192.0.2.10:2181,192.0.2.11:2181").advertise_address()
    except cfg.ConfigError as exc:
        assert "set [node] advertise_address" in str(exc) and "192.0.2.10:2181" in str(exc)
    else:
        ip = ipaddress.ip_address(got)
        assert not ip.is_unspecified and not ip.is_loopback


def test_the_route_source_is_what_the_kernel_would_use() -> None:
    assert cfg.route_source("127.0.0.1", 2181) == "127.0.0.1"
    assert cfg.route_source("::1", 2181) == "::1"


def test_a_wildcard_is_never_advertised() -> None:
    for bad in ("0.0.0.0", "::", "[::]"):
        with pytest.raises(cfg.ConfigError, match=r"\[node\] advertise_address = .* is a wildcard"):
            settings("127.0.0.1", bad).advertise_address()
    with pytest.raises(cfg.ConfigError, match=r"ZooKeeper's address is not known yet: set \[node\] advertise_address"):
        cfg.from_dict({"node": {"listen_address": "0.0.0.0"}, "cluster": {"zookeeper": "", "discovery": "zeroconf"}}
                      ).advertise_address()


def test_loopback_is_refused_when_zookeeper_is_elsewhere() -> None:
    with pytest.raises(cfg.ConfigError) as err:
        settings("127.0.0.1", zookeeper="192.0.2.10:2181").advertise_address()
    msg = str(err.value)
    assert "[node] listen_address = '127.0.0.1'" in msg and "[node] advertise_address" in msg and "loopback" in msg
    with pytest.raises(cfg.ConfigError, match=r"\[node\] advertise_address = 'localhost' is a loopback address"):
        settings("127.0.0.1", "localhost", zookeeper="192.0.2.10:2181").advertise_address()
    # One remote server in the ensemble is enough to refuse.
    with pytest.raises(cfg.ConfigError, match="loopback"):
        settings("127.0.0.1", zookeeper="127.0.0.1:2181,192.0.2.10:2181").advertise_address()
    # ZooKeeper on loopback too (one machine): fine.
    assert settings("127.0.0.1", zookeeper="localhost:2181").advertise_address() == "127.0.0.1"


def test_zookeeper_connect_strings_are_read_like_kazoo_does() -> None:
    assert cfg.zookeeper_servers("zk1:2181,zk2,[::1]:2182/snooze") == [("zk1", 2181), ("zk2", 2181), ("::1", 2182)]
    for bad in ("zk1:port", "zk1:0", ":2181"):
        with pytest.raises(cfg.ConfigError, match=r"\[cluster\] zookeeper"):
            cfg.zookeeper_servers(bad)


def test_wildcard_and_loopback_checks() -> None:
    assert cfg.is_wildcard("0.0.0.0") and cfg.is_wildcard("::") and cfg.is_wildcard("")
    assert not cfg.is_wildcard("10.0.0.1") and not cfg.is_wildcard("node1.example")
    assert cfg.is_loopback("127.0.0.2") and cfg.is_loopback("::1") and cfg.is_loopback("localhost")
    assert not cfg.is_loopback("192.0.2.1") and not cfg.is_loopback("no-such-host.invalid")


def test_a_process_advertises_the_rule_s_address_not_its_wildcard() -> None:
    # Built, not started: nothing listens.
    service = Bootstrap(settings("0.0.0.0", zookeeper=f"127.0.0.1:{2181}"))
    assert service.address.address == "127.0.0.1" != service.settings.node.listen_address
    assert socket.inet_aton(service.address.address)
