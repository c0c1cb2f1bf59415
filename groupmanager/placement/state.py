"""The scratch state of one ``place()`` call: units to place, hosts with remaining room.

A *unit* is what moves as one piece: a single request, or every request of one affinity
group (they must share a host, so they are sized and placed together). A *slot* is a host
as the batch sees it: its headroom shrinks as units are committed, so a plan never
overcommits a host, ``reserved`` included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .capacity import headroom, load
from .types import HostView, PowerState, Thresholds, VMRequest


@dataclass(eq=False, slots=True)
class Unit:
    """One or more requests that must land on the same host."""

    requests: tuple[VMRequest, ...]
    demand: tuple[float, float, float, float]
    pins: frozenset[str]
    excluded: frozenset[str]
    networks: frozenset[str]
    anti_groups: frozenset[str]
    conflict: str | None = None  # set when the unit's own members make it impossible
    order: int = 0  # position of its first request in the batch, for stable output
    slot: Slot | None = None  # where the batch committed it

    @property
    def constrained(self) -> bool:
        return bool(self.pins or self.excluded or self.networks or self.anti_groups)

    def signature(self) -> tuple[object, ...]:
        """Units with one signature are interchangeable: same demand, same constraints."""
        return (self.demand, self.pins, self.excluded, self.networks, self.anti_groups)


@dataclass(eq=False)
class Slot:
    """A host during one placement call."""

    view: HostView
    index: int
    room: list[float]  # headroom under MID, shrinking as units are committed
    load: float
    anti_groups: set[str] = field(default_factory=set)
    received: int = 0

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def passive(self) -> bool:
        return self.view.power is PowerState.PASSIVE

    @property
    def busy(self) -> bool:
        """Already hosts or expects VMs: filling it costs no extra powered host."""
        v = self.view
        return bool(v.vms) or any(v.used) or any(v.reserved) or self.received > 0


def make_slots(hosts: Sequence[HostView], thresholds: Thresholds) -> list[Slot]:
    slots = []
    for i, h in enumerate(hosts):
        room = headroom(h, thresholds)
        slots.append(Slot(view=h, index=i, room=room, load=load(h)))
    return slots


_NONE: frozenset[str] = frozenset()


def make_units(requests: Sequence[VMRequest]) -> tuple[list[Unit], dict[str, str]]:
    """Group requests into units; returns the units and requests refused outright (id -> why)."""
    refused: dict[str, str] = {}
    seen: set[str] = set()
    groups: dict[str, list[VMRequest]] = {}
    order: dict[str, int] = {}
    units: list[Unit] = []
    # The common case (no affinity group) is kept lean: batches of 100,000 requests spend
    # real time here.
    for pos, req in enumerate(requests):
        rid = req.id
        if rid in seen:
            refused[rid] = f"duplicate request for VM {rid}"
            continue
        seen.add(rid)
        vec = req.requested
        if len(vec) != 4 or not (vec[0] >= 0 and vec[1] >= 0 and vec[2] >= 0 and vec[3] >= 0):
            refused[rid] = f"VM {rid} has an invalid capacity vector {req.requested!r}"
            continue
        if req.affinity_group is None:
            c, m, r, t = vec
            pin = req.pinned_host
            net = req.network
            anti = req.anti_affinity_group
            units.append(
                Unit(
                    (req,),
                    (float(c), float(m), float(r), float(t)),
                    _NONE if pin is None else frozenset((pin,)),
                    req.excluded_hosts,
                    _NONE if net is None else frozenset((net,)),
                    _NONE if anti is None else frozenset((anti,)),
                    None,
                    pos,
                )
            )
        else:
            groups.setdefault(req.affinity_group, []).append(req)
            order.setdefault(req.affinity_group, pos)

    if groups:
        for name, members in groups.items():
            unit = _unit(tuple(members), order[name])
            anti_names = [
                m.anti_affinity_group for m in members if m.anti_affinity_group is not None
            ]
            if len(anti_names) != len(set(anti_names)):
                unit.conflict = (
                    f"affinity group {name} puts VMs of one anti-affinity group on the same host"
                )
            units.append(unit)
        units.sort(key=lambda u: u.order)
    return units, refused


def _unit(members: tuple[VMRequest, ...], order: int) -> Unit:
    cpu = mem = rx = tx = 0.0
    for m in members:
        c, me, r, t = m.requested
        cpu += c
        mem += me
        rx += r
        tx += t
    excluded: frozenset[str] = frozenset()
    for m in members:
        excluded |= m.excluded_hosts
    return Unit(
        requests=members,
        demand=(float(cpu), float(mem), float(rx), float(tx)),
        pins=frozenset(m.pinned_host for m in members if m.pinned_host is not None),
        excluded=excluded,
        networks=frozenset(m.network for m in members if m.network is not None),
        anti_groups=frozenset(
            m.anti_affinity_group for m in members if m.anti_affinity_group is not None
        ),
        order=order,
    )
