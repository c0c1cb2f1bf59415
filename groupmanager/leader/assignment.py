"""Which group manager a joining local controller goes to (the original's assignment policies).

``round-robin`` cycles through the live group managers; ``balanced`` picks the one managing the
fewest local controllers (from the last summaries, plus assignments made since).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar


class _Record(Protocol):
    description: Any
    summary: dict[str, Any]
    assigned_since_summary: int


R = TypeVar("R", bound=_Record)


def choose_group_manager(policy: str, candidates: Sequence[R], cursor: int) -> tuple[R, int]:
    if not candidates:
        raise ValueError("no candidates")
    ordered = sorted(candidates, key=lambda r: r.description.id)
    if policy == "balanced":
        def load(r: R) -> tuple[int, str]:
            return (int(r.summary.get("numberOfLocalControllers", 0)) + r.assigned_since_summary, r.description.id)

        return min(ordered, key=load), cursor
    return ordered[cursor % len(ordered)], cursor + 1
