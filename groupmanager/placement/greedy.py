"""The item-at-a-time policies: the original round-robin and first-fit, and best-fit.

Each takes the batch's units one by one (in batch order, or largest first when asked) and
scores the feasible hosts for that unit alone. They are the original Snooze behaviour and
the baselines the dot-product packer is measured against.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from .batch import Batch, BatchPolicy
from .capacity import norm_function, reference_capacity, utilisation
from .filters import Filter
from .state import Slot, Unit
from .types import Thresholds


def _unit_order(
    units: list[Unit],
    decreasing: bool,
    norm: Callable[[Sequence[float]], float],
    scale: Sequence[float],
) -> list[Unit]:
    if not decreasing:
        return units
    return sorted(
        units,
        key=lambda u: (
            -norm([d / s if s > 0 else 0.0 for d, s in zip(u.demand, scale, strict=True)])
        ),
    )


class _ItemPolicy(BatchPolicy):
    def __init__(
        self,
        *,
        thresholds: Thresholds | None = None,
        sort_norm: str = "L1",
        decreasing: bool = False,
        wake_passive: bool = True,
        filters: Sequence[Filter] | None = None,
    ) -> None:
        super().__init__(thresholds=thresholds, wake_passive=wake_passive, filters=filters)
        self.norm = norm_function(sort_norm)
        self.decreasing = decreasing

    def place_free(self, batch: Batch, units: list[Unit]) -> list[Unit]:
        scale = reference_capacity([s.view for s in batch.slots], batch.thresholds)
        tiers = [self.order_hosts(batch, batch.powered), self.order_hosts(batch, batch.wakeable)]
        leftover = []
        for unit in _unit_order(units, self.decreasing, self.norm, scale):
            for tier in tiers:
                slot = self.choose(batch, unit, tier)
                if slot is not None:
                    batch.commit(unit, slot)
                    break
            else:
                leftover.append(unit)
        return leftover

    def order_hosts(self, batch: Batch, slots: list[Slot]) -> list[Slot]:
        return slots

    def choose(self, batch: Batch, unit: Unit, slots: list[Slot]) -> Slot | None:
        raise NotImplementedError


def _fits(unit: Unit, slot: Slot) -> bool:
    d = unit.demand
    r = slot.room
    return d[0] <= r[0] and d[1] <= r[1] and d[2] <= r[2] and d[3] <= r[3]


class FirstFit(_ItemPolicy):
    """Original Snooze first-fit: hosts sorted once by the norm of their utilisation,
    most loaded first, and each VM goes to the first host that can take it."""

    name = "first-fit"

    def order_hosts(self, batch: Batch, slots: list[Slot]) -> list[Slot]:
        return sorted(slots, key=lambda s: (-self.norm(utilisation(s.view)), s.index))

    def choose(self, batch: Batch, unit: Unit, slots: list[Slot]) -> Slot | None:
        for slot in slots:
            # Capacity is the usual reason to move on, so it is tested before the full stack.
            if _fits(unit, slot) and batch.feasible(unit, slot):
                return slot
        return None


class BestFit(_ItemPolicy):
    """Each VM goes to the feasible host it leaves with the least normalised room."""

    name = "best-fit"

    def place_free(self, batch: Batch, units: list[Unit]) -> list[Unit]:
        self._scale = reference_capacity([s.view for s in batch.slots], batch.thresholds)
        return super().place_free(batch, units)

    def choose(self, batch: Batch, unit: Unit, slots: list[Slot]) -> Slot | None:
        best: Slot | None = None
        best_left = float("inf")
        inv = [1.0 / s if s > 0 else 0.0 for s in self._scale]
        d = unit.demand
        for slot in slots:
            if not (_fits(unit, slot) and batch.feasible(unit, slot)):
                continue
            left = 0.0
            for i in range(4):
                r = slot.room[i] - d[i]
                if r != float("inf"):
                    left += r * inv[i]
            if left < best_left:
                best, best_left = slot, left
        return best


class RoundRobin(_ItemPolicy):
    """Original Snooze round-robin: hosts in id order, each VM on the next host that fits.

    The cursor (the last host used) survives between calls, so successive requests spread.
    """

    name = "round-robin"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._last: str | None = None

    def order_hosts(self, batch: Batch, slots: list[Slot]) -> list[Slot]:
        return sorted(slots, key=lambda s: (s.id, s.index))

    def choose(self, batch: Batch, unit: Unit, slots: list[Slot]) -> Slot | None:
        if not slots:
            return None
        start = 0
        if self._last is not None:
            start = bisect.bisect_right([s.id for s in slots], self._last) % len(slots)
        for k in range(len(slots)):
            slot = slots[(start + k) % len(slots)]
            if _fits(unit, slot) and batch.feasible(unit, slot):
                self._last = slot.id
                return slot
        return None
