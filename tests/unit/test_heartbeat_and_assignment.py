"""Failure detection on a fake clock, heartbeats (garbage, replays, stale copies), and the
leader's assignment policies."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from groupmanager.leader.assignment import choose_group_manager
from snooze.heartbeat import FailureDetector, HeartbeatEndpoint
from snooze.models import NetworkAddress
from snooze.protocol import encode


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


def test_until_dead_counts_down_to_the_moment_a_peer_is_declared_dead() -> None:
    clock = Clock()
    fd = FailureDetector(2.0, clock)
    assert fd.until_dead("never-heard") == 0.0
    fd.heard("a")
    clock.now = 0.5
    assert fd.until_dead("a") == 1.5
    clock.now = 1.0
    fd.heard("a")  # a heartbeat moves the moment on
    clock.now = 2.9
    assert abs(fd.until_dead("a") - 0.1) < 1e-9 and fd.alive("a")
    clock.now = 3.0
    assert fd.until_dead("a") == 0.0 and fd.alive("a")  # the boundary: still alive, no wait left
    clock.now = 3.5
    assert fd.until_dead("a") == 0.0 and not fd.alive("a")


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


async def test_heartbeats_waiting_in_the_socket_are_all_read_at_the_next_readiness() -> None:
    """A loop busy elsewhere (here: blocked) lets heartbeats pile up in the socket; asyncio reads
    one datagram per readiness event, so they would be read one per loop iteration, late. The
    endpoint reads what is waiting at once: one iteration of the loop handles them all."""
    got: list[int] = []
    rx = HeartbeatEndpoint(b"key", "rx")
    rx.on("ping", lambda env, addr: got.append(env.body["n"]))
    await rx.start("127.0.0.1", 0)
    assert rx._transport is not None
    port = rx._transport.get_extra_info("sockname")[1]
    tx = HeartbeatEndpoint(b"key", "tx")
    await tx.start("127.0.0.1", 0)
    try:
        for n in range(40):  # sent while this loop does nothing else: all waiting in rx's socket
            tx.send("ping", 1, {"n": n}, [NetworkAddress("127.0.0.1", port)])
        time.sleep(0.2)  # noqa: ASYNC251 (blocking the loop is the point: loopback delivers them meanwhile)
        for _ in range(3):  # a few iterations: one to find the socket ready
            await asyncio.sleep(0)
            if got:
                break
        assert got == list(range(40)), got
    finally:
        for e in (rx, tx):
            e.close()


async def test_replayed_stale_and_out_of_order_heartbeats_never_reach_the_detector() -> None:
    clock = Clock()
    detector = FailureDetector(2.0, clock)
    got: list[Any] = []

    def on_heartbeat(env: Any, _addr: Any) -> None:
        got.append(env.body)
        detector.heard(env.sender)

    rx = HeartbeatEndpoint(b"key", "gm", window=30)
    rx.on("lc.heartbeat", on_heartbeat)
    await rx.start("127.0.0.1", 0)
    assert rx._transport is not None
    port = rx._transport.get_extra_info("sockname")[1]

    async def deliver(data: bytes, until: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, ("127.0.0.1", port))
        for _ in range(100):
            if len(got) + sum(rx.dropped.values()) >= until:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"datagram not handled: {got}, {rx.dropped}")

    try:
        now = time.time()
        captured = encode(b"key", "lc.heartbeat", "lc-1", 1, 1, timestamp=now)
        await deliver(captured, 1)
        assert got == [1] and detector.alive("lc-1")
        # lc-1 dies; someone replays what it sent, or sends stale and reordered copies of it.
        clock.now = 2.5
        await deliver(captured, 2)
        await deliver(encode(b"key", "lc.heartbeat", "lc-1", 1, 2, timestamp=now - 31), 3)
        await deliver(encode(b"key", "lc.heartbeat", "lc-1", 1, 3, timestamp=now + 31), 4)
        await deliver(encode(b"key", "lc.heartbeat", "lc-1", 1, 4, timestamp=now - 1), 5)
        assert got == [1], "none of them reached the handler"
        assert rx.dropped == {"replay": 1, "stale_timestamp": 2, "out_of_order": 1}
        assert detector.expired() == ["lc-1"], "the dead local controller is not kept alive"
        # ... while a live sender's next heartbeat still gets through
        await deliver(encode(b"key", "lc.heartbeat", "lc-1", 1, 5, timestamp=time.time()), 6)
        assert got == [1, 5] and detector.alive("lc-1")
    finally:
        rx.close()
