"""Dot-product vector bin packing, the default placement policy.

Bin-centric DotProduct from Panigrahy, Talwar, Uyeda and Wieder, "Heuristics for Vector Bin
Packing" (2011): hosts are filled one at a time, and each step puts on the current host the
VM whose demand vector has the largest dot product with the host's remaining room, both
normalised by the host's capacity and weighted by how scarce each resource is in the demand
not placed yet. Aligning demand with room fills hosts evenly on every resource, which is
what lets it beat first-fit decreasing on host count.

Around that core (docs/placement.md lists them in order):

* Host order: busy hosts fullest first, then empty hosts, the model that holds most of the
  remaining demand first (re-chosen at every host).
* Planned fill: a host's fill is simulated on class representatives, greedy and with one VM
  fewer at each of the first steps, and the plan that fills it most is committed.
* Small batches are cross-checked against first-fit decreasing (``DotProduct.place``).

Making it fast in pure Python:

* Interchangeable VMs (same demand, same constraints) form one *class*; a step scores
  classes, not VMs. When a batch has too many distinct demands, classes are the cells of a
  k-d tree over normalised demand (built on a sample, split where demands spread most,
  at most ``max_classes`` cells); scores use the cell's mean and every VM is still checked
  exactly against the room.
* Placing a VM of class t lowers every class j's score by dot(j, t), so the number of
  copies of t that stay the best choice has a closed form: a whole run of identical VMs is
  committed in one step instead of one rescoring per VM.
* A host that starts like the previous one (same model, room and weights) replays its
  steps, every VM still checked exactly, instead of scoring and planning again.
* A host is skipped in O(1) when its room is below the smallest demand of the batch; a
  class that cannot fit in the current host is dropped lazily, when it comes out best, so
  a step costs one scoring pass over the candidates.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from operator import mul

from .batch import Batch, BatchPolicy
from .filters import Filter
from .greedy import FirstFit
from .state import Slot, Unit
from .types import HostView, Plan, Thresholds, VMRequest

INF = math.inf

#: Cross-check with first-fit decreasing when (units x hosts the plan opened) is at most
#: this: about a tenth of a second of extra work, never on the very large batches.
CROSS_CHECK_WORK = 400_000

#: Empty hosts are re-chosen among at most this many distinct models at every host.
MAX_MODELS = 64

#: Planning a host's fill tries backing off at each of the first PLAN_VARIANTS steps of
#: the greedy run, unless that run leaves at most PLAN_SLACK free on every resource.
PLAN_VARIANTS = 4
PLAN_SLACK = 0.03


class _Class:
    __slots__ = (
        "members",
        "head",
        "left",
        "rep",
        "low",
        "constrained",
        "anti",
        "exact",
        "taken",
        "accepts",
    )

    def __init__(self, members: list[Unit], dims: list[int], exact: bool) -> None:
        self.members = members
        self.head = 0
        self.left = len(members)
        first = members[0]
        if exact:
            rep = [first.demand[d] for d in dims]
            low = first.demand
        else:
            n = float(len(members))
            columns = list(zip(*[u.demand for u in members], strict=True))
            rep = [sum(columns[d]) / n for d in dims]
            low = (min(columns[0]), min(columns[1]), min(columns[2]), min(columns[3]))
        self.rep = rep
        # Smallest demand per resource over all four: a host whose room is below it on any
        # resource cannot take any member.
        self.low = low
        self.constrained = first.constrained
        self.anti = first.anti_groups
        self.exact = exact
        self.taken = [False] * len(members)
        self.accepts: dict[int, bool] = {}


def _dots(vectors: list[list[float]], x: list[float]) -> list[float]:
    """``[dot(v, x) for v in vectors]``, unrolled for the usual one to four resources."""
    n = len(x)
    if n == 2:
        x0, x1 = x
        return [a * x0 + b * x1 for a, b in vectors]
    if n == 1:
        (x0,) = x
        return [v[0] * x0 for v in vectors]
    if n == 3:
        x0, x1, x2 = x
        return [a * x0 + b * x1 + c * x2 for a, b, c in vectors]
    return [sum(map(mul, v, x)) for v in vectors]


class DotProduct(BatchPolicy):
    """Bin-centric dot-product packing (see module docstring)."""

    name = "dot-product"

    def __init__(
        self,
        *,
        thresholds: Thresholds | None = None,
        sort_norm: str = "L1",
        weights: str = "scarcity",
        max_classes: int = 64,
        lookahead: bool = True,
        cross_check: bool = True,
        wake_passive: bool = True,
        filters: Sequence[Filter] | None = None,
    ) -> None:
        super().__init__(thresholds=thresholds, wake_passive=wake_passive, filters=filters)
        if weights not in ("scarcity", "uniform"):
            raise ValueError(f"weights must be 'scarcity' or 'uniform', not {weights!r}")
        self.weights = weights
        self.max_classes = max(1, max_classes)
        self.cross_check = cross_check
        self.lookahead = lookahead
        self.sort_norm = (
            sort_norm  # accepted for a uniform factory signature; packing needs no norm
        )
        self._ffd = FirstFit(
            thresholds=thresholds,
            sort_norm=sort_norm,
            decreasing=True,
            wake_passive=wake_passive,
            filters=filters,
        )

    def place(self, requests: Sequence[VMRequest], hosts: Sequence[HostView]) -> Plan:
        """Dot-product packing; on small batches, first-fit decreasing's plan if it is better.

        Dot-product packing is ahead of FFD on heterogeneous hosts and on demands that
        complement each other, but on identical hosts with independent demands FFD
        sometimes closes one host more. When that check is cheap (units x hosts opened at
        most ``CROSS_CHECK_WORK``) FFD runs too, and its plan is returned only if it places
        more VMs, wakes fewer hosts, or opens fewer hosts, in that order.
        """
        plan = super().place(requests, hosts)
        if not self.cross_check or not requests:
            return plan
        # FFD scans, per VM, the hosts in use until one fits, and every host for a VM that
        # fits nowhere: an estimate of its work, to run it only when that is cheap.
        touched = len({p.host_id for p in plan.placements})
        if len(requests) * max(touched, 1) + len(plan.unplaced) * len(hosts) > CROSS_CHECK_WORK:
            return plan
        opened = _opened(plan, hosts)
        other = self._ffd.place(requests, hosts)
        mine = (len(plan.unplaced), len(plan.wake_up), opened)
        theirs = (len(other.unplaced), len(other.wake_up), _opened(other, hosts))
        return other if theirs < mine else plan

    # -- set-up -------------------------------------------------------------------------

    def place_free(self, batch: Batch, units: list[Unit]) -> list[Unit]:
        powered = [s for s in batch.powered if min(s.room) >= 0]
        wakeable = [s for s in batch.wakeable if min(s.room) >= 0]
        # Resources nobody asks for, or no host limits, cannot decide anything.
        dims = [
            d
            for d in range(4)
            if any(u.demand[d] > 0 for u in units)
            and any(s.room[d] != INF for s in powered + wakeable)
        ]
        need = [sum(u.demand[d] for u in units) for d in dims]
        roomsum = [sum(s.room[d] for s in powered + wakeable if s.room[d] != INF) for d in dims]
        classes = self._classes(units, dims, powered + wakeable)
        floor = [min(c.low[d] for c in classes) for d in range(4)]
        f0, f1, f2, f3 = floor
        live = classes
        rem = list(need)  # demand not placed yet, per resource in dims
        # How the last host with a given total and starting room was filled: the next host
        # that starts the same way (typically: the next empty host of the same model)
        # replays it, every VM still checked exactly, instead of rescoring every step.
        patterns: dict[tuple[float, ...], list[tuple[_Class, int]]] = {}
        for tier in (powered, wakeable):
            for slot in self._hosts(tier, dims, rem):
                room = slot.room
                # Most hosts late in a big batch are full: skip them without scoring anything.
                if f0 > room[0] or f1 > room[1] or f2 > room[2] or f3 > room[3]:
                    continue
                before = [room[d] for d in dims]
                weights = self._weights(rem, roomsum)
                key = (*slot.view.total, *room, *weights) if not slot.anti_groups else None
                pattern = patterns.get(key) if key is not None else None
                steps = self._fill(batch, slot, live, dims, weights, pattern)
                if key is not None and steps is not None:
                    patterns[key] = steps
                for i, d in enumerate(dims):
                    if before[i] != INF:
                        rem[i] -= before[i] - room[d]
                if any(not c.left for c in live):
                    live = [c for c in live if c.left]
                    if not live:
                        break
            if not live:
                break
        return [u for c in classes for u in c.members if u.slot is None]

    def _weights(self, rem: list[float], roomsum: list[float]) -> list[float]:
        if self.weights == "uniform":
            return [1.0] * len(rem)
        out = [max(n, 0.0) / r if r > 0 else 1.0 for n, r in zip(rem, roomsum, strict=True)]
        top = max(out, default=1.0) or 1.0
        # Scarcity weighting (Panigrahy's averaged-demand weights), over the demand not
        # placed yet: a resource the rest of the batch nearly exhausts dominates the
        # alignment; the floor keeps plentiful ones in play. Re-weighting as the batch is
        # consumed keeps the VMs heavy on one resource from all being used up first.
        return [round(max(w / top, 0.05), 2) for w in out]

    def _classes(self, units: list[Unit], dims: list[int], slots: list[Slot]) -> list[_Class]:
        exact = _exact_groups(units, self.max_classes)
        if exact is not None:
            groups = exact
            is_exact = True
        else:
            groups = self._cells(units, dims, slots)
            is_exact = False
        classes = []
        if not is_exact:
            # Largest first within a cell (normalised, so memory in KiB does not swamp
            # cpu); the sort is stable, so equal VMs keep their batch order.
            inv = [0.0, 0.0, 0.0, 0.0]
            for d in dims:
                caps = [s.view.total[d] for s in slots if s.room[d] != INF]
                inv[d] = 1.0 / (max(caps, default=1.0) or 1.0)
            i0, i1, i2, i3 = inv
            for members in groups:
                members.sort(
                    key=lambda u: (
                        -(u.demand[0] * i0 + u.demand[1] * i1 + u.demand[2] * i2 + u.demand[3] * i3)
                    )
                )
        for members in groups:
            classes.append(_Class(members, dims, is_exact))
        # Larger classes first, so that ties in score go to the bigger VM.
        classes.sort(key=lambda c: -sum(c.rep))
        return classes

    def _cells(self, units: list[Unit], dims: list[int], slots: list[Slot]) -> list[list[Unit]]:
        """Cells of similar demand, per constraint signature, ``max_classes`` in all."""
        scale = []
        for d in dims:
            caps = [s.view.total[d] * self.thresholds.mid[d] for s in slots if s.room[d] != INF]
            scale.append(max(caps, default=1.0) or 1.0)
        by_sig: dict[tuple[object, ...] | None, list[Unit]] = {}
        for u in units:
            key = (
                (u.pins, u.excluded, u.networks, u.anti_groups)
                if (u.pins or u.excluded or u.networks or u.anti_groups)
                else None
            )
            group = by_sig.get(key)
            if group is None:
                by_sig[key] = [u]
            else:
                group.append(u)
        out: list[list[Unit]] = []
        for members in by_sig.values():
            share = max(1, self.max_classes * len(members) // len(units))
            out.extend(_kd_cells(members, dims, scale, share))
        return out

    def _hosts(self, slots: list[Slot], dims: list[int], rem: list[float]) -> Iterator[Slot]:
        """Hosts in the order they are filled; ``rem`` (demand left) is updated by the caller.

        Busy hosts first, fullest first: packing onto them costs no extra powered host.
        Then empty hosts, the one that holds most of the demand left first: per host model,
        the fraction of the remaining demand it takes on its scarcest resource. Re-chosen at
        every host, so on a mixed fleet cpu-rich and memory-rich models alternate as the
        remaining demand tilts one way or the other, and a model that is big on a resource
        the batch barely uses does not come first.
        """
        yield from sorted((s for s in slots if s.busy), key=lambda s: (-s.load, s.index))
        models: dict[tuple[float, ...], list[Slot]] = {}
        for s in slots:
            if not s.busy:
                models.setdefault(tuple(s.room), []).append(s)
        queues = [(key, group[::-1]) for key, group in models.items()]  # pop() = lowest index

        def value(room: tuple[float, ...]) -> tuple[float, float]:
            shares = [room[d] / r if r > 0 else INF for d, r in zip(dims, rem, strict=True)]
            return (min(shares, default=0.0), sum(x for x in shares if x != INF))

        if len(queues) > MAX_MODELS:
            # Too many distinct empty hosts to re-choose among at every host: order them once.
            yield from sorted(
                (s for _, group in queues for s in group),
                key=lambda s: (-value(tuple(s.room))[0], s.index),
            )
            return
        while queues:
            if len(queues) == 1:
                yield from reversed(queues[0][1])
                return
            best = max(queues, key=lambda q: (*value(q[0]), -q[1][-1].index))
            yield best[1].pop()
            if not best[1]:
                queues.remove(best)

    # -- the packing loop ---------------------------------------------------------------

    def _fill(
        self,
        batch: Batch,
        slot: Slot,
        classes: list[_Class],
        dims: list[int],
        weights: list[float],
        pattern: list[tuple[_Class, int]] | None,
    ) -> list[tuple[_Class, int]] | None:
        """Fill one host; returns the steps taken, or None if a replayed pattern held.

        Without a pattern, the host's fill is first planned on class representatives (see
        ``_plan``); the plan is committed like a replayed pattern, every VM checked exactly,
        and the exact scoring loop tops the host up.
        """
        room = slot.room
        total = slot.view.total
        # Normalising by this host's own capacity (squared: once for the demand, once for
        # the room) is what makes the dot product meaningful on heterogeneous hosts.
        inv2 = [
            w / (total[d] * total[d]) if room[d] != INF and total[d] > 0 else 0.0
            for d, w in zip(dims, weights, strict=True)
        ]
        steps: list[tuple[_Class, int]] = []
        planned = False
        if not pattern and self.lookahead:
            cands = self._candidates(batch, slot, classes)
            if not cands:
                return steps
            scale = [1.0 / total[d] if room[d] != INF and total[d] > 0 else 0.0 for d in dims]
            pattern = _plan(cands, [room[d] for d in dims], inv2, scale, weights)
            planned = True
        replayed = False
        if pattern:
            for c, n in pattern:
                got = 0
                if not c.constrained or self._accepts(batch, c, slot):
                    got = self._take(batch, c, slot, n, checked=False)
                if got:
                    steps.append((c, got))
                if got < n:
                    break
            else:
                replayed = not planned
                if replayed and pattern[0][0].exact and not any(c.constrained for c in classes):
                    # Identical VMs, identical room: the scoring would end where it did.
                    return None
        cands = self._candidates(batch, slot, classes)
        vecs = [c.rep for c in cands]
        groups = slot.anti_groups
        while cands:
            rs = [room[d] * w if w else 0.0 for d, w in zip(dims, inv2, strict=True)]
            scores = _dots(vecs, rs)
            # The best candidate that still fits; those that no longer do drop out here.
            while True:
                best_s = max(scores)
                i = scores.index(best_s)
                c = cands[i]
                lo = c.low
                if (
                    c.left
                    and lo[0] <= room[0]
                    and lo[1] <= room[1]
                    and lo[2] <= room[2]
                    and lo[3] <= room[3]
                    and not (c.anti and not c.anti.isdisjoint(groups))
                ):
                    break
                del cands[i], vecs[i], scores[i]
                if not cands:
                    return None if replayed else steps
            k = 1
            if c.left > 1 and not c.anti:
                k = _run_length(c.rep, c.left, best_s, vecs, scores, [room[d] for d in dims], inv2)
            got = self._take(batch, c, slot, k)
            if got:
                steps.append((c, got))
            if not got or not c.left:
                del cands[i], vecs[i]
        return None if replayed else steps

    def _candidates(self, batch: Batch, slot: Slot, classes: list[_Class]) -> list[_Class]:
        """Classes with VMs left whose smallest demand fits the host, constraints allowing."""
        r0, r1, r2, r3 = slot.room
        cands = []
        for c in classes:
            lo = c.low
            if not c.left or lo[0] > r0 or lo[1] > r1 or lo[2] > r2 or lo[3] > r3:
                continue
            if c.constrained and not self._accepts(batch, c, slot):
                continue
            cands.append(c)
        return cands

    def _take(self, batch: Batch, c: _Class, slot: Slot, k: int, checked: bool = True) -> int:
        """Commit up to k members of c that fit, largest first; returns how many.

        ``checked``: k is already known to fit (the run length was bounded by the room).
        """
        if k <= 0:
            return 0
        if c.exact and not c.anti:
            # Identical members: the room bounds how many fit.
            if not checked:
                dem = c.members[0].demand
                room = slot.room
                for d in range(4):
                    if dem[d] > 0 and room[d] != INF:
                        # A tiny (denormal) demand makes the quotient overflow to inf: no bound.
                        fit = room[d] / dem[d]
                        if fit < k:
                            k = int(fit)
                    if k <= 0:
                        return 0
            run = c.members[c.head : c.head + k]
            batch.commit_run(run, slot)
            c.head += len(run)
            c.left -= len(run)
            return len(run)
        placed = misses = 0
        room = slot.room
        members = c.members
        taken = c.taken
        i = head = c.head
        n = len(members)
        commit = batch.commit
        while i < n:
            if not taken[i]:
                u = members[i]
                dem = u.demand
                if (
                    dem[0] <= room[0]
                    and dem[1] <= room[1]
                    and dem[2] <= room[2]
                    and dem[3] <= room[3]
                    and (not u.anti_groups or u.anti_groups.isdisjoint(slot.anti_groups))
                ):
                    commit(u, slot)
                    taken[i] = True
                    placed += 1
                    if placed >= k or c.anti:
                        break
                elif c.exact:
                    break  # identical members: if one does not fit, none does
                else:
                    misses += 1
                    if misses > 16:
                        break  # bounded search; the batch's fallback catches what is left
            i += 1
        c.left -= placed
        while head < n and taken[head]:
            head += 1
        c.head = head
        return placed

    @staticmethod
    def _accepts(batch: Batch, c: _Class, slot: Slot) -> bool:
        # Static constraints (pins, exclusions, networks) do not change during a batch.
        got = c.accepts.get(slot.index)
        if got is None:
            u = c.members[0]
            got = all(f(u, slot) for f in batch.filters if f.name != "capacity")
            if not c.anti:
                c.accepts[slot.index] = got
        return got


def _run_length(
    rep: list[float],
    left: int,
    s_t: float,
    vecs: list[list[float]],
    scores: list[float],
    room: list[float],
    inv2: list[float],
) -> int:
    """How many VMs of demand ``rep`` stay the best choice as they are added one by one.

    ``vecs`` and ``scores`` are every candidate's demand and current score, ``room`` the
    room on the same resources; the count is capped by ``left`` and by what fits.
    """
    k = left
    for a, x in zip(rep, room, strict=True):
        if a > 0 and x != INF:
            q = x / a  # may overflow to inf for denormal demands
            if q < k:
                k = max(1, int(q))
    if k <= 1:
        return 1
    tv = [a * w for a, w in zip(rep, inv2, strict=True)]
    tt = sum(map(mul, rep, tv))
    for s_c, ct in zip(scores, _dots(vecs, tv), strict=True):
        # Adding one VM lowers its own class's score by tt and class c's by ct: c
        # overtakes after q more.
        if ct < tt:
            q = (s_t - s_c) / (tt - ct)
            if q + 1 < k:
                k = int(q) + 1
                if k <= 1:
                    return 1
    return k


def _simulate(
    reps: list[list[float]], left: list[int], room: list[float], inv2: list[float], banned: int
) -> list[tuple[int, int]]:
    """Dot-product fill of ``room`` by class representatives, committing nothing.

    Returns (class index, count) steps; ``left`` and ``room`` are consumed in place.
    """
    alive = _fitting([i for i in range(len(reps)) if i != banned and left[i] > 0], reps, room)
    steps: list[tuple[int, int]] = []
    while alive:
        rs = [x * w if w else 0.0 for x, w in zip(room, inv2, strict=True)]
        vecs = [reps[i] for i in alive]
        scores = _dots(vecs, rs)
        best_s = max(scores)
        i = alive[scores.index(best_s)]
        rep = reps[i]
        k = _run_length(rep, left[i], best_s, vecs, scores, room, inv2) if left[i] > 1 else 1
        steps.append((i, k))
        left[i] -= k
        for x, a in enumerate(rep):
            room[x] -= a * k
        if not left[i]:
            alive.remove(i)
        alive = _fitting(alive, reps, room)
    return steps


def _fitting(idx: list[int], reps: list[list[float]], room: list[float]) -> list[int]:
    """The indices in ``idx`` whose representative fits ``room``."""
    if len(room) == 2:
        r0, r1 = room
        return [i for i in idx if reps[i][0] <= r0 and reps[i][1] <= r1]
    return [i for i in idx if all(a <= x for a, x in zip(reps[i], room, strict=True))]


def _plan(
    cands: list[_Class],
    room: list[float],
    inv2: list[float],
    scale: list[float],
    weights: list[float],
) -> list[tuple[_Class, int]]:
    """The best fill found for a host with this room, on class representatives.

    The plain dot-product run, and for each of its first ``PLAN_VARIANTS`` steps the run
    that takes one VM fewer there and then goes on without that class; the plan that puts
    the most demand on the host (normalised by its capacity, ``scale`` = 1 / capacity,
    and weighted by scarcity) wins. Greedy dot product takes the biggest VMs while they fit, which can fill one
    resource and leave another half empty; backing off by one VM often lets smaller VMs
    fill both. A base run that leaves under ``PLAN_SLACK`` of the host free on every
    resource is kept as it is.
    """
    reps = [c.rep for c in cands]
    left = [1 if c.anti else c.left for c in cands]
    value_of = [w * f for w, f in zip(weights, scale, strict=True)]
    gain = [sum(map(mul, rep, value_of)) for rep in reps]
    end = list(room)
    base = _simulate(reps, list(left), end, inv2, -1)
    if all(x * f <= PLAN_SLACK for x, f in zip(end, scale, strict=True) if f):
        return [(cands[i], n) for i, n in base]
    best, best_value = base, sum(gain[i] * n for i, n in base)
    done = list(room)  # room once the first j steps of the base plan are taken
    avail = list(left)
    for j, (i, n) in enumerate(base[:PLAN_VARIANTS]):
        rest = [x - a * (n - 1) for x, a in zip(done, reps[i], strict=True)]
        others = list(avail)
        others[i] -= n - 1
        plan = base[:j] + ([(i, n - 1)] if n > 1 else []) + _simulate(reps, others, rest, inv2, i)
        value = sum(gain[c] * m for c, m in plan)
        if value > best_value * (1 + 1e-9):
            best, best_value = plan, value
        done = [x - a * n for x, a in zip(done, reps[i], strict=True)]
        avail[i] -= n
    return [(cands[i], n) for i, n in best]


def _exact_groups(units: list[Unit], limit: int) -> list[list[Unit]] | None:
    """Interchangeable units grouped together, or None as soon as there are over ``limit``."""
    groups: dict[object, list[Unit]] = {}
    for u in units:
        # Unconstrained units (the bulk) are keyed by demand alone, the others by their
        # full signature (a 5-tuple, so the two kinds of key never collide).
        key = u.signature() if (u.pins or u.excluded or u.networks or u.anti_groups) else u.demand
        group = groups.get(key)
        if group is None:
            if len(groups) >= limit:
                return None
            groups[key] = [u]
        else:
            group.append(u)
    return list(groups.values())


def _opened(plan: Plan, hosts: Sequence[HostView]) -> int:
    """Hosts that run nothing and expect nothing yet but receive VMs in the plan."""
    busy = {h.id for h in hosts if h.vms or any(h.used) or any(h.reserved)}
    return len({p.host_id for p in plan.placements} - busy)


def _kd_cells(
    units: list[Unit], dims: list[int], scale: list[float], leaves: int
) -> list[list[Unit]]:
    """Split units into at most ``leaves`` cells of similar demand.

    A k-d tree built on a sample of at most about 4,096 demands (normalised by ``scale``):
    the cell whose demands spread most (on its widest resource) is split at its median
    first, so cells end up about equally narrow wherever the demands lie (a correlated
    batch gets its cells along the diagonal, not on a square grid).
    """
    if not dims:
        return [units]
    step = max(1, len(units) // 4096)
    sample = [[u.demand[d] / sc for d, sc in zip(dims, scale, strict=True)] for u in units[::step]]
    k = len(dims)

    def widest(pts: list[list[float]]) -> tuple[float, int]:
        best, axis = 0.0, 0
        for i in range(k):
            col = [p[i] for p in pts]
            e = max(col) - min(col)
            if e > best:
                best, axis = e, i
        return best, axis

    # Node n splits on resource axis[n] at threshold[n] (in the demand's own units) into
    # children n1 and n1 + 1 with n1 = left[n]; a leaf has axis -1.
    axis_of = [-1]
    threshold_of = [0.0]
    left_of = [0]
    points = {0: sample}
    spread, axis = widest(sample)
    heap = [(-spread, 0, axis)]
    n_leaves = 1
    while heap and n_leaves < leaves:
        neg, node, axis = heapq.heappop(heap)
        pts = points[node]
        if -neg <= 0.0 or len(pts) < 2:
            break  # the widest cell left cannot be split: none can
        pts.sort(key=lambda p: p[axis])
        threshold = pts[len(pts) // 2][axis]
        left = [p for p in pts if p[axis] < threshold]
        if not left:  # the median is the minimum: split just above it instead
            threshold = min((p[axis] for p in pts if p[axis] > threshold), default=threshold)
            left = [p for p in pts if p[axis] < threshold]
        right = [p for p in pts if p[axis] >= threshold]
        if not left or not right:
            continue
        child = len(axis_of)
        axis_of[node] = dims[axis]
        threshold_of[node] = threshold * scale[axis]
        left_of[node] = child
        del points[node]
        for c, cp in ((child, left), (child + 1, right)):
            axis_of.append(-1)
            threshold_of.append(0.0)
            left_of.append(0)
            points[c] = cp
            s, a = widest(cp)
            heapq.heappush(heap, (-s, c, a))
        n_leaves += 1
    if n_leaves == 1:
        return [units]
    cells: dict[int, list[Unit]] = {}
    for u in units:
        dem = u.demand
        node = 0
        ax = axis_of[0]
        while ax >= 0:
            node = left_of[node] + (dem[ax] >= threshold_of[node])
            ax = axis_of[node]
        group = cells.get(node)
        if group is None:
            cells[node] = [u]
        else:
            group.append(u)
    return list(cells.values())
