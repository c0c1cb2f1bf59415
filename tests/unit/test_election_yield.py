"""The election's ``should_yield`` on a real ZooKeeper: a winner that should step aside lets the
next contender lead, and a round where every contender would step aside still elects one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from snooze.coordination import Coordinator, LeaderElection
from snooze.dev.zookeeper import ZooKeeperServer

SESSION = 4.0


@dataclass
class Contender:
    coord: Coordinator
    election: LeaderElection
    task: asyncio.Task[None]
    asked: list[list[str]] = field(default_factory=list)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
async def start(zookeeper: ZooKeeperServer) -> AsyncIterator[Callable[[str, bool], Awaitable[Contender]]]:
    started: list[Contender] = []

    async def make(name: str, yields: bool) -> Contender:
        coord = Coordinator(zookeeper.address, root="/yield-test", session_timeout=SESSION)
        await coord.start(wait=15)
        asked: list[list[str]] = []

        async def should_yield(others: list[str]) -> bool:
            asked.append(sorted(others))
            return yields

        async def nothing(*_args: object) -> None:
            return None

        election = LeaderElection(coord, name, nothing, nothing, should_yield=should_yield)
        c = Contender(coord, election, asyncio.create_task(election.run()), asked)
        started.append(c)
        return c

    try:
        yield make
    finally:
        for c in started:
            await stop(c)


async def stop(c: Contender) -> None:
    await c.election.stop()
    c.task.cancel()
    await asyncio.gather(c.task, return_exceptions=True)
    await c.coord.stop()


async def test_a_winner_that_should_yield_lets_the_next_contender_lead(
        start: Callable[[str, bool], Awaitable[Contender]]) -> None:
    first = await start("first", False)
    await until(lambda: first.election.presenting, 15, "first elected")
    a = await start("a", True)  # queued before b, but manages more: steps aside
    await asyncio.sleep(0.5)
    b = await start("b", False)
    await asyncio.sleep(0.5)
    await stop(first)
    await until(lambda: b.election.presenting, 15, "b elected")
    assert not a.election.is_leader and a.election.yields == 1
    assert a.asked == [["b"]], "asked with the other contenders"
    assert b.election.yields == 0 and b.asked in ([], [["a"]]), "asked only if a had queued again already"


async def test_when_every_contender_would_yield_one_still_leads(
        start: Callable[[str, bool], Awaitable[Contender]]) -> None:
    first = await start("first", False)
    await until(lambda: first.election.presenting, 15, "first elected")
    a = await start("a", True)
    await asyncio.sleep(0.5)
    b = await start("b", True)
    await asyncio.sleep(0.5)
    await stop(first)
    await until(lambda: a.election.presenting or b.election.presenting, 15, "a leader")
    await asyncio.sleep(1.0)
    assert a.election.presenting != b.election.presenting, "exactly one leader"
    # a stepped aside; b too if a had queued again when b won (else b had no one to yield to);
    # whoever won the lock next led: one step aside each at most.
    assert a.election.yields == 1 and b.election.yields <= 1


async def test_a_lone_contender_is_not_asked(start: Callable[[str, bool], Awaitable[Contender]]) -> None:
    a = await start("a", True)
    await until(lambda: a.election.presenting, 15, "a elected")
    assert a.asked == [] and a.election.yields == 0


def test_a_winner_steps_aside_only_when_that_spares_many_moves() -> None:
    from groupmanager.service import worth_yielding

    assert worth_yielding(4, 1)  # the handover test: 3 hosts spared of 4
    assert worth_yielding(2000, 0) and worth_yielding(2, 0)
    assert not worth_yielding(52, 50) and not worth_yielding(51, 50)  # balanced: no cascade
    assert worth_yielding(60, 45) and not worth_yielding(60, 46)  # a quarter of 60 is 15
    assert not worth_yielding(1, 0) and not worth_yielding(0, 0) and not worth_yielding(3, 5)
