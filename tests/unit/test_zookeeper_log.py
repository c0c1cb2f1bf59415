"""kazoo's own log lines as a Snooze process writes them: naming the ZooKeeper servers they are
about, and a warning kazoo repeats on every retry ("Connection dropped: … Connection refused")
written once per interval (the rest at debug level)."""

from __future__ import annotations

import logging

import pytest

from snooze.coordination.zk import _KazooLog, describe_hosts


def test_kazoo_lines_name_the_servers_and_repeats_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    adapter = _KazooLog("zk1:2181,zk2:2181")
    with caplog.at_level(logging.WARNING, logger="kazoo.client"):
        for _ in range(5):
            adapter.warning("Connection dropped: %s", "socket connection error: Connection refused")
        adapter.warning("Session has expired")
        adapter.warn("Received unknown event %r", 7)  # kazoo still calls the old name
    assert [r.getMessage() for r in caplog.records] == [
        "ZooKeeper at zk1:2181,zk2:2181: Connection dropped: socket connection error: Connection refused",
        "ZooKeeper at zk1:2181,zk2:2181: Session has expired",
        "ZooKeeper at zk1:2181,zk2:2181: Received unknown event 7",
    ]


def test_connect_strings_are_shown_as_host_port() -> None:
    assert describe_hosts("127.0.0.1:2181") == "127.0.0.1:2181"
    assert describe_hosts("zk1,zk2:2182/snooze") == "zk1:2181,zk2:2182"
    assert describe_hosts("[::1]:2181") == "[::1]:2181"
    assert describe_hosts("zk1:nope") == "zk1:nope"  # shown as given when it cannot be read


def test_what_kazoo_says_while_being_stopped_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    adapter = _KazooLog("zk1:2181")
    adapter.stopping = True
    with caplog.at_level(logging.DEBUG, logger="kazoo.client"):
        adapter.warning("Failed connecting to Zookeeper within the connection retry policy.")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "ZooKeeper at zk1:2181: Failed connecting to Zookeeper within the connection retry policy.")]


def test_a_lone_server_is_listed_again_so_a_connect_attempt_waits_seconds_not_a_session() -> None:
    # kazoo waits session / servers listed for a connect answer: a lone server still starting
    # held a client 20 s (its whole session) in CI.
    from kazoo.hosts import collect_hosts

    from snooze.coordination.zk import kazoo_hosts

    assert kazoo_hosts("127.0.0.1:2181", 20.0) == ",".join(["127.0.0.1:2181"] * 4)  # 5 s a try
    assert kazoo_hosts("127.0.0.1:2181", 10.0) == ",".join(["127.0.0.1:2181"] * 3)  # 3.3 s
    assert kazoo_hosts("127.0.0.1:2181", 2.0) == "127.0.0.1:2181"  # never much under 3 s
    assert kazoo_hosts("a:1,b:2,c:3", 10.0) == "a:1,b:2,c:3"  # an ensemble: already 3.3 s
    assert kazoo_hosts("a:1,b:2,c:3", 20.0) == "a:1,b:2,c:3,a:1,b:2,c:3"
    assert kazoo_hosts("a:1/snooze", 20.0) == "a:1,a:1,a:1,a:1/snooze"
    hosts, chroot = collect_hosts(kazoo_hosts("127.0.0.1:2181/x", 20.0))
    assert len(hosts) == 4 and chroot == "/x"  # kazoo keeps the repeats
