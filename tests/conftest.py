"""Fixtures: a real ZooKeeper server and real local clusters, always torn down; and the check
that no test reads anything beside the repository (``tests/outside_reads.py``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from snooze.coordination import Coordinator
from snooze.dev.localcluster import LocalCluster
from snooze.dev.zookeeper import ZooKeeperServer
from tests.outside_reads import install as install_outside_reads_check
from tests.support import fast_options, port_range

REPOSITORY = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # A clone has nothing beside it: a test that opens ../anything fails the run at the end.
    install_outside_reads_check(config, REPOSITORY)
    # pytest-xdist worker I of N (scripts/test runs the suite on every core): ports are chosen in
    # slice I of N (snooze.dev.ports), so two workers never pick the same ones at once.
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit():
        os.environ["SNOOZE_PORT_SLICE"] = f"{worker[2:]}/{count}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``alone`` need the machine to themselves: the parallel run (xdist workers)
    leaves them out, and scripts/test runs them afterwards with ``SNOOZE_TESTS_ALONE=1``, which
    runs only them. A plain ``pytest`` runs everything, in one process."""
    parallel = hasattr(config, "workerinput")
    alone_phase = os.environ.get("SNOOZE_TESTS_ALONE") == "1"
    if not (parallel or alone_phase):
        return
    keep, drop = [], []
    for item in items:
        (keep if (item.get_closest_marker("alone") is not None) == alone_phase else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer(tmp_path / "zk")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    started: list[LocalCluster] = []

    def make(**kw: Any) -> LocalCluster:
        gms = kw.get("gms", 3)
        lcs = kw.get("lcs", 4)
        kw.setdefault("base_port", port_range(2 + gms + lcs))  # + the EC2 API's, if on
        cluster = LocalCluster(tmp_path / f"cluster{len(started)}", fast_options(**kw))
        started.append(cluster)
        cluster.up(wait=True, timeout=60)
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            cluster.down()


@pytest.fixture
async def coord(zookeeper: ZooKeeperServer) -> AsyncIterator[Coordinator]:
    """A connected ZooKeeper session on this test's own server."""
    c = Coordinator(zookeeper.address, root="/snooze-test", session_timeout=4.0)
    await c.start(wait=15)
    assert c.connected
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
def kazoo_client(zookeeper: ZooKeeperServer) -> Iterator[KazooClient]:
    """A plain kazoo client of this test's own ZooKeeper server (for code that takes a client)."""
    c = KazooClient(hosts=zookeeper.address, timeout=10)
    c.start(timeout=15)
    try:
        yield c
    finally:
        c.stop()
        c.close()
