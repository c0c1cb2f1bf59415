"""Partitions on a ``--netns`` cluster (3 group managers, 4 local controllers, heartbeat
0.5 s / 2 s, session 2 s): the leader, a group manager with local controllers, ZooKeeper and a
local controller are each cut off the fabric for longer (4 s) and shorter (1 s) than the session
timeout, while every group manager's claim is sampled every 100 ms from inside its own namespace
(a cut-off process is still seen) and VMs are submitted through the bootstrap.

Each case asserts: never two group managers presenting themselves as leader in the same sample
round, and no term claimed by two of them; every local controller re-homed within heartbeat
timeout + 2 s of becoming orphaned (listed under no reachable group manager); every submission
answered, refusals with a retryable code and nothing started for them; no VM lost or doubled
(each VM that was answered RUNNING is defined on exactly one host, the one its record names).
VMs answered as failed after their submission was accepted, yet defined on a host, are reported
(``answered failed yet on a host``), not failed on. Each case's figures go to
stdout and to ``.state/chaos/partitions.txt``. A few cases run again on a cluster whose
heartbeats also go multicast on the fabric (``--multicast``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.chaos.conftest import Chaos
from tests.chaos.helpers import (
    CaseReport,
    Round,
    Sampler,
    Submitter,
    error_code,
    leaderless,
    orphan_spells,
    placements,
    two_leader_rounds,
)
from tests.support import http, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = [("leader", 4.0), ("leader", 1.0), ("gm-with-lcs", 4.0), ("gm-with-lcs", 1.0),
         ("zookeeper", 4.0), ("zookeeper", 1.0), ("lc", 4.0), ("lc", 1.0)]
MULTICAST_CASES = [("leader", 4.0), ("zookeeper", 4.0), ("gm-with-lcs", 4.0)]


def healthy(r: Round, lcs: list[str]) -> bool:
    return not r.cut and len(r.leaders()) == 1 and all(r.homed(lc) for lc in lcs)


def wait_healthy(sampler: Sampler, lcs: list[str], timeout: float) -> Round | None:
    """Sample (on this thread) until three rounds in a row are healthy; the last one, or None."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        r = sampler.sample()
        streak = streak + 1 if healthy(r, lcs) else 0
        if streak >= 3:
            return r
        time.sleep(0.1)
    return None


def pick_target(kind: str, r: Round, chaos: Chaos) -> tuple[str, str]:
    if kind == "leader":
        return r.leaders()[0], "leader"
    if kind == "gm-with-lcs":
        gms = [gm for gm, lcs in r.listed.items() if lcs and gm not in r.leaders()]
        return max(gms, key=lambda gm: (len(r.listed[gm] or ()), gm)), "group manager"
    if kind == "zookeeper":
        return "zookeeper", "ZooKeeper"
    where = placements(chaos.probe, chaos.lcs)
    hosted = {lc: sum(lc in lcs for lcs in where.values()) for lc in chaos.lcs}
    return max(chaos.lcs, key=lambda lc: (hosted[lc], lc)), "local controller"


def recorded_host(chaos: Chaos, vm: str) -> Any:
    """The host the VM's record names (retried a while: right after a heal, the bootstrap may
    answer a retryable 503 until its ZooKeeper session is back)."""
    answers: list[Any] = []

    def read() -> bool:
        status, body = http("POST", chaos.cluster.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", vm)
        answers.append((status, body))
        code = error_code(body)
        assert status == 200 or (code is not None and code.retryable), (vm, status, body)
        return status == 200

    wait_for(read, 15, f"the record of {vm}")
    return answers[-1][1]["virtualMachineLocation"]["localControllerId"]


@pytest.mark.parametrize(("kind", "seconds"), CASES, ids=[f"{k}-{s:g}s" for k, s in CASES])
def test_partition(chaos: Chaos, kind: str, seconds: float) -> None:
    run_case(chaos, kind, seconds, f"{kind}-{seconds:g}s")


@pytest.mark.parametrize(("kind", "seconds"), MULTICAST_CASES, ids=[f"{k}-{s:g}s" for k, s in MULTICAST_CASES])
def test_partition_with_multicast_heartbeats(chaos_multicast: Chaos, kind: str, seconds: float) -> None:
    """Multicast heartbeats reach peers that ZooKeeper does not (a leader cut off from ZooKeeper
    still hears, and is heard by, the group managers): the same assertions hold."""
    run_case(chaos_multicast, kind, seconds, f"mc-{kind}-{seconds:g}s")


def run_case(chaos: Chaos, kind: str, seconds: float, case: str) -> None:
    o = chaos.cluster.options
    sampler = Sampler(chaos.probe, chaos.cuts)
    before = wait_healthy(sampler, chaos.lcs, 30)
    assert before is not None, "the cluster is not healthy (one leader, every LC homed) before the cut"
    target, role = pick_target(kind, before, chaos)

    submitter = Submitter(chaos.cluster.bootstrap_url, f"chaos-{case}")
    sampler.start()
    submitter.start()
    try:
        time.sleep(1.0)
        chaos.cuts.cut(target)
        try:
            time.sleep(seconds)
        finally:
            chaos.cuts.heal(target)
        # Until it has healed: one leader, every LC homed, three rounds in a row (or 20 s).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.1)
            last = sampler.rounds[-3:]
            if len(last) == 3 and all(healthy(r, chaos.lcs) for r in last):
                break
        time.sleep(0.5)
    finally:
        submitter.stop()
        rounds = sampler.stop()
    submitter.settle()
    chaos.submissions.extend(submitter.submissions)

    # -- figures ---------------------------------------------------------------------------
    doubles = two_leader_rounds(rounds)
    spells = orphan_spells(rounds, chaos.lcs)
    longest = max(spells, key=lambda s: s.length, default=None)
    report = CaseReport(case, target, role, seconds, rounds=len(rounds), two_leaders=len(doubles),
                        longest_orphan=longest.length if longest else 0.0, orphan_lc=longest.lc if longest else "",
                        leaderless=leaderless(rounds), submissions=len(submitter.submissions),
                        slowest_answer=max((s.waited for s in submitter.submissions), default=0.0))
    for s in submitter.submissions:
        if s.error is not None:
            code = str(error_code(s.error))
            report.refused[code] = report.refused.get(code, 0) + 1
        if s.response is not None and s.response.get("errorCode"):
            code = str(s.response["errorCode"])
            report.vm_errors[code] = report.vm_errors.get(code, 0) + 1
    where = placements(chaos.probe, chaos.lcs)
    report.ghosts = sorted(s.name for s in submitter.submissions
                           if s.response is not None and s.vm_status != "RUNNING" and s.name in where)
    chaos.write(report.line())

    # -- assertions ------------------------------------------------------------------------
    t0 = rounds[0].t if rounds else 0.0
    assert not doubles, (f"{len(doubles)} sample rounds with two leaders, first at "
                         f"{doubles[0].t - t0:.2f}s: {doubles[0].claims}")
    terms: dict[int, set[str]] = {}
    for r in rounds:
        for gm, claim in r.claims.items():
            if claim is not None and claim[0]:
                terms.setdefault(claim[1], set()).add(gm)
    shared = {epoch: gms for epoch, gms in terms.items() if len(gms) > 1}
    assert not shared, f"a term claimed by more than one group manager: {shared}"
    limit = o.heartbeat_timeout + 2.0
    late = [s for s in spells if s.length > limit]
    assert not late, "local controllers orphaned longer than heartbeat timeout + 2 s: " + ", ".join(
        f"{s.lc} from {s.start - t0:.2f}s for {'ever' if s.end is None else f'{s.length:.2f}s'}" for s in late)

    unanswered = [f"{s.name}: {s.failure}" for s in submitter.submissions if s.failure]
    assert not unanswered, f"submissions not answered: {unanswered}"
    permanent = [(s.name, s.status, s.error) for s in submitter.submissions
                 if s.error is not None and not ((refusal := error_code(s.error)) is not None and refusal.retryable)]
    assert not permanent, f"submissions refused with a code that is not retryable: {permanent}"
    assert any(s.vm_status == "RUNNING" for s in submitter.submissions), "no VM started at all during the case"

    refused_yet_run = [s.name for s in submitter.submissions if s.error is not None and s.name in where]
    assert not refused_yet_run, f"submissions refused (nothing done, retry) whose VM runs anyway: {refused_yet_run}"
    doubled = {vm: lcs for vm, lcs in where.items() if len(lcs) > 1}
    assert not doubled, f"VMs defined on more than one host: {doubled}"
    running = [s.name for s in chaos.submissions if s.vm_status == "RUNNING"]
    lost = [vm for vm in running if vm not in where]
    assert not lost, f"VMs answered RUNNING that no host has any more: {lost}"
    misplaced = {vm: (where[vm][0], host) for vm in running if (host := recorded_host(chaos, vm)) != where[vm][0]}
    assert not misplaced, f"VM records naming another host than the one running it (host, record): {misplaced}"
