"""Reconfiguration: a group manager's relocation and consolidation, planned and applied.

This module turns the pure placement package's migration plans into migrations between the
local controllers of this group manager, and is the only place that does so periodically:

* relocation (the original Snooze's): a host whose *estimated* usage is over MAX sheds the
  fewest VMs that bring it back under MID; a host under MIN on every resource is emptied
  (all or nothing) so that the energy saver can power it down;
* consolidation: a consolidation policy (``cost-aware`` by default, or ``sercon``) empties
  as many hosts as it can onto the others.

Plans are computed on a snapshot (no await while one is built, so it is consistent) and
then applied one migration at a time through ``Migrations.migrate``, which reserves the
destination, moves the VM and updates the records. Time passes between the plan and each
step, so every step is re-checked against fresh state first (``Hosts.fits``: the one capacity
rule) and skipped, with the reason in the report, when it no longer holds. At most one
reconfiguration runs at a time. See docs/reconfiguration.md.

It depends on its role's scope, the shared ``Hosts`` and two narrow interfaces: a ``Mover``
(``Migrations``) and a ``PowerDown`` (``EnergySaver``), never on the role itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from groupmanager.manager.hosts import HOLDING, Hosts, LocalControllerRecord
from groupmanager.placement import (
    DEFAULT_CONSOLIDATION,
    HostView,
    Migration,
    Plan,
    PowerState,
    Thresholds,
    Vector,
    VMView,
    is_overloaded,
    is_underloaded,
    make_consolidation_policy,
    make_estimator,
    make_room,
    relocate_overloaded,
    relocate_underloaded,
)
from snooze.codes import ErrorCode
from snooze.events import EventKind
from snooze.http import ApiError
from snooze.models import ZERO, Capacity, Status
from snooze.protocol import Envelope
from snooze.protocol.messages import Reconfigure
from snooze.rpc import RpcError
from snooze.scope import Scope

log = logging.getLogger(__name__)

#: Every task of this module is named with this prefix (``Scope.every``/``spawn``).
TASK_PREFIX = "manager.reconf."
#: The internal message that runs one reconfiguration now (tests, operators, the API).
RECONFIGURE_KIND = Reconfigure.KIND

DEFAULT_RELOCATION_INTERVAL = 0.0  # seconds; 0 = disabled, as consolidation
DEFAULT_CONSOLIDATION_INTERVAL = 0.0
DEFAULT_ESTIMATOR = "average"
DEFAULT_ESTIMATOR_WINDOW = 10


class Mover(Protocol):
    """What the applier needs of ``Migrations``: which VMs are moving, and moving one."""

    @property
    def moving(self) -> Collection[str]: ...

    async def migrate(self, vm_id: str, source_lc: str, dest: dict[str, Any]) -> dict[str, Any]: ...


class PowerDown(Protocol):
    """What a run needs of ``EnergySaver``: powering down the hosts it emptied, and whether
    hosts were just woken (then consolidation waits: see ``settling``)."""

    async def release(self, lc_ids: list[str]) -> list[str]: ...

    def settling(self) -> str | None: ...


@dataclass
class _Outcome:
    """What applying one or more plans did, step by step."""

    applied: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    # Sources with a step skipped or refused: they will not be emptied, whatever follows.
    abandoned: dict[str, str] = field(default_factory=dict)
    received: set[str] = field(default_factory=set)


def _vec(values: Any) -> Vector | None:
    try:
        return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _merge(into: Plan, step: Plan) -> None:
    into.placements.extend(step.placements)
    into.unplaced.update(step.unplaced)
    into.migrations.extend(step.migrations)
    into.power_down.extend(h for h in step.power_down if h not in into.power_down)
    into.wake_up.extend(h for h in step.wake_up if h not in into.wake_up)
    into.notes.extend(step.notes)


def _load(host: HostView) -> float:
    return sum(u / t for u, t in zip(host.used, host.total, strict=True) if t > 0)


class Reconfiguration:
    """Relocation and consolidation for one manager role.

    Wiring: ``start()`` once its role's scope is open (periodic tasks and the
    ``gm.reconfigure`` internal message). Closing the scope stops it: runs stop between steps,
    and a run under way is given the scope's grace to finish the migration it is applying.
    """

    def __init__(self, scope: Scope, hosts: Hosts, mover: Mover, power: PowerDown) -> None:
        self.scope = scope
        self.hosts = hosts
        self.mover = mover
        self.power = power
        # getattr: these options may not exist in GroupManagerSettings yet; the defaults keep
        # the module inert (both intervals 0) until they are configured.
        gm = scope.settings.groupmanager
        self.relocation_interval = float(getattr(gm, "relocation_interval", DEFAULT_RELOCATION_INTERVAL) or 0.0)
        self.consolidation_interval = float(
            getattr(gm, "consolidation_interval", DEFAULT_CONSOLIDATION_INTERVAL) or 0.0
        )
        self.policy_name = str(getattr(gm, "consolidation_policy", DEFAULT_CONSOLIDATION))
        self.estimator_name = str(getattr(gm, "estimator", DEFAULT_ESTIMATOR))
        self.window = max(1, int(getattr(gm, "estimator_window", DEFAULT_ESTIMATOR_WINDOW)))
        # Built now so that a misspelt policy or estimator fails at start-up, not an hour later.
        self.policy = make_consolidation_policy(self.policy_name)
        options: dict[str, Any] = {"window": self.window} if self.estimator_name == "average" else {}
        self.estimator = make_estimator(self.estimator_name, **options)
        self._lock = asyncio.Lock()
        # lc id -> the last monitoring sample it had when a migration touched it. Samples up
        # to that one describe the host before the move, so they must not feed the estimate:
        # an average over them would call a just-relieved host overloaded for a whole window.
        self._touched: dict[str, dict[str, Any]] = {}
        self._received_at: dict[str, float] = {}
        # Consolidation's limits: VM -> when it last migrated (none moves again within
        # migration_cooldown) and a token bucket of migrations (migration_budget per hour and
        # per active host, at most two consolidation intervals' worth saved up: an hour's worth
        # at once would be a burst the rate is meant to prevent).
        self.cooldown = float(getattr(gm, "migration_cooldown", 0.0) or 0.0)
        self.budget_rate = float(getattr(gm, "migration_budget", 0.0) or 0.0)
        self._moved_at: dict[str, float] = {}
        self._tokens: float | None = None
        self._tokens_at = time.monotonic()
        # Room kept free for arrivals: consolidation_headroom times what arrived since the last
        # run (VM -> requested capacity as that run saw them), so that a host emptied now is
        # not woken again by the next submissions.
        self.headroom = float(getattr(gm, "consolidation_headroom", 0.0) or 0.0)
        self.room_before_waking = bool(getattr(gm, "make_room_before_waking", False))
        self._seen: dict[str, Vector] | None = None
        self.last_report: dict[str, Any] | None = None

    @property
    def thresholds(self) -> Thresholds:
        return self.hosts.thresholds

    @property
    def lcs(self) -> dict[str, LocalControllerRecord]:
        return self.hosts.lcs

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.scope.on_message(Reconfigure, self._on_reconfigure, order=True)
        if self.relocation_interval > 0:
            self._every("relocation", self.relocation_interval, self.relocate_once)
        if self.consolidation_interval > 0:
            self._every("consolidation", self.consolidation_interval, self.consolidate_once)

    def _every(self, what: str, interval: float, once: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> None:
        async def tick() -> None:
            # The run is a task of its own that the scope drains when it closes: the periodic
            # loop is cancelled at once, but a migration under way still commits its records
            # instead of leaving a reservation and a stale location behind.
            run = self.scope.spawn(TASK_PREFIX + what + ".run", once(wait=False), drain=True)
            report = await asyncio.shield(run) if run is not None else None
            if report and (report["applied"] or report["failed"]):
                log.info("%s: %d migration(s) applied, %d not; power-down candidates %s", what,
                         len(report["applied"]), len(report["failed"]), report["powered_down_candidates"])

        # The first run waits one interval: at start-up local controllers are still joining
        # and no monitoring has arrived.
        self.scope.every(TASK_PREFIX + what, lambda: interval, tick, wait_first=True)

    async def _on_reconfigure(self, msg: Reconfigure, _env: Envelope) -> Any:
        what = msg.what
        if what == "consolidate":
            return await self.consolidate_once()
        if what == "relocate":
            return await self.relocate_once()
        raise ApiError(ErrorCode.BAD_RECONFIGURATION, f"'what' must be 'consolidate' or 'relocate', not {what!r}",
                       field="what")

    # -- entry points ----------------------------------------------------------------------
    async def relocate_once(self, *, wait: bool = True) -> dict[str, Any]:
        """Relieve overloaded hosts, then empty underloaded ones; return the report."""
        return await self._exclusive("relocate", self._relocate, wait)

    async def consolidate_once(self, *, wait: bool = True) -> dict[str, Any]:
        """Run the consolidation policy over the active hosts and apply its plan."""
        return await self._exclusive("consolidate", self._consolidate, wait)

    async def make_room(self, vm_id: str, requested: Capacity) -> str | None:
        """Before a host is woken for ``vm_id``: one migration between active hosts after
        which it fits on the source (``make_room_before_waking``). The active host that now
        has the room, once the migration is done; None when there is no such migration, it
        failed, the budget is spent or another reconfiguration is running (then the caller
        wakes a host as before)."""
        if not self.room_before_waking or self._lock.locked():
            return None
        async with self._lock:
            views = list(self._candidates(exclude=set()))
            tokens = self._budget(len(views))
            if tokens is not None and tokens < 1:
                log.info("make room for %s: the migration budget is spent; a host is woken", vm_id)
                return None
            plan = make_room(vm_id, requested, views, self.thresholds, frozen=self._frozen(views))
            if not plan.migrations:
                log.info("make room for %s: %s; a host is woken", vm_id, "; ".join(plan.notes))
                return None
            outcome = _Outcome()
            await self._apply(plan, outcome, evacuate=False)
            if not outcome.applied:
                return None
            if self._tokens is not None:
                self._tokens = max(0.0, self._tokens - 1)
            log.info("make room: %s (no wake-up)", plan.notes[-1])
            self.scope.emit(EventKind.RECONFIGURATION, groupManagerId=self.scope.id, what="make-room",
                            policy="make-room", migrations=1, failed=0, poweredDown=[], seconds=outcome.applied[0]["duration"])
            return plan.placements[0].host_id

    async def _exclusive(self, what: str, run: Callable[[Plan, _Outcome], Awaitable[list[str]]],
                         wait: bool) -> dict[str, Any]:
        # Two plans applied at once would each re-check against a state the other is
        # changing; periodic runs skip rather than queue behind a long one.
        if not wait and self._lock.locked():
            return self._report(what, Plan(notes=["another reconfiguration is running"]), _Outcome(), [],
                                0.0, busy=True)
        async with self._lock:
            t0 = time.monotonic()
            plan, outcome = Plan(), _Outcome()
            candidates = await run(plan, outcome)
            # Hosts this run emptied are powered down now (when the energy saver is on).
            released = await self.power.release(candidates)
            report = self._report(what, plan, outcome, candidates, time.monotonic() - t0)
            report["powered_down"] = released
            self.scope.emit(EventKind.RECONFIGURATION, groupManagerId=self.scope.id, what=what, policy=report["policy"],
                            migrations=len(outcome.applied), failed=len(outcome.failed), poweredDown=list(released or []),
                            seconds=report["duration"])
        self.last_report = report
        return report

    def _report(self, what: str, plan: Plan, outcome: _Outcome, candidates: list[str], duration: float,
                busy: bool = False) -> dict[str, Any]:
        return {
            "what": what,
            "policy": self.policy_name if what == "consolidate" else "relocation",
            "plan": plan.to_dict(),
            "applied": outcome.applied,
            "failed": outcome.failed,
            "powered_down_candidates": candidates,
            "busy": busy,
            "duration": round(duration, 3),
        }

    # -- relocation ------------------------------------------------------------------------
    async def _relocate(self, plan: Plan, outcome: _Outcome) -> list[str]:
        th = self.thresholds
        judged = self._judged(usage=True)
        overloaded = [lc for lc, h in judged.items() if is_overloaded(h, th)]
        underloaded = sorted(
            (h for lc, h in judged.items() if lc not in overloaded and h.vms and is_underloaded(h, th)),
            key=lambda h: (_load(h), h.id),
        )
        emptied: list[str] = []
        # Overload first: it hurts the VMs now, while underload only wastes power.
        for lc_id in overloaded:
            if self._halted():
                break
            # Fresh views for every host: the previous host's migrations changed the room.
            host = self._judged(usage=True).get(lc_id)
            if host is None or not is_overloaded(host, th):
                plan.notes.append(f"host {lc_id} is no longer overloaded")
                continue
            step = relocate_overloaded(host, self._candidates(exclude={lc_id}), th, wake_passive=False)
            _merge(plan, step)
            await self._apply(step, outcome, evacuate=False)
        for start in underloaded:
            if self._halted():
                break
            lc_id = start.id
            if lc_id in outcome.received:
                # It just took VMs from an emptied host; moving them on would migrate twice.
                plan.notes.append(f"host {lc_id} received VMs in this round: not emptied")
                continue
            # Evacuated VMs are counted at their requested size: that is what each
            # destination admits (Migrations.fits and the local controller's own check).
            judged = self._judged(usage=False)
            host = judged.get(lc_id)
            if host is None or not host.vms or not is_underloaded(host, th):
                plan.notes.append(f"host {lc_id} is no longer underloaded")
                continue
            others = self._candidates(exclude={lc_id, *emptied})
            # Prefer hosts that are not underloaded themselves: filling one that is next in
            # line would keep it up (it received VMs) and release one host where two could go.
            # When every host is underloaded, any other one will do.
            busy = [c for c in others if c.id in judged and not is_underloaded(judged[c.id], th)]
            step = relocate_underloaded(host, busy, th)
            if step.unplaced or not step.migrations:
                step = relocate_underloaded(host, others, th)
            _merge(plan, step)
            await self._apply(step, outcome, evacuate=True)
            if lc_id in step.power_down and lc_id not in outcome.abandoned:
                emptied.append(lc_id)
        return [lc for lc in emptied if self._is_empty(lc)]

    # -- consolidation -----------------------------------------------------------------------
    def _cooling(self) -> set[str]:
        """Hosts that received VMs within two consolidation intervals: emptying them now would
        undo the last run's work (VMs ping-ponging between half-empty hosts)."""
        interval = float(getattr(self.scope.settings.groupmanager, "consolidation_interval", 0.0) or 0.0)
        now = time.monotonic()
        return {lc for lc, t in self._received_at.items() if now - t < 2 * interval}

    def _frozen(self, views: Sequence[HostView]) -> set[str]:
        """VMs consolidation must not move: those that migrated within migration_cooldown or,
        with no cooldown configured, every VM of a host that received VMs recently."""
        now = time.monotonic()
        if self.cooldown > 0:
            self._moved_at = {vm: t for vm, t in self._moved_at.items() if now - t < self.cooldown}
            return set(self._moved_at)
        cooling = self._cooling()
        return {vm.id for h in views if h.id in cooling for vm in h.vms}

    def _budget(self, hosts: int) -> int | None:
        """Migrations this run may plan (None: no budget), from the token bucket."""
        if self.budget_rate <= 0:
            return None
        now = time.monotonic()
        rate = self.budget_rate * max(1, hosts) / 3600.0  # migrations per second
        window = 2 * self.consolidation_interval if self.consolidation_interval > 0 else 3600.0
        cap = max(1.0, rate * window)
        if self._tokens is None:
            self._tokens = cap
        self._tokens = min(cap, self._tokens + rate * (now - self._tokens_at))
        self._tokens_at = now
        return int(self._tokens + 1e-9)

    def _spare(self, views: Sequence[HostView]) -> Vector | None:
        """Room to leave free: ``headroom`` times the VMs that arrived since the last run."""
        now = {vm.id: vm.requested for h in views for vm in h.vms}
        before, self._seen = self._seen, now
        if self.headroom <= 0 or before is None:
            return None
        arrived = [v for vm, v in now.items() if vm not in before]
        return (self.headroom * sum(v[0] for v in arrived), self.headroom * sum(v[1] for v in arrived),
                self.headroom * sum(v[2] for v in arrived), self.headroom * sum(v[3] for v in arrived))

    async def _consolidate(self, plan: Plan, outcome: _Outcome) -> list[str]:
        settling = self.power.settling()
        if settling is not None:
            # A host was just woken because the room was short: emptying one now would power
            # down a host the next submissions wake again (migrations and a wake-up for nothing).
            plan.notes.append(f"consolidation waits: {settling}")
            log.info("consolidation waits: %s", settling)
            return []
        views = list(self._candidates(exclude=set()))
        budget = self._budget(len(views))
        step = self.policy.consolidate(views, self.thresholds, frozen=self._frozen(views), budget=budget,
                                       spare=self._spare(views))
        _merge(plan, step)
        await self._apply(step, outcome, evacuate=True)
        if self._tokens is not None:
            self._tokens = max(0.0, self._tokens - sum(1 for a in outcome.applied if "duration" in a))
        # Idle hosts are listed without any migration; emptied ones only if every step held.
        return [lc for lc in step.power_down if lc not in outcome.abandoned and self._is_empty(lc)]

    # -- views -----------------------------------------------------------------------------
    def _active(self) -> dict[str, LocalControllerRecord]:
        return {lc: r for lc, r in self.lcs.items() if r.description.status == Status.ACTIVE}

    def _requested(self, rec: LocalControllerRecord, domain: dict[str, Any]) -> Capacity:
        # Domains adopted at join have no request on record: their libvirt size stands for it.
        req = rec.vm_requested.get(str(domain.get("name")))
        if req is not None:
            return req
        return (float(domain.get("vcpus", 0) or 0), float(domain.get("memory", 0) or 0), 0.0, 0.0)

    def _vms(self, rec: LocalControllerRecord, usage: bool) -> tuple[VMView, ...]:
        out = []
        for d in rec.domains:
            if d.get("state") not in HOLDING or "name" not in d:
                continue
            used = _vec(rec.vm_usage.get(d["name"])) if usage else None
            out.append(VMView(str(d["name"]), self._requested(rec, d), used))
        return tuple(sorted(out, key=lambda v: v.id))

    def _samples(self, lc_id: str, rec: LocalControllerRecord) -> list[Vector]:
        history = list(rec.history)
        marker = self._touched.get(lc_id)
        if marker is not None:
            for i in range(len(history) - 1, -1, -1):
                if history[i] is marker:
                    history = history[i + 1 :]
                    break
            else:
                # The marker fell off the bounded history (or the LC re-joined with a new
                # one): every sample left was taken after the move.
                del self._touched[lc_id]
        out = []
        for sample in history[-self.window :]:
            vec = _vec(sample.get("hostUsage")) if isinstance(sample, dict) else None
            if vec is not None:
                out.append(vec)
        return out

    def _estimate(self, lc_id: str, rec: LocalControllerRecord) -> Vector:
        """The host's estimated demand; with no (fresh) history, its requested capacity."""
        return self.estimator.estimate(self._samples(lc_id, rec), rec.requested())

    def _judged(self, *, usage: bool) -> dict[str, HostView]:
        """Active hosts as seen when deciding whether they are over- or underloaded."""
        views = {}
        for lc_id, rec in sorted(self._active().items()):
            views[lc_id] = HostView(lc_id, rec.description.total_capacity, self._estimate(lc_id, rec),
                                    self.hosts.reserved_on(lc_id), PowerState.ACTIVE, True,
                                    self._vms(rec, usage))
        return views

    def _candidates(self, exclude: set[str]) -> Sequence[HostView]:
        """Active hosts as destinations: never emptier than their requested capacity.

        The estimate may be below what the VMs requested (idle guests), but destinations admit
        VMs on requested capacity; planning on the estimate would produce steps the applier
        then refuses, and leave hosts half-emptied.
        """
        views = []
        for lc_id, rec in sorted(self._active().items()):
            if lc_id in exclude:
                continue
            est = self._estimate(lc_id, rec)
            req = rec.requested()
            used = (max(est[0], req[0]), max(est[1], req[1]), max(est[2], req[2]), max(est[3], req[3]))
            views.append(HostView(lc_id, rec.description.total_capacity, used, self.hosts.reserved_on(lc_id),
                                  PowerState.ACTIVE, True, self._vms(rec, usage=False)))
        return views

    def _is_empty(self, lc_id: str) -> bool:
        rec = self.lcs.get(lc_id)
        if rec is None or rec.description.status != Status.ACTIVE:
            return False
        if rec.holds():
            return False
        return self.hosts.reserved_on(lc_id) == ZERO

    # -- the applier -------------------------------------------------------------------------
    def _halted(self) -> bool:
        return self.scope.closed

    def recheck(self, m: Migration) -> tuple[str | None, Capacity]:
        """None if ``m`` still holds on the current state, else why not; and the VM's request."""
        src = self.lcs.get(m.source)
        if src is None:
            return f"source {m.source} left this group manager", ZERO
        domain = next((d for d in src.domains if d.get("name") == m.vm_id), None)
        if domain is None or domain.get("state") not in HOLDING:
            return f"{m.vm_id} no longer runs on {m.source}", ZERO
        requested = self._requested(src, domain)
        if m.vm_id in self.mover.moving or self.hosts.in_flight(m.vm_id):
            return f"{m.vm_id} is already being moved", requested
        dest = self.lcs.get(m.destination)
        if dest is None:
            return f"destination {m.destination} left this group manager", requested
        if dest.description.status != Status.ACTIVE:
            return f"destination {m.destination} is {dest.description.status.value}", requested
        why = self.hosts.fits(m.destination, requested)
        if why is not None:
            return f"no longer fits: {why}", requested
        return None, requested

    def _destination(self, lc_id: str) -> dict[str, Any]:
        d = self.lcs[lc_id].description
        return {"id": lc_id, "address": d.control_data_address.to_json(),
                "hypervisorSettings": dict(d.hypervisor_settings), "status": d.status.value}

    def _mark(self, lc_id: str) -> None:
        rec = self.lcs.get(lc_id)
        if rec is not None and rec.history:
            self._touched[lc_id] = rec.history[-1]

    async def _apply(self, plan: Plan, outcome: _Outcome, *, evacuate: bool) -> None:
        """Run ``plan``'s migrations in order, re-checking each against fresh state.

        With ``evacuate`` the point of a source's migrations is to empty it: once one of them
        is skipped or refused the host stays up anyway, so its remaining steps are not tried
        (those already done are kept: undoing them would cost as many migrations again).
        """
        for m in plan.migrations:
            step = {"vm": m.vm_id, "source": m.source, "destination": m.destination}
            if self._halted():
                outcome.failed.append({**step, "reason": "reconfiguration stopped", "attempted": False})
                continue
            if evacuate and m.source in outcome.abandoned:
                outcome.failed.append({**step, "reason": f"not tried: {outcome.abandoned[m.source]}",
                                       "attempted": False})
                continue
            why, _ = self.recheck(m)
            if why is not None:
                log.info("reconfiguration: %s %s -> %s skipped: %s", m.vm_id, m.source, m.destination, why)
                outcome.failed.append({**step, "reason": why, "attempted": False})
                outcome.abandoned.setdefault(m.source, f"{m.source} cannot be emptied ({m.vm_id}: {why})")
                continue
            t0 = time.monotonic()
            try:
                await self.mover.migrate(m.vm_id, m.source, self._destination(m.destination))
            except (ApiError, RpcError) as exc:
                reason = f"{exc.code}: {exc.message}"
                log.warning("reconfiguration: %s %s -> %s failed: %s", m.vm_id, m.source, m.destination, reason)
                outcome.failed.append({**step, "reason": reason, "attempted": True})
                outcome.abandoned.setdefault(m.source, f"{m.source} cannot be emptied ({m.vm_id}: {reason})")
                continue
            self._mark(m.source)
            self._mark(m.destination)
            outcome.received.add(m.destination)
            self._received_at[m.destination] = time.monotonic()
            self._moved_at[m.vm_id] = time.monotonic()
            duration = round(time.monotonic() - t0, 3)
            log.info("reconfiguration: moved %s from %s to %s in %.2fs", m.vm_id, m.source, m.destination, duration)
            outcome.applied.append({**step, "duration": duration})
