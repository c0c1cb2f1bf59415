"""Leader election on a kazoo Lock, with an epoch per term and explicit stepping down.

The lock's blocking ``acquire`` runs on a worker thread; everything else runs on the loop.
Winning bumps the epoch (``Coordinator.bump_epoch``) before the leader role starts, so every
order of the new term carries a token no earlier leader can have.

Leadership follows kazoo's rule for the session state, and kazoo interrupts no one for us:

* SUSPENDED (the connection is gone, the session may live on): the leader stops *presenting*
  itself at once (``presenting`` is false: no "I am the leader" to anyone, no orders that need
  agreement) and starts a local monotonic timer of ``step_down_after`` seconds (the session
  timeout). The same session CONNECTED again before it fires: it leads on, same term, no new
  election. The timer fires first: it steps down fully (``on_deposed``), as ZooKeeper is about
  to expire the session and let another win.
* LOST, or CONNECTED with a new session (the old one expired, even if LOST was never seen): it
  steps down at once; its lock node died with the session.
* ``depose(reason)``: its process heard of a newer term (a newer leader's heartbeat): it steps
  down at once too.

A leader that steps down while cut off cannot delete its lock node. With the same session back
(ZooKeeper down and up again keeps sessions), that node would still hold the lock for a process
that no longer leads, and every other contender would wait behind it for ever: so the abandoned
lock is released (after ``cleanup``, which deletes what the leader owned) before this process
contends again.

With ``should_yield``, a winner may step aside before its term begins: it is asked, with the
other contenders' identifiers, whether one of them should lead instead (a group manager yields
to one that manages fewer local controllers); if so it releases the lock and queues again, last.
It yields at most once within ``2 × step_down_after``, so a round where every contender yields
still ends with a leader, one queue turn later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kazoo.exceptions import BadVersionError, KazooException, NoNodeError, SessionExpiredError
from kazoo.exceptions import CancelledError as KazooCancelled

from snooze.coordination.zk import CoordinationError, Coordinator, SessionState

__all__ = ["LeaderElection", "delete_own"]

log = logging.getLogger(__name__)

# How long one release of the lock may take before it counts as failed (it is retried).
RELEASE_TIMEOUT = 3.0


async def delete_own(coord: Coordinator, path: str) -> None:
    """Delete the ephemeral znode ``path`` if this session owns it (a successor's is kept).

    A leader that stepped down while cut off uses this once the session is back: its own
    ``leader`` znode goes, and a newer leader's, written meanwhile, never does."""

    def delete() -> None:
        client = coord.client
        stat = client.exists(path)
        session = client.client_id[0] if client.client_id else None
        if stat is None or session is None or stat.ephemeralOwner != session:
            return
        with contextlib.suppress(NoNodeError, BadVersionError):
            client.delete(path, version=stat.version)

    await coord.call(delete, timeout=RELEASE_TIMEOUT)


class LeaderElection:
    def __init__(
        self,
        coordinator: Coordinator,
        identifier: str,
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        step_down_after: float | None = None,
        should_yield: Callable[[list[str]], Awaitable[bool]] | None = None,
    ) -> None:
        self.coord = coordinator
        self.identifier = identifier
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.cleanup = cleanup
        #: Seconds of SUSPENDED after which the leader steps down (the session timeout).
        self.step_down_after = coordinator.session_timeout if step_down_after is None else step_down_after
        self.epoch = 0
        #: Holds the lock and runs its term (also while SUSPENDED); see ``presenting``.
        self.is_leader = False
        #: When the leader's session was last SUSPENDED (monotonic), while it is.
        self.suspended_since: float | None = None
        self.terms = 0  # terms won by this process (tests and statistics)
        self.should_yield = should_yield
        self.yields = 0  # times this process stepped aside for another contender
        self._yielded_at: float | None = None
        self._lock: Any = None
        self._abandoned: Any = None  # a lock stepped down from while cut off, still to release
        self._deposed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = False
        coordinator.add_listener(self._on_session)

    @property
    def presenting(self) -> bool:
        """Leads and may say so: holds the lock, its term not ended, and the session CONNECTED."""
        return self.is_leader and not self._deposed.is_set() and self.coord.connected

    # -- the session ---------------------------------------------------------------------
    def _on_session(self, state: SessionState, new_session: bool) -> None:
        # Runs on the loop (the coordinator hands kazoo's events over), synchronously with the
        # state change: ``presenting`` is false from the same instant the state is.
        if state in (SessionState.LOST, SessionState.CLOSED) or (state == SessionState.CONNECTED and new_session):
            # A new session means the old one expired: its lock node is gone even if we never
            # saw LOST (e.g. the process was frozen). Either way, step down now.
            self._cancel_timer()
            self.suspended_since = None
            if self.is_leader and not self._deposed.is_set():
                log.warning("ZooKeeper session %s: stepping down as group leader (epoch %d) at once",
                            "expired" if state != SessionState.CLOSED else "closed", self.epoch)
            self._deposed.set()
            if self._lock is not None and not self.is_leader:
                with contextlib.suppress(Exception):
                    self._lock.cancel()
        elif state == SessionState.SUSPENDED:
            if self.is_leader and not self._deposed.is_set() and self._timer is None:
                self.suspended_since = time.monotonic()
                log.warning("ZooKeeper session suspended: no longer presenting as group leader (epoch %d); "
                            "stepping down in %.1fs unless the same session comes back", self.epoch, self.step_down_after)
                self._timer = asyncio.get_running_loop().call_later(self.step_down_after, self._suspension_expired)
        elif state == SessionState.CONNECTED and self._timer is not None:
            gone = time.monotonic() - (self.suspended_since or time.monotonic())
            self._cancel_timer()
            self.suspended_since = None
            log.warning("ZooKeeper session back after %.1fs: leading on as group leader (epoch %d)", gone, self.epoch)

    def _suspension_expired(self) -> None:
        self._timer = None
        if not self.is_leader or self.coord.connected:
            return
        log.warning("ZooKeeper session suspended for %.1fs: stepping down as group leader (epoch %d) "
                    "before ZooKeeper can expire the session and elect another", self.step_down_after, self.epoch)
        self._deposed.set()

    def depose(self, reason: str) -> None:
        """End the current term now (a leader of a newer term was heard from)."""
        if self.is_leader and not self._deposed.is_set():
            log.warning("stepping down as group leader (epoch %d): %s", self.epoch, reason)
            self._deposed.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the lock ------------------------------------------------------------------------
    async def _release(self, lock: Any) -> bool:
        """Release ``lock``; False if that could not be done (it is kept to release later)."""
        loop = asyncio.get_running_loop()
        if self.coord.connected:
            try:
                await asyncio.wait_for(loop.run_in_executor(None, lock.release), RELEASE_TIMEOUT)
                return True
            except SessionExpiredError:
                return True  # its node died with the session
            except (KazooException, TimeoutError) as exc:
                log.info("could not release the election lock yet: %r", exc)
        # Cut off (or failing): asking now would block a thread until ZooKeeper is back.
        self._abandoned = lock
        return False

    async def _release_abandoned(self) -> bool:
        lock = self._abandoned
        if lock is None:
            return True
        if self.cleanup is not None:
            try:
                await self.cleanup()
            except CoordinationError as exc:
                log.info("cleaning up after the last term failed: %s", exc)
                return False
        if not await self._release(lock):
            return False
        self._abandoned = None
        log.info("released the election lock abandoned when stepping down")
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self.coord.wait_connected()
            if self._stopping:
                break
            if not await self._release_abandoned():
                await asyncio.sleep(0.2)
                continue
            self._deposed.clear()
            lock = self.coord.client.Lock(self.coord.path("election"), self.identifier)
            self._lock = lock
            try:
                acquired = await loop.run_in_executor(None, lock.acquire)
            except (KazooCancelled, KazooException) as exc:
                log.info("election attempt ended: %r", exc)
                await asyncio.sleep(0.2)
                continue
            if not acquired or self._deposed.is_set() or not self.coord.connected:
                await self._release(lock)
                continue
            if await self._yield(lock):
                await self._release(lock)
                continue
            try:
                self.epoch = await self.coord.bump_epoch()
            except CoordinationError as exc:
                log.warning("won the lock but could not bump the epoch: %s", exc)
                await self._release(lock)
                continue
            if self._deposed.is_set():  # the session changed while the epoch was bumped
                await self._release(lock)
                continue
            self.is_leader = True
            self.terms += 1
            log.info("elected group leader, epoch %d", self.epoch)
            try:
                await self.on_elected(self.epoch)
                await self._deposed.wait()
            finally:
                self.is_leader = False
                self._cancel_timer()
                self.suspended_since = None
                log.warning("stepping down as group leader (epoch %d)", self.epoch)
                try:
                    await self.on_deposed()
                finally:
                    await self._release(lock)

    async def _yield(self, lock: Any) -> bool:
        """True when this winner steps aside for another contender (see the module's doc)."""
        if self.should_yield is None:
            return False
        now = time.monotonic()
        if self._yielded_at is not None and now - self._yielded_at < 2 * self.step_down_after:
            return False
        loop = asyncio.get_running_loop()
        try:
            contenders = await asyncio.wait_for(loop.run_in_executor(None, lock.contenders), RELEASE_TIMEOUT)
            others = [c for c in contenders if c and c != self.identifier]
            if not others or not await self.should_yield(others):
                return False
        except (KazooException, CoordinationError, TimeoutError) as exc:
            log.info("could not weigh the other contenders (%r); taking the lead", exc)
            return False
        self._yielded_at = now
        self.yields += 1
        log.info("won the election lock but stepping aside for another contender (%s)", ", ".join(others))
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._cancel_timer()
        self._deposed.set()
        if self._lock is not None:
            with contextlib.suppress(Exception):
                self._lock.cancel()
