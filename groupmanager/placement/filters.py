"""Feasibility filters: one small class per constraint, each answering "may this unit go here?".

Filters run in a fixed order and the first one that says no is charged with the rejection,
as Nomad's feasibility checkers do; that tally becomes the unplaced VM's ``Rejection``.
Policies use the same filters in their hot loops, usually cheapest and most selective first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .state import Slot, Unit
from .types import PowerState, Rejection


class Filter(Protocol):
    name: str

    def __call__(self, unit: Unit, slot: Slot) -> bool: ...


class Alive:
    """Dead hosts (missed heartbeats, an OFFLINE local controller) take nothing: Loch Ness's
    "is alive", read fresh for each placement (its own was cached)."""

    name = "alive"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        return slot.view.alive


class ActiveOrWakeable:
    """ACTIVE and WAKING hosts are usable; PASSIVE ones only if waking hosts is allowed.

    Policies try PASSIVE hosts last, only for what no powered host can take.
    """

    name = "power"

    def __init__(self, wake_passive: bool = True) -> None:
        self.wake_passive = wake_passive

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        return self.wake_passive or slot.view.power is not PowerState.PASSIVE


class Pinned:
    """A VM pinned to a host goes there or nowhere."""

    name = "pinned"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        return all(p == slot.view.id for p in unit.pins)


class Excluded:
    """Hosts the request names as off limits (e.g. the source of a retry)."""

    name = "excluded"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        return slot.view.id not in unit.excluded


class Network:
    """The host must have a free address on every requested network (empty: not known)."""

    name = "network"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        nets = slot.view.networks
        return not nets or unit.networks <= nets


class ServesSubnet:
    """The host serves the subnet of the VM's address (Loch Ness's "has subnet"): a subnet some
    hosts serve may only go to them; one no host serves is served by all (``subnets`` None)."""

    name = "subnet"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        served = slot.view.subnets
        return served is None or unit.networks <= served


class FreeAddress:
    """The VM's subnet has a free address for it (Loch Ness's "has subnet with free
    addresses"); the caller names the full ones, fresh (the reservation re-checks anyway)."""

    name = "addresses"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        full = slot.view.full_subnets
        return not full or unit.networks.isdisjoint(full)


class Affinity:
    """An affinity group must be able to share one host; a contradictory one fits nowhere."""

    name = "affinity"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        return unit.conflict is None


class AntiAffinity:
    """At most one VM of an anti-affinity group per host, within the batch."""

    name = "anti-affinity"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        return not (unit.anti_groups and not unit.anti_groups.isdisjoint(slot.anti_groups))


class Capacity:
    """After placement every resource stays at or under MID * total (reserved counted)."""

    name = "capacity"

    def __call__(self, unit: Unit, slot: Slot) -> bool:
        d = unit.demand
        r = slot.room
        return d[0] <= r[0] and d[1] <= r[1] and d[2] <= r[2] and d[3] <= r[3]


def default_filters(wake_passive: bool = True) -> list[Filter]:
    """The standard stack, in the order rejections are charged."""
    return [
        Alive(),
        ActiveOrWakeable(wake_passive),
        Pinned(),
        Excluded(),
        ServesSubnet(),
        FreeAddress(),
        Network(),
        Affinity(),
        AntiAffinity(),
        Capacity(),
    ]


def feasible(filters: Sequence[Filter], unit: Unit, slot: Slot) -> bool:
    return all(f(unit, slot) for f in filters)


def explain(filters: Sequence[Filter], unit: Unit, slots: Sequence[Slot]) -> Rejection:
    """Charge each host to the first filter that rejects it and phrase the tally."""
    counts: dict[str, int] = {}
    feasible_left = 0
    for slot in slots:
        for f in filters:
            if not f(unit, slot):
                counts[f.name] = counts.get(f.name, 0) + 1
                break
        else:
            feasible_left += 1
    filtered = {f.name: counts[f.name] for f in filters if f.name in counts}
    n = len(slots)
    if n == 0:
        return Rejection("no host fits: there are no hosts", {})
    parts = ", ".join(f"{name} rejected {k}" for name, k in filtered.items())
    if feasible_left:
        # Not expected from the built-in policies, which fall back to any feasible host.
        return Rejection(
            f"not placed although {feasible_left} of {n} hosts pass every filter ({parts})",
            filtered,
        )
    if unit.conflict is not None:
        return Rejection(f"no host fits: {unit.conflict} ({parts} of {n} hosts)", filtered)
    return Rejection(f"no host fits: {parts} of {n} hosts", filtered)
