"""The cluster's events as one typed, ordered stream (the original's notifications), kept in
ZooKeeper: ``events/e-NNNNNNNNNN``, sequential znodes, so every event has one place in one
order (its sequence number is its id) wherever it happened, and a reader that was away resumes
where it stopped (SSE's ``Last-Event-ID``) without missing one.

Writers (``EventLog``, one per process) never wait for ZooKeeper: ``emit`` queues, and a task
writes what is queued every ``FLUSH_INTERVAL`` as one transaction of sequential creates (a
burst of a thousand VM state changes is a few transactions, not a thousand round trips). While
ZooKeeper is away the queue holds up to ``MAX_QUEUE`` events (the oldest are dropped beyond,
and counted). The group leader keeps the log at most ``RETENTION`` events long.

Readers (``EventFeed``, in the bootstrap) follow the log with a children watch and hand each
new event, in order, to every subscriber's queue; a subscriber that falls ``MAX_BEHIND``
events behind is cut off (its client reconnects with ``Last-Event-ID`` and reads the rest from
the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from snooze.codes import EventKind
from snooze.coordination import CoordinationError, Coordinator

__all__ = ["Event", "EventFeed", "EventKind", "EventLog", "Subscription", "topic"]

log = logging.getLogger(__name__)

PREFIX = "e-"
FLUSH_INTERVAL = 0.1
MAX_QUEUE = 10_000
#: Events a transaction creates at most (ZooKeeper's 1 MiB request bound, with room).
BATCH = 500
RETENTION = 10_000
MAX_BEHIND = 5_000


def topic(kind: EventKind) -> str:
    """Its routing key on a topic exchange: ``groupleader.elected``, ``vm.state`` …"""
    return _TOPICS[kind]


_TOPICS = {
    EventKind.GROUP_LEADER_ELECTED: "groupleader.elected",
    EventKind.GROUP_MANAGER_JOINED: "groupmanager.joined",
    EventKind.GROUP_MANAGER_FAILED: "groupmanager.failed",
    EventKind.LOCAL_CONTROLLER_JOINED: "localcontroller.joined",
    EventKind.LOCAL_CONTROLLER_FAILED: "localcontroller.failed",
    EventKind.LOCAL_CONTROLLER_ASSIGNED: "localcontroller.assigned",
    EventKind.VIRTUAL_MACHINE_STATE: "vm.state",
    EventKind.MIGRATION_STARTED: "vm.migration.started",
    EventKind.MIGRATION_FINISHED: "vm.migration.finished",
    EventKind.MIGRATION_FAILED: "vm.migration.failed",
    EventKind.HOST_POWERED_DOWN: "host.powereddown",
    EventKind.HOST_WOKEN: "host.woken",
    EventKind.RECONFIGURATION: "groupmanager.reconfiguration",
}


@dataclass(frozen=True)
class Event:
    kind: EventKind
    source: str  # the id of the process it happened in
    epoch: int  # the group leader's term it saw
    time: float
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = -1  # its place in the log (-1: not written yet)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.seq, "kind": str(self.kind), "source": self.source, "epoch": self.epoch, "time": self.time,
                "data": self.data}

    def record(self) -> bytes:
        return json.dumps({k: v for k, v in self.to_json().items() if k != "id"}, sort_keys=True).encode()

    @classmethod
    def from_record(cls, seq: int, raw: bytes) -> Event:
        d = json.loads(raw)
        return cls(EventKind(d["kind"]), str(d["source"]), int(d["epoch"]), float(d["time"]), dict(d.get("data") or {}), seq)


def seq_of(name: str) -> int | None:
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    return int(name[len(PREFIX):])


class EventLog:
    """One process's writer: ``emit`` now, written within ``FLUSH_INTERVAL`` (``run`` is its task)."""

    def __init__(self, coord: Coordinator, source: str, epoch: Callable[[], int]) -> None:
        self.coord = coord
        self.source = source
        self.epoch = epoch
        self.dir = coord.path("events")
        self.queue: deque[Event] = deque()
        self.written = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()

    def emit(self, kind: EventKind, **data: Any) -> None:
        if len(self.queue) >= MAX_QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(Event(kind, self.source, self.epoch(), time.time(), data))
        self._wake.set()

    def _write(self, batch: list[Event]) -> None:
        self.coord.client.ensure_path(self.dir)
        tx = self.coord.client.transaction()
        for ev in batch:
            tx.create(f"{self.dir}/{PREFIX}", ev.record(), sequence=True)
        results = tx.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise CoordinationError(f"events not written: {failed[0]!r}")

    async def flush(self) -> int:
        """Write what is queued (in order); returns how many. CoordinationError leaves them queued.
        One flush at a time (the log's task and a caller's ``flush_events``): two would write a
        batch twice and take the next one off the queue unwritten."""
        done = 0
        async with self._flushing:
            while self.queue:
                batch = list(self.queue)[:BATCH]
                await self.coord.call(self._write, batch)
                for _ in batch:
                    self.queue.popleft()
                done += len(batch)
                self.written += len(batch)
        return done

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_INTERVAL)  # what else happens meanwhile goes in the same write
            try:
                await self.flush()
            except CoordinationError as exc:
                log.debug("events kept for later (%d queued): %s", len(self.queue), exc)
                await asyncio.sleep(1.0)
                self._wake.set()


async def trim(coord: Coordinator, keep: int = RETENTION) -> int:
    """Delete the oldest events beyond the newest ``keep``; returns how many."""
    path = coord.path("events")

    def do() -> int:
        try:
            names = coord.client.get_children(path)
        except Exception:  # noqa: BLE001  (NoNode: no event yet)
            return 0
        ordered = sorted((s, n) for n in names if (s := seq_of(n)) is not None)
        old = ordered[: max(0, len(ordered) - keep)]
        for i in range(0, len(old), BATCH):
            tx = coord.client.transaction()
            for _, name in old[i:i + BATCH]:
                tx.delete(f"{path}/{name}")
            tx.commit()
        return len(old)

    return await coord.call(do, timeout=60)


class Subscription:
    """One reader's queue: events in order; ``None`` once it was cut off (fell behind)."""

    def __init__(self, feed: EventFeed, after: int) -> None:
        self.feed = feed
        self.after = after
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def close(self) -> None:
        self.feed.subscribers.discard(self)

    async def get(self) -> Event | None:
        return await self.queue.get()


class EventFeed:
    """The log followed: new events, in order, to every subscriber."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.dir = coord.path("events")
        self.last = -1  # the newest event read
        self.subscribers: set[Subscription] = set()
        #: Set by the children watch when the log changed (cleared by whoever reads after it).
        self.changed = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        """Follow the log from its current end (call once ZooKeeper answers)."""
        if self._started:
            return
        names = await self.coord.call(self._names)
        self.last = max((s for n in names if (s := seq_of(n)) is not None), default=-1)
        await self.coord.watch_children(self.dir, lambda _names: self.changed.set())
        self._started = True

    def _names(self) -> list[str]:
        self.coord.client.ensure_path(self.dir)
        return list(self.coord.client.get_children(self.dir))

    async def read_after(self, after: int, limit: int = 10_000) -> list[Event]:
        """The events of the log after ``after``, in order (at most ``limit``)."""

        def do() -> list[Event]:
            names = sorted((s, n) for n in self._names() if (s := seq_of(n)) is not None and s > after)[:limit]
            pending = [(s, self.coord.client.get_async(f"{self.dir}/{n}")) for s, n in names]
            out = []
            for s, res in pending:
                with contextlib.suppress(Exception):  # trimmed meanwhile
                    data, _ = res.get(timeout=10)
                    out.append(Event.from_record(s, data))
            return out

        return await self.coord.call(do, timeout=30)

    def subscribe(self, after: int) -> Subscription:
        sub = Subscription(self, after)
        self.subscribers.add(sub)
        return sub

    def _deliver(self, events: Iterable[Event]) -> None:
        for ev in events:
            for sub in list(self.subscribers):
                if ev.seq <= sub.after:
                    continue
                if sub.queue.qsize() >= MAX_BEHIND:
                    sub.queue.put_nowait(None)
                    self.subscribers.discard(sub)
                    continue
                sub.queue.put_nowait(ev)
                sub.after = ev.seq

    async def run(self) -> None:
        """Read what the watch says is new and deliver it (a task of the bootstrap)."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            try:
                events = await self.read_after(self.last)
            except CoordinationError as exc:
                log.debug("events not read: %s", exc)
                await asyncio.sleep(1.0)
                self.changed.set()
                continue
            if events:
                self.last = events[-1].seq
                self._deliver(events)
            await asyncio.sleep(FLUSH_INTERVAL / 2)
