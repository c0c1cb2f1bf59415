"""Periodic consolidation: migration plans that empty hosts so that they can be powered down.

Both policies share one eviction loop: take the next source host, try to move *all* its VMs
onto the other powered hosts that already run VMs, keep the moves only if the source ends
up empty, and repeat. They differ in the order sources are tried, in where a VM goes, and
in what they count as the price of a move.

* ``sercon`` (Murtazaev and Oh, "Sercon: Server Consolidation Algorithm using Live Migration
  of Virtual Machines for Green Computing", 2011; the original Snooze's consolidation):
  sources least loaded first, VMs largest first, each onto the first fitting host in
  decreasing load order.
* ``cost-aware`` (the default): the price of emptying a host is the memory its VMs must
  copy plus a fixed overhead per migration, and sources are tried cheapest first, so each
  released host costs few and small migrations. Destinations are kept hosts first (the
  most expensive to empty, which will not be emptied later, so nothing migrates twice),
  choosing among the first few that fit the one the VM fills most tightly (best fit on
  normalised room); a final pass retries the hosts that failed, since the room left after
  the first pass is packed differently. Should Sercon's order release more hosts on some
  cluster, its plan is returned instead, so it never releases fewer hosts than Sercon.
* ``repack``: the cost-aware plan is the seed; then the hosts it could not
  empty are tried again, cheapest first, allowing *shifts*: a VM that fits on no kept host
  goes where moving one small VM of that host on to a third kept host makes room. That is
  the rearranging a repack from scratch does, paid one migration at a time: an extra host is
  released only if it costs no more migrations than the seed's plan spent per released host,
  so the plan's migrations per released host never grow, and the search stops after a few
  hosts in a row could not be emptied, so it stays fast. See ``repack.py``.

Every policy takes two limits from its caller: ``frozen``, VMs that must not move (they
migrated within the cooldown: a host holding one is never emptied, and it is never shifted),
and ``budget``, the most migrations the plan may contain (a host is emptied whole or not at
all, so one whose VMs do not fit in what is left of the budget is skipped). Only ACTIVE hosts
are ever destinations: waking a host to empty another saves nothing.

All run in O(VMs x targets scanned) with full hosts pruned from the target list, so
thousands of hosts plan in seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from .capacity import INF, headroom, load, reference_capacity
from .types import HostView, Migration, Plan, PowerState, Thresholds, UnknownPolicyError, VMView


class ConsolidationPolicy(Protocol):
    name: str

    def consolidate(
        self,
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        *,
        frozen: Collection[str] = (),
        budget: int | None = None,
        spare: Sequence[float] | None = None,
    ) -> Plan: ...


class _Host:
    __slots__ = ("view", "idx", "room", "load", "vms", "cost", "inv", "released")

    def __init__(self, view: HostView, idx: int, thresholds: Thresholds, overhead: float) -> None:
        self.view = view
        self.idx = idx
        self.room = headroom(view, thresholds)
        self.load = load(view)
        self.vms = list(view.vms)
        self.cost = sum(vm.demand[1] + overhead for vm in view.vms)
        self.inv = [1.0 / t if t > 0 else 0.0 for t in view.total]
        self.released = False


class _Sorted:
    """A list of (key, idx) kept sorted with bisect: cheap re-keying as loads change."""

    def __init__(self, items: list[tuple[float, int]]) -> None:
        self.items = sorted(items)

    def remove(self, key: tuple[float, int]) -> None:
        i = bisect.bisect_left(self.items, key)
        if i < len(self.items) and self.items[i] == key:
            del self.items[i]

    def add(self, key: tuple[float, int]) -> None:
        bisect.insort(self.items, key)


class _Evictor:
    """The shared eviction loop; subclasses set the orders and the destination choice."""

    name = "abstract"
    retry_pass = False

    def __init__(self, *, migration_overhead: float = 0.0, window: int = 1) -> None:
        self.overhead = migration_overhead
        self.window = max(1, window)

    def source_key(self, h: _Host) -> float:
        raise NotImplementedError

    def target_key(self, h: _Host) -> float:
        """Targets are scanned in increasing key order."""
        raise NotImplementedError

    def consolidate(
        self,
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        *,
        frozen: Collection[str] = (),
        budget: int | None = None,
        spare: Sequence[float] | None = None,
    ) -> Plan:
        plan = Plan()
        self._frozen = frozenset(frozen)
        self._budget = budget
        self._spare = spare
        self._kept_spare: list[str] = []
        self._over_budget: list[str] = []
        self._hosts: dict[int, _Host] = {}
        self._pinned: set[int] = set()
        pool = [
            _Host(h, i, thresholds, self.overhead)
            for i, h in enumerate(hosts)
            if h.alive and h.power is PowerState.ACTIVE
        ]
        for h in pool:
            if not h.vms and not any(h.view.reserved):
                plan.power_down.append(h.view.id)
        busy = [h for h in pool if h.vms]
        # Free room over the powered hosts (under MID) once the idle ones sleep: with ``spare``,
        # a host is emptied only if what stays free after it is gone still holds ``spare``.
        self._free = [0.0, 0.0, 0.0, 0.0]
        for h in busy:
            for i in range(4):
                self._free[i] += max(0.0, h.room[i]) if h.room[i] != INF else 0.0
        if not busy:
            return plan
        scale = reference_capacity([h.view for h in busy], thresholds)
        inv = [1.0 / s if s > 0 else 0.0 for s in scale]
        self._size: Callable[[VMView], float] = lambda v: sum(
            x * w for x, w in zip(v.demand, inv, strict=True)
        )
        allv = [vm.demand for h in busy for vm in h.vms]
        self._vmin = [min(d[i] for d in allv) for i in range(4)]
        self._targets = _Sorted([(self.target_key(h), h.idx) for h in busy if not self._full(h)])
        self._hosts = {h.idx: h for h in busy}
        self._moved: dict[str, int] = {}
        self._hopeless: list[tuple[float, ...]] = []
        # Hosts with capacity held for VMs in flight are about to be used: never sources; nor
        # are hosts holding a VM that moved within the cooldown (it cannot leave).
        cooling = [h.view.id for h in busy if any(vm.id in self._frozen for vm in h.vms)]
        if cooling:
            plan.notes.append(
                f"{self.name}: not emptied, they hold VMs that migrated within the cooldown: "
                + ", ".join(sorted(cooling))
            )
        self._pinned = {h.idx for h in busy if any(h.view.reserved) or h.view.id in cooling}
        sources = _Sorted([(self.source_key(h), h.idx) for h in busy if h.idx not in self._pinned])
        self._sources = sources
        failed: list[_Host] = []
        while sources.items:
            _, idx = sources.items.pop(0)
            src = self._hosts[idx]
            if not self._evict(src, plan):
                failed.append(src)
        if self.retry_pass:
            for src in failed:
                if not src.released:
                    self._evict(src, plan)
        if self._kept_spare:
            plan.notes.append(
                f"{self.name}: kept up to leave room for arrivals ({', '.join(f'{x:g}' for x in self._spare or ())}): "
                + ", ".join(sorted(set(self._kept_spare)))
            )
        if self._over_budget:
            plan.notes.append(
                f"{self.name}: migration budget ({budget}) reached; not emptied: "
                + ", ".join(sorted(set(self._over_budget)))
            )
        return plan

    def _left(self, plan: Plan) -> int | None:
        """Migrations the budget still allows (None: no budget)."""
        return None if self._budget is None else max(0, self._budget - len(plan.migrations))

    def _full(self, h: _Host) -> bool:
        # Room below the smallest VM in some resource means no VM fits there any more.
        return any(r < m for r, m in zip(h.room, self._vmin, strict=True))

    @staticmethod
    def _capacity(h: _Host) -> list[float]:
        """The room that disappears with ``h``: its own, and what its VMs take elsewhere."""
        return [
            max(0.0, h.room[i] + sum(vm.demand[i] for vm in h.vms)) if h.room[i] != INF else 0.0
            for i in range(4)
        ]

    def _spare_ok(self, src: _Host) -> bool:
        """Whether the room left once ``src`` is gone still holds the ``spare`` asked for."""
        if self._spare is None:
            return True
        gone = self._capacity(src)
        ok = all(
            self._free[i] - gone[i] >= self._spare[i] - 1e-9 for i in range(4) if src.room[i] != INF
        )
        if not ok:
            self._kept_spare.append(src.view.id)
        return ok

    def _evict(self, src: _Host, plan: Plan) -> bool:
        left = self._left(plan)
        if left is not None and len(src.vms) > left:
            self._over_budget.append(src.view.id)
            return False
        if not self._spare_ok(src):
            return False
        tkey = (self.target_key(src), src.idx)
        in_targets = self._in(self._targets, tkey)
        if in_targets:
            self._targets.remove(tkey)
        moves: list[tuple[VMView, _Host]] = []
        ok = True
        for vm in sorted(src.vms, key=lambda v: (-self._size(v), v.id)):
            d = vm.demand
            if any(
                d[0] >= f[0] and d[1] >= f[1] and d[2] >= f[2] and d[3] >= f[3]
                for f in self._hopeless
            ):
                ok = False
                break
            dest = self._choose(d)
            if dest is None:
                # Committed room only shrinks, so a VM that fits nowhere before any tentative
                # move of this source will fit nowhere later, nor will anything larger:
                # remembering it spares the full target scan that failures cost.
                if not moves and len(self._hopeless) < 64:
                    self._hopeless.append(tuple(d))
                ok = False
                break
            r = dest.room
            r[0] -= d[0]
            r[1] -= d[1]
            r[2] -= d[2]
            r[3] -= d[3]
            moves.append((vm, dest))
        if not ok:
            for vm, dest in moves:
                for i in range(4):
                    dest.room[i] += vm.demand[i]
            if in_targets:
                self._targets.add(tkey)
            return False
        src.released = True
        gone = self._capacity(src)
        for i in range(4):
            self._free[i] -= gone[i]
        touched: dict[int, tuple[float, float, _Host]] = {}
        for vm, dest in moves:
            if dest.idx not in touched:
                touched[dest.idx] = (self.target_key(dest), self.source_key(dest), dest)
            dest.vms.append(vm)
            dest.cost += vm.demand[1] + self.overhead
            dest.load += sum(x * w for x, w in zip(vm.demand, dest.inv, strict=True))
            first = self._moved.get(vm.id)
            if first is None:
                self._moved[vm.id] = len(plan.migrations)
                plan.migrations.append(
                    Migration(vm.id, src.view.id, dest.view.id, float(vm.demand[1]))
                )
            else:
                # It already moved in this plan: one migration from where it really is.
                m = plan.migrations[first]
                plan.migrations[first] = Migration(vm.id, m.source, dest.view.id, m.memory)
        for old_t, old_s, dest in touched.values():
            self._targets.remove((old_t, dest.idx))
            if not self._full(dest):
                self._targets.add((self.target_key(dest), dest.idx))
            if self._in(self._sources, (old_s, dest.idx)):
                self._sources.remove((old_s, dest.idx))
                self._sources.add((self.source_key(dest), dest.idx))
        src.vms = []
        plan.power_down.append(src.view.id)
        return True

    @staticmethod
    def _in(s: _Sorted, key: tuple[float, int]) -> bool:
        i = bisect.bisect_left(s.items, key)
        return i < len(s.items) and s.items[i] == key

    def _choose(self, d: Sequence[float]) -> _Host | None:
        # The hot loop of consolidation: fit tests are inlined, no call per target.
        hosts = self._hosts
        d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
        if self.window == 1:
            for _, idx in self._targets.items:
                r = hosts[idx].room
                if d1 <= r[1] and d0 <= r[0] and d2 <= r[2] and d3 <= r[3]:
                    return hosts[idx]
            return None
        best: _Host | None = None
        best_left = INF
        seen = 0
        for _, idx in self._targets.items:
            h = hosts[idx]
            r = h.room
            if not (d1 <= r[1] and d0 <= r[0] and d2 <= r[2] and d3 <= r[3]):
                continue
            left = sum((r[i] - d[i]) * h.inv[i] for i in range(4) if r[i] != INF)
            if left < best_left:
                best, best_left = h, left
            seen += 1
            if seen >= self.window:
                break
        return best


class Sercon(_Evictor):
    """Sercon: least loaded hosts emptied first onto the most loaded ones, first fit."""

    name = "sercon"

    def __init__(self, **options: Any) -> None:
        super().__init__(migration_overhead=0.0, window=1)

    def source_key(self, h: _Host) -> float:
        return h.load

    def target_key(self, h: _Host) -> float:
        return -h.load


class CostAware(_Evictor):
    """Cheapest hosts to empty first, onto the hosts that will be kept, tightest fit."""

    name = "cost-aware"
    retry_pass = True

    def __init__(
        self, *, migration_overhead: float = 262144.0, window: int = 4, **options: Any
    ) -> None:
        # 256 MiB per migration stands for its fixed price: set-up, dirty-page rounds, pause.
        super().__init__(migration_overhead=migration_overhead, window=window)

    def source_key(self, h: _Host) -> float:
        return h.cost

    def target_key(self, h: _Host) -> float:
        return -h.cost

    def consolidate(
        self,
        hosts: Sequence[HostView],
        thresholds: Thresholds,
        *,
        frozen: Collection[str] = (),
        budget: int | None = None,
        spare: Sequence[float] | None = None,
    ) -> Plan:
        plan = super().consolidate(hosts, thresholds, frozen=frozen, budget=budget, spare=spare)
        # Releasing hosts comes first: on the rare cluster where Sercon's order empties more
        # hosts, take its plan (it is cheap to compute) rather than save fewer watts.
        other = Sercon().consolidate(hosts, thresholds, frozen=frozen, budget=budget, spare=spare)
        if len(other.power_down) > len(plan.power_down):
            other.notes.append("cost-aware: Sercon's order released more hosts; its plan is used")
            return other
        return plan


def _registry() -> dict[str, Callable[..., ConsolidationPolicy]]:
    from .repack import Repack  # they build on the classes above
    from .warmstart import WarmRepack

    return {
        Sercon.name: Sercon,
        CostAware.name: CostAware,
        Repack.name: Repack,
        WarmRepack.name: WarmRepack,
    }


CONSOLIDATION_POLICIES: dict[str, Callable[..., ConsolidationPolicy]] = _registry()
# Not repack: on the energy benchmark it saves about 2 % of host-hours but spends more
# migrations per saved host-hour than cost-aware (docs/power.md, "Consolidation").
DEFAULT_CONSOLIDATION = CostAware.name


def make_consolidation_policy(
    name: str = DEFAULT_CONSOLIDATION, **options: Any
) -> ConsolidationPolicy:
    cls = CONSOLIDATION_POLICIES.get(name)
    if cls is None:
        raise UnknownPolicyError(
            f"unknown consolidation policy {name!r}; known: {', '.join(CONSOLIDATION_POLICIES)}"
        )
    policy: ConsolidationPolicy = cls(**options)
    return policy
