"""The ``warm-repack`` consolidation: choose the hosts to release, then repack only what must move.

An eviction loop (``consolidation.py``) decides host by host, in one order, whether a host's
VMs fit as they are into the room the others have left. This policy searches instead over
*which* hosts to release, with the current placement as the warm start: for a set ``R`` of
hosts to release, the VMs of ``R`` are placed on the kept hosts (largest first, tightest
fit); a VM that fits nowhere may *eject* one or two movable VMs of a kept host onto other kept
hosts (each ejection is one more migration, planned before the move it makes room for). A
set is feasible if every VM of ``R`` found a place; its price is its migrations.

The search: grow ``R`` greedily (cheapest host to empty first, a host added only if the set
stays feasible within the limits), then improve it by swapping a released host for one kept
(fewer migrations for as many hosts released) and by trying to add every host left, each
evaluation counted against ``evaluations``: the work is bounded by a count, not a clock, so
the package stays free of clock reads and a plan takes the same steps on every machine (on
32 hosts it plans in milliseconds). The result is compared with the cost-aware plan for the
same input and the better one returned: more hosts released, else fewer migrations. So this
policy never releases fewer hosts than cost-aware, nor pays more migrations for as many.

Limits, as every policy (docs/power.md, "Consolidation"):

* ``budget``: the plan has at most this many migrations;
* ``frozen``: VMs that migrated within the cooldown never move, neither evicted nor ejected,
  and a host holding one is never released; hosts with capacity reserved are never released;
* ``max_moves``: a host is released only if the plan's migrations stay within ``max_moves``
  per released host (releasing a host that is woken again soon saves little, so a release
  must be cheap);
* ``spare``: the room left free on the kept hosts must still hold ``spare``; and ``keep_free``
  (default 0.5) host's worth of room stays free on the kept hosts whatever ``spare`` says: a
  search that packs the kept hosts full releases a host the next arrivals wake again (on
  the benchmark's day this kept wake-ups at cost-aware's count instead of a third more);
* only ACTIVE hosts are destinations: a host is never woken to empty another.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from .capacity import INF, headroom, reference_capacity
from .consolidation import CostAware
from .types import HostView, Migration, Plan, PowerState, Thresholds

#: A VM as the search sees it: id, demand, whether it may move.
_VM = tuple[str, tuple[float, float, float, float], bool]


class _Node:
    """A busy host in the search: its room under MID and its VMs (kept order: by id)."""

    __slots__ = ("id", "room", "vms", "cost", "pinned", "inv")

    def __init__(self, view: HostView, thresholds: Thresholds, frozen: frozenset[str], overhead: float) -> None:
        self.id = view.id
        r = headroom(view, thresholds)
        self.room = (r[0], r[1], r[2], r[3])
        self.vms: list[_VM] = [
            (vm.id, (float(vm.demand[0]), float(vm.demand[1]), float(vm.demand[2]), float(vm.demand[3])),
             vm.id not in frozen)
            for vm in view.vms
        ]
        self.cost = sum(d[1] + overhead for _, d, _ in self.vms)
        # Reserved capacity: a VM is starting or migrating in. Frozen VM: it cannot leave.
        self.pinned = any(view.reserved) or any(not movable for _, _, movable in self.vms)
        self.inv = [1.0 / t if t > 0 else 0.0 for t in view.total]


class _Out(Exception):
    """The evaluation budget is spent: the search stops with what it has."""


class WarmRepack(CostAware):
    """Search over the hosts to release; repack their VMs onto the kept hosts, ejecting if needed."""

    name = "warm-repack"

    def __init__(
        self,
        *,
        migration_overhead: float = 262144.0,
        window: int = 4,
        max_moves: float = 2.0,
        keep_free: float = 0.5,
        evaluations: int = 2000,
        **options: Any,
    ) -> None:
        super().__init__(migration_overhead=migration_overhead, window=window)
        self.max_moves = max(1.0, float(max_moves))
        self.evaluations = max(1, int(evaluations))
        self.keep_free = max(0.0, float(keep_free))
        #: How many set evaluations the last plan used (for tests and the benchmark).
        self.last_evaluations = 0

    def consolidate(
        self,
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        *,
        frozen: Collection[str] = (),
        budget: int | None = None,
        spare: Sequence[float] | None = None,
    ) -> Plan:
        seed = super().consolidate(hosts, thresholds, frozen=frozen, budget=budget, spare=spare)
        mine = self._search(hosts, thresholds, frozenset(frozen), budget, spare)
        if mine is None:
            return seed
        if _released(mine) > _released(seed) or (
            _released(mine) == _released(seed) and len(mine.migrations) < len(seed.migrations)
        ):
            mine.notes.append(
                f"{self.name}: released {_released(mine)} host(s) with {len(mine.migrations)} migration(s) "
                f"(cost-aware: {_released(seed)} with {len(seed.migrations)}); "
                f"{self.last_evaluations} set(s) evaluated"
            )
            return mine
        seed.notes.append(f"{self.name}: the cost-aware plan is as good; {self.last_evaluations} set(s) evaluated")
        return seed

    # -- the search ------------------------------------------------------------------------
    def _search(
        self,
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        frozen: frozenset[str],
        budget: int | None,
        spare: Sequence[float] | None,
    ) -> Plan | None:
        self.last_evaluations = 0
        active = [h for h in hosts if h.alive and h.power is PowerState.ACTIVE]
        idle = [h.id for h in active if not h.vms and not any(h.reserved)]
        nodes = [_Node(h, thresholds, frozen, self.overhead) for h in active if h.vms]
        if len(nodes) < 2:
            return None
        scale = reference_capacity([h for h in active if h.vms], thresholds)
        self._inv = [1.0 / s if s > 0 else 0.0 for s in scale]
        self._unit = [s / thresholds.mid[i] if thresholds.mid[i] > 0 else s for i, s in enumerate(scale)]
        self._nodes = {n.id: n for n in nodes}
        self._budget = budget
        self._spare = spare
        self._free = [sum(max(0.0, n.room[i]) for n in nodes if n.room[i] != INF) for i in range(4)]
        candidates = sorted((n for n in nodes if not n.pinned), key=lambda n: (n.cost, n.id))
        best: tuple[list[str], list[Migration]] = ([], [])
        try:
            # Greedy: add the cheapest hosts one at a time while the set stays feasible.
            for c in candidates:
                trial = self._evaluate([*best[0], c.id])
                if trial is not None:
                    best = ([*best[0], c.id], trial)
            # Improve: a released host swapped for a kept one, if that costs fewer migrations
            # (and then perhaps frees room for one more host).
            improved = True
            while improved:
                improved = False
                for out in list(best[0]):
                    for c in candidates:
                        if c.id in best[0]:
                            continue
                        chosen = [x for x in best[0] if x != out] + [c.id]
                        trial = self._evaluate(chosen)
                        if trial is not None and len(trial) < len(best[1]):
                            best, improved = (chosen, trial), True
                            break
                    if improved:
                        break
                for c in candidates:
                    if c.id in best[0]:
                        continue
                    trial = self._evaluate([*best[0], c.id])
                    if trial is not None:
                        best, improved = ([*best[0], c.id], trial), True
        except _Out:
            pass
        released, migrations = best
        plan = Plan(migrations=list(migrations), power_down=list(idle))
        # Released hosts in the order the plan empties them (its last migration first).
        order = {m.source: i for i, m in enumerate(migrations)}
        plan.power_down.extend(sorted(released, key=lambda h: (order.get(h, -1), h)))
        return plan

    def _evaluate(self, release: list[str]) -> list[Migration] | None:
        """The migrations that empty every host of ``release`` onto the others, or None."""
        if self.last_evaluations >= self.evaluations:
            raise _Out
        self.last_evaluations += 1
        limit = self.max_moves * len(release)
        if self._budget is not None:
            limit = min(limit, float(self._budget))
        gone = set(release)
        if self._spare is not None or self.keep_free > 0:
            want = list(self._spare) if self._spare is not None else [0.0, 0.0, 0.0, 0.0]
            for i in range(4):
                want[i] = max(want[i], self.keep_free * self._unit[i])
            lost = [0.0, 0.0, 0.0, 0.0]
            for h in release:
                n = self._nodes[h]
                for i in range(4):
                    if n.room[i] != INF:
                        lost[i] += max(0.0, n.room[i] + sum(d[i] for _, d, _ in n.vms))
            if any(self._free[i] - lost[i] < want[i] - 1e-9 for i in range(4) if lost[i] > 0):
                return None
        kept = [n for n in self._nodes.values() if n.id not in gone]
        room = {n.id: list(n.room) for n in kept}
        on = {n.id: list(n.vms) for n in kept}
        moved: set[str] = set()
        moves: list[Migration] = []
        todo = [(vm, h) for h in release for vm in self._nodes[h].vms]
        todo.sort(key=lambda x: (-self._weight(x[0][1]), x[0][0]))
        for vm, src in todo:
            if len(moves) + 1 > limit + 1e-9:
                return None
            dest = self._fit(vm[1], room, kept, ())
            if dest is not None:
                _take(room[dest], vm[1])
                on[dest].append(vm)
                moves.append(Migration(vm[0], src, dest, vm[1][1]))
                moved.add(vm[0])
                continue
            ejection = self._eject(vm[1], room, on, kept, moved, limit - len(moves) - 1)
            if ejection is None:
                return None
            host, shifts = ejection
            for w, to in shifts:
                on[host].remove(w)
                _give(room[host], w[1])
                _take(room[to], w[1])
                on[to].append(w)
                moved.add(w[0])
                moves.append(Migration(w[0], host, to, w[1][1]))
            _take(room[host], vm[1])
            on[host].append(vm)
            moved.add(vm[0])
            moves.append(Migration(vm[0], src, host, vm[1][1]))
        return moves

    def _weight(self, d: Sequence[float]) -> float:
        return sum(x * w for x, w in zip(d, self._inv, strict=True))

    def _fit(
        self, d: Sequence[float], room: dict[str, list[float]], kept: list[_Node], skip: Collection[str]
    ) -> str | None:
        """The kept host ``d`` fits most tightly (least normalised room left), or None."""
        best, best_left = None, INF
        for n in kept:
            if n.id in skip:
                continue
            r = room[n.id]
            if d[0] <= r[0] and d[1] <= r[1] and d[2] <= r[2] and d[3] <= r[3]:
                left = sum((r[i] - d[i]) * n.inv[i] for i in range(4) if r[i] != INF)
                if left < best_left:
                    best, best_left = n.id, left
        return best

    def _eject(
        self,
        d: Sequence[float],
        room: dict[str, list[float]],
        on: dict[str, list[_VM]],
        kept: list[_Node],
        moved: set[str],
        spare_moves: float,
    ) -> tuple[str, list[tuple[_VM, str]]] | None:
        """A kept host and one or two of its movable VMs that leave for other kept hosts so
        that ``d`` fits there: the fewest ejections, then the least memory to copy."""
        if spare_moves < 1 - 1e-9:
            return None
        best: tuple[int, float, str, list[tuple[_VM, str]]] | None = None
        for n in kept:
            r = room[n.id]
            gap = [max(0.0, d[i] - r[i]) for i in range(4)]
            movable = [w for w in on[n.id] if w[2] and w[0] not in moved]
            for w in movable:
                if not all(w[1][i] >= gap[i] for i in range(4)):
                    continue
                if best is not None and (best[0] < 1 or (best[0] == 1 and w[1][1] >= best[1])):
                    continue
                to = self._fit(w[1], room, kept, (n.id,))
                if to is not None:
                    best = (1, w[1][1], n.id, [(w, to)])
            if best is not None and best[0] == 1 or spare_moves < 2 - 1e-9:
                continue
            for i, w1 in enumerate(movable):
                for w2 in movable[i + 1 :]:
                    if not all(w1[1][k] + w2[1][k] >= gap[k] for k in range(4)):
                        continue
                    mem = w1[1][1] + w2[1][1]
                    if best is not None and mem >= best[1]:
                        continue
                    to1 = self._fit(w1[1], room, kept, (n.id,))
                    if to1 is None:
                        continue
                    _take(room[to1], w1[1])
                    to2 = self._fit(w2[1], room, kept, (n.id,))
                    _give(room[to1], w1[1])
                    if to2 is not None:
                        best = (2, mem, n.id, [(w1, to1), (w2, to2)])
        return None if best is None else (best[2], best[3])


def _released(plan: Plan) -> int:
    """Hosts the plan empties by migrating (idle hosts cost nothing and are not counted)."""
    sources = {m.source for m in plan.migrations}
    return sum(1 for h in plan.power_down if h in sources)


def _take(r: list[float], d: Sequence[float]) -> None:
    r[0] -= d[0]
    r[1] -= d[1]
    r[2] -= d[2]
    r[3] -= d[3]


def _give(r: list[float], d: Sequence[float]) -> None:
    r[0] += d[0]
    r[1] += d[1]
    r[2] += d[2]
    r[3] += d[3]
