"""The ``repack`` consolidation: the cost-aware plan, then more hosts emptied with shifts.

An eviction loop (``consolidation.py``) only empties a host whose VMs fit as they are into
the room the kept hosts have left. A repack from scratch does better because it rearranges
the kept hosts too: with two resources, room is fragmented (cpu left on one host, memory on
another) long before the cluster is full. This policy buys that rearranging one migration at
a time, and only where it releases a host:

1. the seed: the cost-aware loop (cheapest hosts to empty first, tightest fit on the hosts
   that are kept), so every host it releases is released here too, at the same cost;
2. the hosts it could not empty are tried again, cheapest first; a VM that fits on no kept
   host may still go to a kept host ``h`` if one movable VM of ``h`` (not frozen, not moved
   by this plan yet) leaves for a third kept host and so makes the room: a *shift*, one
   extra migration, planned before the one it makes room for;
3. an extra host is released only if its migrations, shifts included, are no more than the
   seed spent per released host (``max_moves`` when the seed released none), so the plan's
   migrations per released host never grow: it releases the most host-hours per migration
   the search finds. Its own budget applies as everywhere (``budget``, ``frozen``).

The search is bounded so that thousands of hosts plan in about a second: the hosts tried for
a shift are the ``probe`` ones missing the least room, and the search stops after ``patience``
hosts in a row could not be emptied (the cheapest are tried first: later ones only cost more).
Every host it gives up on, and why, is recorded in the plan's notes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from .consolidation import CostAware, Sercon, _Evictor, _Host
from .types import HostView, Migration, Plan, Thresholds, VMView

#: How far the seed's migrations per released host may be exceeded: never.
_EPS = 1e-9


def _released(plan: Plan) -> int:
    """Hosts the plan empties by migrating (already idle hosts cost nothing and are not counted)."""
    sources = {m.source for m in plan.migrations}
    return sum(1 for h in plan.power_down if h in sources)


class Repack(CostAware):
    """The cost-aware plan, then the hosts it left up emptied with shifts where that pays."""

    name = "repack"

    def __init__(
        self,
        *,
        migration_overhead: float = 262144.0,
        window: int = 4,
        max_moves: int = 4,
        probe: int = 24,
        patience: int = 16,
        **options: Any,
    ) -> None:
        super().__init__(migration_overhead=migration_overhead, window=window)
        self.max_moves = max(1, max_moves)
        self.probe = max(1, probe)
        self.patience = max(1, patience)

    def consolidate(
        self,
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        *,
        frozen: Collection[str] = (),
        budget: int | None = None,
        spare: Sequence[float] | None = None,
    ) -> Plan:
        # The seed: the cost-aware loop itself (not CostAware.consolidate, whose Sercon
        # fallback would leave this object's state describing another plan).
        plan = _Evictor.consolidate(self, hosts, thresholds, frozen=frozen, budget=budget, spare=spare)
        if self._hosts:
            self._shift_phase(plan)
        other = Sercon().consolidate(hosts, thresholds, frozen=frozen, budget=budget, spare=spare)
        if _released(other) > _released(plan):
            other.notes.append(f"{self.name}: Sercon's order released more hosts; its plan is used")
            return other
        return plan

    # -- the second phase ----------------------------------------------------------------
    def _shift_phase(self, plan: Plan) -> None:
        seed_released, seed_moves = _released(plan), len(plan.migrations)
        cap = seed_moves / seed_released if seed_released else float(self.max_moves)
        left = [
            h
            for h in sorted(self._hosts.values(), key=lambda h: (h.cost, h.idx))
            if not h.released and h.vms and h.idx not in self._pinned
            # A host that received VMs in this plan is one the seed keeps: emptying it would
            # move those VMs twice.
            and not any(vm.id in self._moved for vm in h.vms)
        ]
        extra = misses = 0
        for src in left:
            if misses >= self.patience:
                plan.notes.append(
                    f"{self.name}: stopped after {self.patience} hosts in a row could not be emptied"
                )
                break
            why = self._evict_shifting(src, plan, cap)
            if why is None:
                extra += 1
                misses = 0
            else:
                misses += 1
                if why:
                    plan.notes.append(f"{self.name}: {src.view.id} not emptied: {why}")
        if extra:
            plan.notes.append(
                f"{self.name}: the cost-aware seed released {seed_released} host(s) with "
                f"{seed_moves} migration(s); shifts released {extra} more, at most "
                f"{cap:g} migrations each"
            )

    def _evict_shifting(self, src: _Host, plan: Plan, cap: float) -> str | None:
        """Empty ``src`` onto kept hosts, shifting where needed; None if done, else why not
        ('' for the common, uninteresting case of a VM with no room anywhere)."""
        if not self._spare_ok(src):
            return "its room is kept for arrivals"
        left = self._left(plan)
        limit = cap if left is None else min(cap, float(left))
        if len(src.vms) > limit + _EPS:
            return "" if left is None or len(src.vms) <= cap + _EPS else "over the migration budget"
        tkey = (self.target_key(src), src.idx)
        in_targets = self._in(self._targets, tkey)
        if in_targets:
            self._targets.remove(tkey)
        # (vm, from, to), in the order they must run: a shift before the move it makes room for.
        moves: list[tuple[VMView, _Host, _Host]] = []
        taken: set[str] = set()
        why: str | None = None
        for vm in sorted(src.vms, key=lambda v: (-self._size(v), v.id)):
            d = vm.demand
            dest = self._choose(d)
            if dest is not None:
                _take(dest, d)
                moves.append((vm, src, dest))
                continue
            if len(moves) + 2 > limit + _EPS:
                why = f"emptying it would take more than {limit:g} migrations"
                break
            shift = self._find_shift(d, src, taken)
            if shift is None:
                why = ""
                break
            w, h, h2 = shift
            _give(h, w.demand)
            _take(h2, w.demand)
            _take(h, d)
            taken.add(w.id)
            moves.append((w, h, h2))
            moves.append((vm, src, h))
        if why is None and len(moves) > limit + _EPS:
            why = f"emptying it would take {len(moves)} migrations, more than {limit:g}"
        if why is not None:
            for vm, frm, to in reversed(moves):
                _give(to, vm.demand)
                if frm is not src:
                    _take(frm, vm.demand)
            if in_targets:
                self._targets.add(tkey)
            return why
        self._commit(src, moves, plan)
        return None

    def _find_shift(
        self, d: Sequence[float], src: _Host, taken: set[str]
    ) -> tuple[VMView, _Host, _Host] | None:
        """A kept host ``h`` and one of its VMs ``w`` such that ``w`` fits on another kept host
        and its leaving lets ``d`` onto ``h``; the least memory to copy among the first found."""
        ranked: list[tuple[float, int, _Host]] = []
        for h in self._hosts.values():
            if h.released or h is src or not h.vms:
                continue
            r = h.room
            gap = [max(0.0, d[i] - r[i]) for i in range(4)]
            if not any(gap):
                continue  # it fits as it is: _choose would have found it unless pruned as full
            ranked.append((sum(g * w for g, w in zip(gap, h.inv, strict=True)), h.idx, h))
        ranked.sort(key=lambda x: (x[0], x[1]))
        best: tuple[float, VMView, _Host, _Host] | None = None
        for _, _, h in ranked[: self.probe]:
            r = h.room
            for w in h.vms:
                if w.id in self._frozen or w.id in self._moved or w.id in taken:
                    continue
                wd = w.demand
                if not all(r[i] + wd[i] >= d[i] for i in range(4)):
                    continue
                if best is not None and wd[1] >= best[0]:
                    continue
                h2 = self._choose_except(wd, (h.idx, src.idx))
                if h2 is not None:
                    best = (wd[1], w, h, h2)
            if best is not None:
                break
        return None if best is None else (best[1], best[2], best[3])

    def _choose_except(self, d: Sequence[float], skip: tuple[int, int]) -> _Host | None:
        """First kept host (in target order) with room for ``d``, other than those in ``skip``."""
        hosts = self._hosts
        for _, idx in self._targets.items:
            if idx in skip:
                continue
            r = hosts[idx].room
            if d[1] <= r[1] and d[0] <= r[0] and d[2] <= r[2] and d[3] <= r[3]:
                return hosts[idx]
        return None

    def _commit(self, src: _Host, moves: list[tuple[VMView, _Host, _Host]], plan: Plan) -> None:
        gone = self._capacity(src)
        for i in range(4):
            self._free[i] -= gone[i]
        src.released = True
        touched: dict[int, tuple[float, _Host]] = {}
        for vm, frm, to in moves:
            for h in (frm, to):
                if h is not src and h.idx not in touched:
                    touched[h.idx] = (self.target_key(h), h)
            if frm is not src:
                frm.vms.remove(vm)
                frm.cost -= vm.demand[1] + self.overhead
                frm.load -= sum(x * w for x, w in zip(vm.demand, frm.inv, strict=True))
            to.vms.append(vm)
            to.cost += vm.demand[1] + self.overhead
            to.load += sum(x * w for x, w in zip(vm.demand, to.inv, strict=True))
            self._moved[vm.id] = len(plan.migrations)
            plan.migrations.append(Migration(vm.id, frm.view.id, to.view.id, float(vm.demand[1])))
        for old, h in touched.values():
            self._targets.remove((old, h.idx))
            if not self._full(h):
                self._targets.add((self.target_key(h), h.idx))
        src.vms = []
        plan.power_down.append(src.view.id)


def _take(h: _Host, d: Sequence[float]) -> None:
    r = h.room
    r[0] -= d[0]
    r[1] -= d[1]
    r[2] -= d[2]
    r[3] -= d[3]


def _give(h: _Host, d: Sequence[float]) -> None:
    r = h.room
    r[0] += d[0]
    r[1] += d[1]
    r[2] += d[2]
    r[3] += d[3]
