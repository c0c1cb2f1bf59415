"""snooze.events against a real ZooKeeper: every event written once, in the order emitted, also
with flushes racing the log's own task; a feed delivers them in order to each subscriber from
where it asked; the log is trimmed to its newest events."""

from __future__ import annotations

import asyncio

import pytest

from snooze.coordination import Coordinator
from snooze.events import EventFeed, EventKind, EventLog, trim

pytestmark = [pytest.mark.integration]


async def test_racing_flushes_write_each_event_once_in_order_and_a_feed_follows(coord: Coordinator) -> None:
    log = EventLog(coord, "gm-1", lambda: 3)
    feed = EventFeed(coord)
    await feed.start()
    early = feed.subscribe(feed.last)
    writer = asyncio.create_task(log.run())
    follower = asyncio.create_task(feed.run())
    try:
        async def burst(base: int) -> None:
            for n in range(100):
                log.emit(EventKind.VIRTUAL_MACHINE_STATE, virtualMachineId=f"vm-{base + n}", n=base + n)
                if n % 7 == 0:
                    await log.flush()  # as a handler's flush_events, racing the writer task
                await asyncio.sleep(0)

        await asyncio.gather(*(burst(b) for b in (0, 1000, 2000)))
        await log.flush()
        events = await feed.read_after(-1)
        assert len(events) == 300 and log.written == 300 and not log.queue
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert all(e.source == "gm-1" and e.epoch == 3 and e.kind is EventKind.VIRTUAL_MACHINE_STATE for e in events)
        for base in (0, 1000, 2000):  # each burst's events in the order it emitted them
            mine = [e.data["n"] for e in events if base <= e.data["n"] < base + 100]
            assert mine == list(range(base, base + 100))
        # The feed delivers the same, in order, to a subscriber from the start, and to one that
        # asked from the middle only what follows.
        middle = feed.subscribe(events[149].seq)
        got = [await asyncio.wait_for(early.get(), 10) for _ in range(300)]
        assert [e.seq for e in got if e is not None] == [e.seq for e in events]
        log.emit(EventKind.HOST_WOKEN, localControllerId="lc-9")
        seen = []
        while not seen or seen[-1].kind is not EventKind.HOST_WOKEN:
            ev = await asyncio.wait_for(middle.get(), 10)
            assert ev is not None
            seen.append(ev)
        assert all(e.seq > events[149].seq for e in seen) and [e.seq for e in seen] == sorted({e.seq for e in seen})
        assert seen[-1].seq > events[-1].seq
        # Trimmed to the newest 50.
        assert await trim(coord, keep=50) == 251
        kept = await feed.read_after(-1)
        assert len(kept) == 50 and kept[-1].kind is EventKind.HOST_WOKEN
    finally:
        writer.cancel()
        follower.cancel()
        await asyncio.gather(writer, follower, return_exceptions=True)
