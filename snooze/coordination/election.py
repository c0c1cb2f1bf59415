"""Leader election on a kazoo Lock, with an epoch per term and explicit stepping down.

The lock's blocking ``acquire`` runs on a worker thread; everything else runs on the loop.
Winning bumps the epoch (``Coordinator.bump_epoch``) before the leader role starts, so every
order of the new term carries a token no earlier leader can have. Losing the session (LOST)
deposes the leader at once; kazoo does not interrupt anyone for us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kazoo.exceptions import CancelledError as KazooCancelled
from kazoo.exceptions import KazooException

from snooze.coordination.zk import CoordinationError, Coordinator, SessionState

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(
        self,
        coordinator: Coordinator,
        identifier: str,
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
    ) -> None:
        self.coord = coordinator
        self.identifier = identifier
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.epoch = 0
        self.is_leader = False
        self._lock = None
        self._deposed = asyncio.Event()
        self._stopping = False
        coordinator.add_listener(self._on_session)

    def _on_session(self, state: SessionState, new_session: bool) -> None:
        # A new session means the old one expired: its lock node is gone even if we never
        # saw LOST (e.g. the process was frozen). Either way, step down now.
        if state == SessionState.LOST or (state == SessionState.CONNECTED and new_session):
            self._deposed.set()
            if self._lock is not None and not self.is_leader:
                with contextlib.suppress(Exception):
                    self._lock.cancel()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self.coord.wait_connected()
            self._deposed.clear()
            lock = self.coord.client.Lock(self.coord.path("election"), self.identifier)
            self._lock = lock
            try:
                acquired = await loop.run_in_executor(None, lock.acquire)
            except (KazooCancelled, KazooException) as exc:
                log.info("election attempt ended: %r", exc)
                await asyncio.sleep(0.2)
                continue
            if not acquired or self._deposed.is_set():
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(None, lock.release)
                continue
            try:
                self.epoch = await self.coord.bump_epoch()
            except CoordinationError as exc:
                log.warning("won the lock but could not bump the epoch: %s", exc)
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(None, lock.release)
                continue
            self.is_leader = True
            log.info("elected group leader, epoch %d", self.epoch)
            try:
                await self.on_elected(self.epoch)
                await self._deposed.wait()
            finally:
                self.is_leader = False
                log.warning("stepping down as group leader (epoch %d)", self.epoch)
                await self.on_deposed()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(loop.run_in_executor(None, lock.release), 3)

    async def stop(self) -> None:
        self._stopping = True
        self._deposed.set()
        if self._lock is not None:
            with contextlib.suppress(Exception):
                self._lock.cancel()
