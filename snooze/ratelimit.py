"""Logging that a flood cannot turn into a flood of log lines.

``RateLimitedLog`` writes at most one warning per reason per interval and says, in the next
line it writes for that reason, how many it left unsaid. The HTTP front (slow, greedy,
malformed clients) and the message checks (replays, stale timestamps) both use it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """One warning per reason per ``interval``, with how many were left unsaid since."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 unsaid: str = "and {n} more since the last report") -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.unsaid = unsaid
        self._next: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}

    def __call__(self, reason: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless ``reason`` was logged within the interval; True if logged."""
        now = self.clock()
        if now < self._next.get(reason, -math.inf):
            self._unsaid[reason] = self._unsaid.get(reason, 0) + 1
            return False
        self._next[reason] = now + self.interval
        more = self._unsaid.pop(reason, 0)
        suffix = f" ({self.unsaid.format(n=more)})" if more else ""
        self.logger.warning(message + "%s", *args, suffix)
        return True
