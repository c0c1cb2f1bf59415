"""The frame every placement policy runs in: units in, plan out, filters and bookkeeping shared.

``BatchPolicy.place`` turns requests into units, handles what no scorer can change (units
that contradict themselves, pinned units), hands the free units to the policy's own
strategy, gives any leftover a last first-fit chance on every feasible host, and explains
whatever is still unplaced. A policy only decides *where*; committing, never overcommitting,
waking PASSIVE hosts and writing rejections happen here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

from .filters import Filter, default_filters, explain, feasible
from .state import Slot, Unit, make_slots, make_units
from .types import (
    DEFAULT_THRESHOLDS,
    HostView,
    Placement,
    Plan,
    PowerState,
    Rejection,
    Thresholds,
    VMRequest,
)


class Batch:
    """The mutable state of one ``place()`` call."""

    def __init__(
        self,
        requests: Sequence[VMRequest],
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        filters: Sequence[Filter],
    ) -> None:
        self.filters = list(filters)
        self.thresholds = thresholds
        self.units, refused = make_units(requests)
        self.slots = make_slots(hosts, thresholds)
        self.by_id: dict[str, Slot] = {}
        for s in self.slots:
            self.by_id.setdefault(s.id, s)
        self.unplaced: dict[str, Rejection] = {
            vm: Rejection(reason, {}) for vm, reason in refused.items()
        }
        self.woken: list[str] = []
        self._explained: dict[tuple[object, ...], Rejection] = {}
        wake = all(getattr(f, "wake_passive", True) for f in self.filters)
        # Powered hosts first; PASSIVE ones only for what powered hosts cannot take.
        self.powered = [
            s for s in self.slots if s.view.alive and s.view.power is not PowerState.PASSIVE
        ]
        self.wakeable = (
            [s for s in self.slots if s.view.alive and s.view.power is PowerState.PASSIVE]
            if wake
            else []
        )

    def feasible(self, unit: Unit, slot: Slot) -> bool:
        return feasible(self.filters, unit, slot)

    def commit(self, unit: Unit, slot: Slot) -> None:
        d = unit.demand
        room = slot.room
        room[0] -= d[0]
        room[1] -= d[1]
        room[2] -= d[2]
        room[3] -= d[3]
        if unit.anti_groups:
            slot.anti_groups.update(unit.anti_groups)
        if slot.received == 0 and slot.view.power is PowerState.PASSIVE:
            self.woken.append(slot.id)
        slot.received += len(unit.requests)
        unit.slot = slot

    def commit_run(self, units: Sequence[Unit], slot: Slot) -> None:
        """Commit identical, unconstrained units in one step (the packer's fast path)."""
        if not units:
            return
        k = len(units)
        d = units[0].demand
        room = slot.room
        room[0] -= d[0] * k
        room[1] -= d[1] * k
        room[2] -= d[2] * k
        room[3] -= d[3] * k
        if slot.received == 0 and slot.view.power is PowerState.PASSIVE:
            self.woken.append(slot.id)
        for u in units:
            u.slot = slot
        slot.received += k

    def reject(self, unit: Unit) -> None:
        # Capacity only shrinks during a batch, so a unit that fits nowhere now fits nowhere
        # later either: identical units share one explanation instead of rescanning every host.
        key = unit.signature() if unit.conflict is None else (id(unit),)
        rejection = self._explained.get(key)
        if rejection is None:
            rejection = explain(self.filters, unit, self.slots)
            self._explained[key] = rejection
        for req in unit.requests:
            self.unplaced[req.id] = Rejection(rejection.reason, dict(rejection.filtered))

    def first_fit(self, unit: Unit) -> Slot | None:
        """Any feasible host, powered ones first: the safety net after a policy's own search."""
        for tier in (self.powered, self.wakeable):
            for slot in tier:
                if self.feasible(unit, slot):
                    return slot
        return None

    def plan(self) -> Plan:
        placements: list[Placement] = []
        for unit in self.units:
            slot = unit.slot
            if slot is not None:
                for req in unit.requests:
                    placements.append(Placement(req.id, slot.id))
        return Plan(placements=placements, unplaced=self.unplaced, wake_up=list(self.woken))


class BatchPolicy:
    """Base of the built-in placement policies; subclasses implement ``place_free``."""

    name = "abstract"

    def __init__(
        self,
        *,
        thresholds: Thresholds | None = None,
        wake_passive: bool = True,
        filters: Sequence[Filter] | None = None,
    ) -> None:
        self.thresholds = thresholds or DEFAULT_THRESHOLDS
        self.filters: list[Filter] = (
            list(filters) if filters is not None else default_filters(wake_passive)
        )

    def place(self, requests: Sequence[VMRequest], hosts: Sequence[HostView]) -> Plan:
        batch = Batch(requests, hosts, self.thresholds, self.filters)
        free: list[Unit] = []
        for unit in batch.units:
            if unit.conflict is not None:
                batch.reject(unit)
            elif unit.pins:
                self._place_pinned(batch, unit)
            else:
                free.append(unit)
        leftover = self.place_free(batch, free) if free else []
        hopeless: set[tuple[object, ...]] = set()
        for unit in leftover:
            # Room only shrinks within a batch: once a kind of unit fits nowhere, its twins won't.
            sig = unit.signature()
            slot = None if sig in hopeless else batch.first_fit(unit)
            if slot is None:
                hopeless.add(sig)
                batch.reject(unit)
            else:
                batch.commit(unit, slot)
        return batch.plan()

    def _place_pinned(self, batch: Batch, unit: Unit) -> None:
        slot = batch.by_id.get(next(iter(unit.pins))) if len(unit.pins) == 1 else None
        if slot is not None and batch.feasible(unit, slot):
            batch.commit(unit, slot)
        else:
            batch.reject(unit)

    def place_free(self, batch: Batch, units: list[Unit]) -> list[Unit]:
        """Commit what the policy can place; return the units it could not."""
        raise NotImplementedError
