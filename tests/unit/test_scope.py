"""The role scope: registrations end with it, a non-critical task's failure is recorded and the
process goes on, a critical one stops the process, and closing is bounded whatever a task does."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from snooze.protocol import Envelope
from snooze.scope import Scope
from tests.peers import Network, node


def root(grace: float = 5.0) -> tuple[Scope, list[tuple[str, BaseException]]]:
    """A process scope whose critical failures are collected instead of stopping anything."""
    n = node("proc", 7001, Network())
    crashed: list[tuple[str, BaseException]] = []
    scope = Scope("proc", node_id="proc", address=n.scope.address, settings=n.scope.settings, rpc=n.scope.rpc,
                  internal=n.internal, heartbeat=n.heartbeat, on_critical=lambda name, exc: crashed.append((name, exc)),
                  grace=grace)
    return scope, crashed


async def answer(env: Envelope) -> Any:
    return {"kind": env.kind}


def heard(env: Envelope, addr: tuple[str, int]) -> None:
    pass


async def test_closing_a_scope_unregisters_every_handler_it_registered() -> None:
    n = node("gm-1", 7001, Network())
    role = n.scope.child("leader")
    role.on("gl.hierarchy", answer)
    role.on("gm.join", answer, order=True)
    role.heartbeat_on("gm.heartbeat", heard)
    n.scope.on("gm.ping", answer)  # the process's own: stays
    assert await n.ask("gl.hierarchy") == {"kind": "gl.hierarchy"}
    assert n.internal.handlers["gm.join"][1] is True
    await role.close()
    assert set(n.internal.handlers) == {"gm.ping"} and n.heartbeat.handlers == {}
    assert role.closed and not n.scope.closed
    with pytest.raises(RuntimeError):
        role.on("gl.hierarchy", answer)


async def test_a_registration_removes_only_itself() -> None:
    n = node("gm-1", 7001, Network())
    first = n.scope.child("first")
    reg = first.on("gm.describe", answer)
    with pytest.raises(ValueError, match="already have a handler"):
        n.scope.child("second").on("gm.describe", answer)
    reg.close()
    assert not reg.active and "gm.describe" not in n.internal.handlers
    later = n.scope.child("later")

    async def newer(env: Envelope) -> Any:
        return "newer"

    later.on("gm.describe", newer)
    reg.close()  # again, long after: harmless
    await first.close()
    assert await n.ask("gm.describe") == "newer"


async def test_a_failed_task_is_logged_and_recorded_and_the_process_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    scope, crashed = root()
    role = scope.child("leader")
    marked: list[str] = []

    async def dispatch() -> None:
        raise KeyError("status")

    async def mark_failed(exc: Exception) -> None:
        marked.append(repr(exc))

    with caplog.at_level(logging.ERROR, logger="snooze.scope"):
        task = role.spawn("dispatch-t1", dispatch(), on_error=mark_failed)
        assert task is not None
        await task
    assert marked == ["KeyError('status')"] and role.failures == 1
    assert scope.failures == 1, "counted for the process too (getStatistics: taskFailures)"
    assert crashed == [], "a request's task never stops the process"
    assert "dispatch-t1" in caplog.text and "goes on" in caplog.text
    assert role.task_names() == []


async def test_a_failure_recording_its_failure_is_logged_too() -> None:
    scope, crashed = root()

    def broken(exc: Exception) -> None:
        raise RuntimeError("cannot write either")

    async def fail() -> None:
        raise ValueError("bad record")

    task = scope.spawn("t", fail(), on_error=broken)
    assert task is not None
    await task
    assert crashed == [] and scope.failures == 1


async def test_a_critical_task_that_fails_stops_the_process_even_from_a_role() -> None:
    scope, crashed = root()
    role = scope.child("manager")

    async def join_loop() -> None:
        raise RuntimeError("bug")

    task = role.spawn("manager.join", join_loop(), critical=True)
    assert task is not None
    with pytest.raises(RuntimeError):
        await task
    await asyncio.sleep(0)
    assert [(name, str(exc)) for name, exc in crashed] == [("manager.join", "bug")]


async def test_close_cancels_tasks_drains_the_ones_asked_and_gives_up_on_hung_ones() -> None:
    scope, _ = root(grace=0.2)
    finished: list[str] = []
    release = asyncio.Event()

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def run_to_the_end() -> None:
        await release.wait()
        finished.append("drained")

    done_at_last = asyncio.Event()

    async def deaf() -> None:
        while not done_at_last.is_set():
            try:
                await done_at_last.wait()
            except asyncio.CancelledError:
                continue  # a buggy task that ignores cancellation

    loop_task = scope.spawn("loop", forever())
    scope.spawn("run", run_to_the_end(), drain=True)
    deaf_task = scope.spawn("deaf", deaf())
    assert loop_task is not None and deaf_task is not None
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.05, release.set)
    await asyncio.wait_for(scope.close(), 2)  # bounded although "deaf" never ends
    assert loop_task.cancelled() and finished == ["drained"]
    assert not deaf_task.done(), "abandoned, not waited for"
    done_at_last.set()
    await deaf_task


async def test_a_closed_scope_starts_nothing_and_its_periodic_tasks_stop() -> None:
    scope, _ = root()
    ticks: list[int] = []
    ticked = asyncio.Event()

    async def tick() -> None:
        ticks.append(1)
        ticked.set()

    scope.every("tick", lambda: 0.01, tick, wait_first=True)
    assert ticks == [], "wait_first: the first call waits one interval"
    await asyncio.wait_for(ticked.wait(), 5)
    await scope.close()
    count = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == count and scope.task_names() == []

    async def late() -> None:
        ticks.append(2)

    assert scope.spawn("late", late()) is None
    await asyncio.sleep(0)
    assert 2 not in ticks


async def test_closing_the_process_scope_closes_its_roles() -> None:
    scope, _ = root()
    role = scope.child("leader")
    role.on("gl.hierarchy", answer)
    task = role.spawn("leader.heartbeat", asyncio.sleep(3600))
    assert task is not None
    await scope.close()
    assert role.closed and task.cancelled()
