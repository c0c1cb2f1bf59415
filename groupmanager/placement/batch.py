"""The frame every placement policy runs in: units in, plan out, filters and bookkeeping shared.

``BatchPolicy.place`` turns requests into units, handles what no scorer can change (units
that contradict themselves, pinned units), hands the free units to the policy's own
strategy, gives any leftover a last first-fit chance on every feasible host, and explains
whatever is still unplaced. A policy only decides *where*; committing, never overcommitting,
waking PASSIVE hosts and writing rejections happen here, once.
"""

from __future__ import annotations

import bisect
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
        self._index: list[list[tuple[float, int]]] | None = None
        self._pending: Slot | None = None
        # The fast tally assumes the standard stack; custom stacks get the full walk.
        self._stock = [f.name for f in self.filters] == [f.name for f in default_filters()]
        self._explained: dict[tuple[object, ...], Rejection] = {}
        self._free_rejection: Rejection | None = None
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
        if rejection is None and not unit.constrained and unit.conflict is None and self._stock:
            # An unconstrained unit that fits nowhere passes every filter but the host-state
            # ones and capacity: tally those without walking every host again.
            # The tally does not depend on the unit: computed once per batch.
            if self._free_rejection is None:
                self._free_rejection = self._unconstrained_rejection()
            rejection = self._free_rejection
        if rejection is None:
            rejection = explain(self.filters, unit, self.slots)
            self._explained[key] = rejection
        for req in unit.requests:
            self.unplaced[req.id] = Rejection(rejection.reason, dict(rejection.filtered))

    def _unconstrained_rejection(self) -> Rejection:
        n = len(self.slots)
        if n == 0:
            return Rejection("no host fits: there are no hosts", {})
        dead = sum(1 for s in self.slots if not s.view.alive)
        asleep = (
            0
            if self.wakeable or not any(s.passive for s in self.slots)
            else sum(1 for s in self.slots if s.view.alive and s.passive)
        )
        tally = {"alive": dead, "power": asleep, "capacity": n - dead - asleep}
        filtered = {k: v for k, v in tally.items() if v}
        parts = ", ".join(f"{k} rejected {v}" for k, v in filtered.items())
        return Rejection(f"no host fits: {parts} of {n} hosts", filtered)

    def first_fit(self, unit: Unit) -> Slot | None:
        """Any feasible host, powered ones first: the safety net after a policy's own search.

        Hosts are indexed by memory room, so only those with enough memory are scanned: an
        oversubscribed batch of distinct VMs would otherwise rescan every host per VM.
        """
        if self._index is None:
            self._index = [
                sorted((s.room[1], s.index) for s in t) for t in (self.powered, self.wakeable)
            ]
        need = unit.demand[1]
        for keys in self._index:
            for k in range(bisect.bisect_left(keys, (need, -1)), len(keys)):
                slot = self.slots[keys[k][1]]
                r = slot.room
                d = unit.demand
                # Capacity first: it is what fails in a full cluster, and it is cheap.
                if d[0] <= r[0] and d[2] <= r[2] and d[3] <= r[3] and self.feasible(unit, slot):
                    del keys[k]
                    self._pending = slot
                    return slot
        return None

    def reindex(self) -> None:
        """Put the host last returned by ``first_fit`` back in the index with its new room."""
        slot, self._pending = self._pending, None
        if slot is not None and self._index is not None:
            tier = self._index[1 if slot.view.power is PowerState.PASSIVE else 0]
            bisect.insort(tier, (slot.room[1], slot.index))

    def plan(self) -> Plan:
        placements: list[Placement] = []
        for unit in self.units:
            slot = unit.slot
            if slot is not None:
                host = slot.view.id
                for req in unit.requests:
                    placements.append(Placement(req.id, host))
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
        # Room only shrinks within a batch: once a unit fits nowhere, neither does its twin
        # nor, when unconstrained, any unit at least as large on every resource.
        hopeless: set[tuple[object, ...]] = set()
        too_big: list[tuple[float, float, float, float]] = []
        leftover.sort(key=lambda u: (sum(u.demand), u.order))
        for unit in leftover:
            sig = unit.signature()
            d = unit.demand
            doomed = sig in hopeless or (
                not unit.constrained
                and any(
                    d[0] >= f[0] and d[1] >= f[1] and d[2] >= f[2] and d[3] >= f[3] for f in too_big
                )
            )
            slot = None if doomed else batch.first_fit(unit)
            if slot is None:
                hopeless.add(sig)
                if not unit.constrained and not doomed and len(too_big) < 64:
                    too_big.append(d)
                batch.reject(unit)
            else:
                batch.commit(unit, slot)
                batch.reindex()
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
