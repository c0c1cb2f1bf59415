"""The group managers a group leader knows: their descriptions, last summaries and liveness.

The leader role keeps this table up to date (joins, summaries, heartbeats, ZooKeeper
membership); the submissions read it to choose where VMs go and whom to send them to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snooze.models import GroupManagerDescription

__all__ = ["GroupManagerRecord", "GroupManagers"]


@dataclass
class GroupManagerRecord:
    description: GroupManagerDescription
    summary: dict[str, Any] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    assigned_since_summary: int = 0
    #: Its last answer to a description request (the hierarchy shows it, marked stale, when it
    #: does not answer in time), and when that came (monotonic).
    last_description: dict[str, Any] | None = None
    last_answer: float | None = None


class GroupManagers:
    """Group manager id -> record; a group manager not heard from for ``timeout`` seconds is
    not alive (it stays listed until ZooKeeper says it left)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.records: dict[str, GroupManagerRecord] = {}
        self.timeout = timeout
        self._clock = clock

    def alive(self) -> list[GroupManagerRecord]:
        now = self._clock()
        return [r for r in self.records.values() if now - r.last_seen <= self.timeout]

    def get(self, gm_id: str) -> GroupManagerRecord | None:
        return self.records.get(gm_id)
