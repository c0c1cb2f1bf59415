"""Freshness of authenticated messages: each is accepted once, and only within a time window.

The HMAC proves who wrote a message, not when: anyone on the path can capture one and send it
again. Every envelope therefore carries its sender's wall-clock timestamp and a random nonce,
and a receiver's ``ReplayGuard`` accepts a message only if

- its timestamp is within ``window`` seconds of the receiver's clock (either way: a message
  from the future is as suspect as an old one, and shows a clock skew larger than the window),
- its nonce has not been accepted within the window, and
- (heartbeats, ``monotonic=True``) it is not older than the last one accepted from its sender,
  so a stale heartbeat can never make a dead peer look alive again.

A nonce only needs remembering while its message could still pass the timestamp check: it is
forgotten ``window`` seconds after its timestamp. Memory is bounded by ``capacity`` entries
even under a flood of authentic messages: when full, the oldest nonces are dropped and the
guard raises its *floor*, refusing anything not newer than what it dropped. It then refuses
some fresh-but-older messages (counted as stale) rather than ever accepting a replay.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable

from snooze.protocol.envelope import (
    BadSignature,
    Envelope,
    OutOfOrder,
    ProtocolError,
    Replayed,
    StaleTimestamp,
)
from snooze.ratelimit import RateLimitedLog

DEFAULT_WINDOW = 30.0
DEFAULT_CAPACITY = 200_000  # about 30 MiB at most; a 1,000-host group sends ~700 messages/s


class ReplayGuard:
    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        *,
        capacity: int = DEFAULT_CAPACITY,
        monotonic: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not window > 0:
            raise ValueError(f"[cluster] replay_window must be > 0, got {window!r}")
        if capacity < 1:
            raise ValueError("replay cache capacity must be >= 1")
        self.window = float(window)
        self.capacity = capacity
        self.monotonic = monotonic
        self.clock = clock
        self._seen: dict[bytes, float] = {}  # nonce -> the message's timestamp
        self._by_time: list[tuple[float, bytes]] = []  # a heap over the same entries
        self._floor = float("-inf")  # nothing at or below this is accepted (cache overflowed)
        self._last: dict[str, float] = {}  # sender -> newest accepted timestamp (monotonic)
        self._last_pruned = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, env: Envelope) -> None:
        """Accept ``env`` (and remember it) or raise the ProtocolError that says why not."""
        now = self.clock()
        self._expire(now)
        ts = env.timestamp
        if ts > now + self.window:
            raise StaleTimestamp(
                f"timestamp {ts - now:.1f}s ahead of this clock (window {self.window:g}s): clock skew?"
            )
        if ts < now - self.window:
            raise StaleTimestamp(f"timestamp {now - ts:.1f}s old (window {self.window:g}s)")
        if ts <= self._floor:
            raise StaleTimestamp("older than the replay cache can vouch for (it overflowed)")
        if env.nonce in self._seen:
            raise Replayed("this message was already accepted (same nonce)")
        if self.monotonic and ts < self._last.get(env.sender, float("-inf")):
            raise OutOfOrder(f"older than the last message accepted from {env.sender}")
        self._seen[env.nonce] = ts
        heapq.heappush(self._by_time, (ts, env.nonce))
        if self.monotonic:
            self._last[env.sender] = ts
        while len(self._seen) > self.capacity:
            old_ts, old_nonce = heapq.heappop(self._by_time)
            del self._seen[old_nonce]
            self._floor = max(self._floor, old_ts)

    def _expire(self, now: float) -> None:
        # A nonce whose timestamp left the window can only come back in a message the
        # timestamp check refuses anyway.
        limit = now - self.window
        heap = self._by_time
        while heap and heap[0][0] < limit:
            _, nonce = heapq.heappop(heap)
            del self._seen[nonce]
        if len(self._last) > 2 * self._last_pruned + 16:
            # A sender's entry below the window (or the floor) cannot refuse anything the
            # timestamp checks would not; dropping those bounds this map by the nonce cache.
            cut = max(limit, self._floor)
            self._last = {s: t for s, t in self._last.items() if t > cut}
            self._last_pruned = len(self._last)


class RejectionLog:
    """Logs refused messages at most once per ``interval`` per reason, with the number left
    unsaid, so a flood of replays cannot flood the log."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = RateLimitedLog(logger, interval, clock, unsaid="{n} more refused for this reason since the last report")

    def __call__(self, exc: ProtocolError, source: str) -> bool:
        """Log ``exc`` from ``source`` unless one of its reason was logged lately; True if logged.

        A bad HMAC is, in practice, a peer configured with another cluster key: say so, in
        words an operator can act on, rather than as a protocol detail."""
        if isinstance(exc, BadSignature):
            return self._log(exc.reason, "cluster key mismatch from %s: its messages are not signed with our key "
                             "(check [cluster] key / SNOOZE_CLUSTER_KEY on both)", source)
        what = "replayed" if isinstance(exc, Replayed) else exc.reason.replace("_", " ")
        return self._log(exc.reason, "%s message from %s refused: %s", what, source, exc)
