"""Making room for a VM on the hosts that are up, instead of waking a sleeping one.

A VM that fits on no active host is placed on a sleeping host, which is woken for it. Often the
active hosts have the room together but not on one host: with two resources (cpu, memory)
room fragments, and a 4 vcpu / 12 GiB request finds 6 vcpus free on one host and 10 GiB on
another. One migration between active hosts can then make the room: a VM ``w`` of host ``h``
leaves for another active host ``g``, and the request fits on ``h``. A wake-up costs a host
powered on for hours (and minutes of boot for the request); the migration costs a copy of
``w``'s memory.

``make_room`` plans that one migration (a *shift*, as the ``repack`` consolidation calls it)
and the placement it makes possible, as pure data: the cheapest shift (least memory to copy),
tightest fit of ``w`` on ``g`` second, ids last, so the same views give the same plan. Frozen
VMs (the consolidation's cooldown) never move. The plan's notes say why there is no shift.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from .capacity import fits, headroom
from .types import HostView, Migration, Placement, Plan, PowerState, Thresholds, Vector


def make_room(vm_id: str, demand: Vector, hosts: Sequence[HostView], thresholds: Thresholds,
              frozen: Collection[str] = frozenset()) -> Plan:
    """One migration between active hosts after which ``demand`` fits on the source: a plan
    with that migration and the placement of ``vm_id``, or an empty plan with a note.

    A plan is only returned when no active host has the room already (the caller's placement
    would have found it) and ``demand`` does not fit once ``w`` has left unless ``w`` leaves."""
    active = [h for h in hosts if h.power == PowerState.ACTIVE and h.alive]
    rooms = {h.id: headroom(h, thresholds) for h in active}
    plan = Plan()
    if not active:
        plan.notes.append("no active host")
        return plan
    if any(fits(demand, rooms[h.id]) for h in active):
        plan.notes.append("an active host has the room already")
        return plan
    best: tuple[float, float, str, str, str] | None = None  # memory, fit left on g, h, w, g
    for h in active:
        room = rooms[h.id]
        for w in h.vms:
            if w.id in frozen:
                continue
            wd = w.requested  # destinations admit VMs on what they requested
            if not fits(demand, [r + x for r, x in zip(room, wd, strict=True)]):
                continue  # even without w, the request does not fit on h
            for g in active:
                if g.id == h.id or not fits(wd, rooms[g.id]):
                    continue
                left = sum((r - x) / t for r, x, t in zip(rooms[g.id], wd, g.total, strict=True) if t > 0)
                key = (wd[1], left, h.id, w.id, g.id)
                if best is None or key < best:
                    best = key
    if best is None:
        plan.notes.append("no single migration between active hosts makes the room")
        return plan
    memory, _, h_id, w_id, g_id = best
    plan.migrations.append(Migration(w_id, h_id, g_id, memory))
    plan.placements.append(Placement(vm_id, h_id))
    plan.notes.append(f"{w_id} from {h_id} to {g_id} makes room for {vm_id} on {h_id}")
    return plan
