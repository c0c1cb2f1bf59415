"""A three-server ZooKeeper ensemble (``snooze.dev.zookeeper.ZooKeeperEnsemble``), real servers:
clients given the full connection string keep their session and their data when the ensemble's
leader is killed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from snooze.dev.zookeeper import ZooKeeperEnsemble
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


def test_an_ensemble_of_three_survives_the_loss_of_its_leader(tmp_path: Path) -> None:
    ensemble = ZooKeeperEnsemble(tmp_path / "zk", size=3, tick_ms=500)
    try:
        ensemble.start(60)
        assert sorted(ensemble.mode(i) or "down" for i in range(3)) == ["follower", "follower", "leader"]
        client = KazooClient(hosts=ensemble.address, timeout=10.0)
        client.start(30)
        try:
            client.create("/snooze-test/a", b"before", makepath=True)
            session = client.client_id
            leader = ensemble.leader()
            assert leader is not None
            t0 = time.monotonic()
            ensemble.kill(leader)
            new = wait_for(lambda: (lambda i: i if i is not None and i != leader else None)(ensemble.leader()), 30,
                           "a new ensemble leader")
            print(f"\nensemble leader {leader} killed; server {new} leads after {time.monotonic() - t0:.2f}s")
            wait_for(lambda: client.connected, 30, "the client reconnected")
            assert client.client_id == session, "the session survived the ensemble's leader"
            assert client.get("/snooze-test/a")[0] == b"before"
            client.set("/snooze-test/a", b"after")
            ensemble.restart(leader)
            wait_for(lambda: ensemble.mode(leader) == "follower", 30, "the killed server back as a follower")
            # The restarted server caught up with the write made while it was down.
            other = KazooClient(hosts=ensemble.servers[leader].address, timeout=10.0)
            other.start(30)
            try:
                other.sync("/snooze-test/a")
                assert other.get("/snooze-test/a")[0] == b"after"
            finally:
                other.stop()
                other.close()
        finally:
            client.stop()
            client.close()
    finally:
        ensemble.stop()
    assert all(s.process is None for s in ensemble.servers)
