"""Failure detection on a fake clock, and the leader's assignment policies."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from groupmanager.leader.assignment import choose_group_manager
from snooze.heartbeat import FailureDetector, HeartbeatEndpoint
from snooze.models import NetworkAddress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failure_detector_declares_silent_peers_dead_after_timeout() -> None:
    clock = Clock()
    fd = FailureDetector(2.0, clock)
    fd.heard("a")
    fd.heard("b")
    clock.now = 1.5
    fd.heard("b")
    clock.now = 2.5
    assert fd.expired() == ["a"]
    assert not fd.alive("a") and fd.alive("b")
    fd.forget("a")
    assert fd.expired() == []
    assert not fd.alive("never-heard")


@dataclass
class Rec:
    description: Any
    summary: dict[str, Any] = field(default_factory=dict)
    assigned_since_summary: int = 0


@dataclass
class Desc:
    id: str


def test_round_robin_cycles_through_group_managers() -> None:
    recs = [Rec(Desc("b")), Rec(Desc("a")), Rec(Desc("c"))]
    cursor = 0
    picks = []
    for _ in range(6):
        r, cursor = choose_group_manager("round-robin", recs, cursor)
        picks.append(r.description.id)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_balanced_picks_the_group_manager_with_fewest_local_controllers() -> None:
    recs = [Rec(Desc("a"), {"numberOfLocalControllers": 3}), Rec(Desc("b"), {"numberOfLocalControllers": 1}, 1),
            Rec(Desc("c"), {"numberOfLocalControllers": 1})]
    r, _ = choose_group_manager("balanced", recs, 0)
    assert r.description.id == "c", "b has 1 + 1 assigned since its last summary"


async def test_heartbeats_reach_handlers_and_garbage_is_counted() -> None:
    got: list[Any] = []
    rx = HeartbeatEndpoint(b"key", "rx")
    rx.on("ping", lambda env, addr: got.append((env.sender, env.epoch, env.body)))
    await rx.start("127.0.0.1", 0)
    assert rx._transport is not None
    port = rx._transport.get_extra_info("sockname")[1]
    tx = HeartbeatEndpoint(b"key", "tx")
    await tx.start("127.0.0.1", 0)
    wrong = HeartbeatEndpoint(b"other-key", "evil")
    await wrong.start("127.0.0.1", 0)
    try:
        tx.send("ping", 3, {"n": 1}, [NetworkAddress("127.0.0.1", port)])
        tx.send("unknown", 3, None, [NetworkAddress("127.0.0.1", port)])
        wrong.send("ping", 9, {"n": 2}, [NetworkAddress("127.0.0.1", port)])
        for _ in range(50):
            if got and sum(rx.dropped.values()) >= 2:
                break
            await asyncio.sleep(0.02)
        assert got == [("tx", 3, {"n": 1})]
        assert rx.dropped["bad_hmac"] == 1 and rx.dropped["unknown_kind"] == 1
    finally:
        for e in (rx, tx, wrong):
            e.close()
