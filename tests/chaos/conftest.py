"""The ``--netns`` clusters of the chaos module (3 group managers, 4 local controllers, short
timeouts; one with unicast heartbeats for every case, one with multicast too for a few), each
started once, with its probe, the links cut, and the report file every case appends to."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from snooze.dev import netns
from snooze.dev.localcluster import LocalCluster
from tests.chaos.helpers import Cuts, Probe, Submission
from tests.support import fast_options, port_range

REPORT = Path(__file__).resolve().parents[2] / ".state" / "chaos" / "partitions.txt"


@dataclass
class Chaos:
    cluster: LocalCluster
    probe: Probe
    cuts: Cuts
    report: Path
    submissions: list[Submission] = field(default_factory=list)  # of every case so far

    @property
    def lcs(self) -> list[str]:
        return sorted(p["id"] for p in self.cluster.processes if p["role"] == "localcontroller")

    def write(self, line: str) -> None:
        print(line)
        with self.report.open("a") as f:
            f.write(line + "\n")


@contextlib.contextmanager
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory, *, multicast: bool = False) -> Iterator[Chaos]:
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    # Room for every VM the cases submit (1 vcpu, 64 MiB each) without ever running out.
    cluster = LocalCluster(tmp_path_factory.mktemp("chaos-multicast" if multicast else "chaos"),
                           fast_options(netns=True, multicast=multicast, gms=3, lcs=4, base_port=port_range(1),
                                        lc_cpus=64, lc_memory_gib=64))
    try:
        cluster.up(wait=True, timeout=60)
        probe = Probe(cluster)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        o = cluster.options
        with REPORT.open("a") as f:
            f.write(f"\n===== {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  3 GMs, 4 LCs, "
                    f"heartbeat {o.heartbeat_interval:g}/{o.heartbeat_timeout:g} s"
                    f"{' (unicast + multicast)' if multicast else ''}, session {o.session_timeout:g} s, "
                    f"sampled every 0.1 s from inside each namespace =====\n")
        try:
            yield Chaos(cluster, probe, Cuts(cluster), REPORT)
        finally:
            probe.close()
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    """The cluster of the main cases: unicast heartbeats."""
    with chaos_cluster(tmp_path_factory) as c:
        yield c


@pytest.fixture(scope="module")
def chaos_multicast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    """A cluster whose heartbeats also go multicast on the fabric (--multicast)."""
    with chaos_cluster(tmp_path_factory, multicast=True) as c:
        yield c
