"""The group leader publishes the cluster's event log (snooze.events) to RabbitMQ, as the
original published its notifications: a durable topic exchange (``[events] amqp_exchange``),
each event a persistent JSON message whose routing key is its kind's topic (``vm.state``,
``groupleader.elected`` …), its ``message_id`` the event's id, ``type`` its kind.

In the log's order, at least once: an event counts as published once the broker confirmed it,
and the id of the last one published is kept in ZooKeeper (``events-published``), so a new
leader goes on where the last one stopped. A leader that dies between the broker's confirmation
and that write makes the next one publish a few again: consumers deduplicate by
``message_id``. While the broker is away the log keeps the events (10,000 at most) and the
leader retries, with a growing pause.
"""

from __future__ import annotations

import asyncio
import logging

from snooze.amqp import AmqpError, AmqpPublisher
from snooze.coordination import CoordinationError, Coordinator
from snooze.events import EventFeed, topic

__all__ = ["EventPublisher"]

log = logging.getLogger(__name__)

BATCH = 500


class EventPublisher:
    def __init__(self, coord: Coordinator, url: str, exchange: str) -> None:
        self.coord = coord
        self.feed = EventFeed(coord)
        self.amqp = AmqpPublisher(url, exchange)
        self.cursor_path = coord.path("events-published")
        self.published = 0

    async def _cursor(self) -> int:
        value = await self.coord.get_json(self.cursor_path)
        return int(value) if isinstance(value, int) else -1

    async def _save(self, seq: int) -> None:
        data = str(seq).encode()

        def write() -> None:
            if self.coord.client.exists(self.cursor_path):
                self.coord.client.set(self.cursor_path, data)
            else:
                self.coord.client.create(self.cursor_path, data, makepath=True)

        await self.coord.call(write)

    async def run(self) -> None:
        """Publish from the cursor on, then whatever the log gets (a task of the leader role)."""
        pause = 0.5
        try:
            while True:
                try:
                    await self.feed.start()  # the children watch wakes the loop below
                    cursor = await self._cursor()
                    while True:
                        self.feed.changed.clear()  # before the read: a change after it wakes the wait below
                        events = await self.feed.read_after(cursor, BATCH)
                        for ev in events:
                            await self.amqp.publish(topic(ev.kind), ev.to_json(), message_id=str(ev.seq), kind=str(ev.kind),
                                                    timestamp=ev.time)
                            cursor = ev.seq
                            self.published += 1
                        if events:
                            await self._save(cursor)
                            pause = 0.5
                            continue
                        await self.feed.changed.wait()
                except (AmqpError, CoordinationError) as exc:
                    log.warning("events not published for now (retrying in %.1fs): %s", pause, exc)
                    await asyncio.sleep(pause)
                    pause = min(30.0, pause * 2)
        finally:
            await self.amqp.close()
