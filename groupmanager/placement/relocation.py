"""Relocation: migration plans that relieve one overloaded host or empty one underloaded host.

Overload (the original's greedy, made minimal): move the fewest VMs whose departure brings
the host back under MID, preferring the least memory to copy among equally few; small hosts
are solved exactly, larger ones greedily (take a VM that alone clears the rest if there is
one, else the one that clears most). Underload: move every VM away, best-fit onto the
busiest powered candidates, or nothing at all if any VM has nowhere to go, then power down.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from .capacity import INF, headroom, reference_capacity
from .filters import ActiveOrWakeable, Alive, Capacity, Filter, explain
from .state import Slot, Unit, make_slots
from .types import HostView, Migration, Plan, PowerState, Thresholds, VMRequest, VMView

#: Up to this many VMs on a host, overload relocation searches subsets exactly.
EXACT_LIMIT = 12


def _as_unit(vm: VMView) -> Unit:
    d = vm.demand
    return Unit(
        requests=(VMRequest(vm.id, d),),
        demand=(float(d[0]), float(d[1]), float(d[2]), float(d[3])),
        pins=frozenset(),
        excluded=frozenset(),
        networks=frozenset(),
        anti_groups=frozenset(),
    )


def _best_fit(unit: Unit, slots: Sequence[Slot], inv: Sequence[float]) -> Slot | None:
    """The slot the unit fits most tightly (least normalised room left)."""
    best: Slot | None = None
    best_left = INF
    d = unit.demand
    for s in slots:
        r = s.room
        if d[0] <= r[0] and d[1] <= r[1] and d[2] <= r[2] and d[3] <= r[3]:
            left = sum((r[i] - d[i]) * inv[i] for i in range(4) if r[i] != INF)
            if left < best_left:
                best, best_left = s, left
    return best


def excess(host: HostView, thresholds: Thresholds) -> list[float]:
    """How much must leave the host, per resource, to get it back under MID."""
    return [max(0.0, -r) if r != INF else 0.0 for r in headroom(host, thresholds)]


def _clears(vms: Sequence[VMView], need: Sequence[float]) -> bool:
    got = [0.0, 0.0, 0.0, 0.0]
    for vm in vms:
        for i, x in enumerate(vm.demand):
            got[i] += x
    return all(g >= n for g, n in zip(got, need, strict=True))


def choose_overload_victims(
    vms: Sequence[VMView],
    need: Sequence[float],
    total: Sequence[float],
    exact_limit: int = EXACT_LIMIT,
) -> list[VMView] | None:
    """Fewest VMs whose demands cover ``need``; least memory among ties. None if impossible."""
    if not any(n > 0 for n in need):
        return []
    if not _clears(vms, need):
        return None
    if len(vms) <= exact_limit:
        for k in range(1, len(vms) + 1):
            best: tuple[VMView, ...] | None = None
            best_mem = INF
            for combo in combinations(vms, k):
                if _clears(combo, need):
                    mem = sum(v.demand[1] for v in combo)
                    if mem < best_mem:
                        best, best_mem = combo, mem
            if best is not None:
                return list(best)
    return greedy_overload_victims(vms, need, total)


def greedy_overload_victims(
    vms: Sequence[VMView], need: Sequence[float], total: Sequence[float]
) -> list[VMView]:
    """Greedy cover: a single VM that clears what remains (least memory), else the biggest dent."""
    inv = [1.0 / t if t > 0 else 0.0 for t in total]
    rest = list(need)
    pool = list(vms)
    chosen: list[VMView] = []
    while any(x > 0 for x in rest) and pool:
        closing = [v for v in pool if all(d >= x for d, x in zip(v.demand, rest, strict=True))]
        if closing:
            pick = min(closing, key=lambda v: (v.demand[1], v.id))
        else:
            pick = max(
                pool,
                key=lambda v: (
                    sum(
                        min(d, x) * w for d, x, w in zip(v.demand, rest, inv, strict=True) if x > 0
                    ),
                    -v.demand[1],
                ),
            )
        chosen.append(pick)
        pool.remove(pick)
        rest = [x - d for x, d in zip(rest, pick.demand, strict=True)]
    return chosen


def _destinations(
    host: HostView, candidates: Sequence[HostView], thresholds: Thresholds, wake: bool
) -> list[Slot]:
    slots = make_slots([c for c in candidates if c.id != host.id], thresholds)
    return [s for s in slots if s.view.alive and (wake or s.view.power is not PowerState.PASSIVE)]


def _move(
    vms: Sequence[VMView],
    host: HostView,
    candidates: Sequence[HostView],
    thresholds: Thresholds,
    wake: bool,
) -> tuple[list[Migration], dict[str, Unit], list[str], list[Slot]]:
    """Best-fit each VM (largest first) on powered hosts, then wakeable ones if allowed."""
    every = make_slots([c for c in candidates if c.id != host.id], thresholds)
    slots = [s for s in every if s.view.alive and (wake or s.view.power is not PowerState.PASSIVE)]
    scale = reference_capacity([s.view for s in slots], thresholds)
    inv = [1.0 / x if x > 0 else 0.0 for x in scale]
    powered = [s for s in slots if s.view.power is not PowerState.PASSIVE]
    passive = [s for s in slots if s.view.power is PowerState.PASSIVE]
    order = sorted(vms, key=lambda v: -sum(x * w for x, w in zip(v.demand, inv, strict=True)))
    migrations: list[Migration] = []
    failed: dict[str, Unit] = {}
    woken: list[str] = []
    for vm in order:
        unit = _as_unit(vm)
        dest = _best_fit(unit, powered, inv) or _best_fit(unit, passive, inv)
        if dest is None:
            failed[vm.id] = unit
            continue
        for i in range(4):
            dest.room[i] -= unit.demand[i]
        if dest.view.power is PowerState.PASSIVE and dest.id not in woken:
            woken.append(dest.id)
        migrations.append(Migration(vm.id, host.id, dest.id, float(vm.demand[1])))
    return migrations, failed, woken, every


def _filters(wake: bool) -> list[Filter]:
    return [Alive(), ActiveOrWakeable(wake), Capacity()]


def relocate_overloaded(
    host: HostView,
    candidates: Sequence[HostView],
    thresholds: Thresholds,
    *,
    wake_passive: bool = True,
) -> Plan:
    """Migrate the fewest VMs that bring ``host`` back under MID."""
    need = excess(host, thresholds)
    if not any(n > 0 for n in need):
        return Plan(notes=[f"host {host.id} is not above MID: nothing to relocate"])
    dests = _destinations(host, candidates, thresholds, wake_passive)
    # A VM that fits on no candidate cannot help, however well it would cover the excess.
    movable = [
        vm
        for vm in host.vms
        if any(all(d <= r for d, r in zip(vm.demand, s.room, strict=True)) for s in dests)
    ]
    victims = choose_overload_victims(movable, need, host.total)
    if victims is None:
        return Plan(notes=[f"host {host.id}: the VMs that could move cannot bring it under MID"])
    migrations, failed, woken, slots = _move(victims, host, candidates, thresholds, wake_passive)
    plan = Plan(migrations=migrations, wake_up=woken)
    for vm_id, unit in failed.items():
        plan.unplaced[vm_id] = explain(_filters(wake_passive), unit, slots)
    if failed:
        plan.notes.append(f"host {host.id}: {len(failed)} VM(s) chosen to leave found no room")
    return plan


def relocate_underloaded(
    host: HostView,
    candidates: Sequence[HostView],
    thresholds: Thresholds,
) -> Plan:
    """Empty ``host`` onto powered candidates and power it down, or do nothing."""
    if not host.vms:
        return Plan(power_down=[host.id], notes=[f"host {host.id} is already empty"])
    # Waking a host to empty another saves nothing, so only powered candidates count.
    migrations, failed, _, slots = _move(host.vms, host, candidates, thresholds, wake=False)
    if failed:
        plan = Plan(
            notes=[
                f"host {host.id} not emptied: {len(failed)} of {len(host.vms)} VMs fit on no powered candidate"
            ]
        )
        for vm_id, unit in failed.items():
            plan.unplaced[vm_id] = explain(_filters(False), unit, slots)
        return plan
    return Plan(migrations=migrations, power_down=[host.id])
