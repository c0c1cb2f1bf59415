"""The local controllers a manager role manages, and the capacity held on them.

``Hosts`` is the state the manager's parts share (``VirtualMachines``, ``Migrations``,
``EnergySaver``, ``Reconfiguration``, ``Inventory``): the record of each local controller, the
``Reservations`` made for VMs on their way to one, and the placement thresholds. Whether a VM
fits on a host now is decided here, by the one capacity rule of ``snooze.capacity``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from groupmanager.placement import Thresholds
from snooze import capacity
from snooze.codes import STARTED, VMStatus
from snooze.models import ZERO, Capacity, LocalControllerDescription, Status, add
from snooze.vif.objects import HostInfo

log = logging.getLogger(__name__)

#: Domain states that hold capacity on their host.
HOLDING = STARTED


@dataclass
class LocalControllerRecord:
    description: LocalControllerDescription
    domains: list[dict[str, Any]] = field(default_factory=list)
    usage: Capacity = ZERO
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))
    vm_usage: dict[str, list[float]] = field(default_factory=dict)
    vm_requested: dict[str, Capacity] = field(default_factory=dict)
    #: What the host's VIF plugins plug, at which versions (its join's ``hostInfo``); None: none.
    host_info: HostInfo | None = None
    #: The last monitoring report received whole: a heartbeat saying its ``seq`` is unchanged
    #: stands for it again.
    last_report: Any = None

    def add_vm(self, vm_id: str, requested: Capacity, state: VMStatus = VMStatus.RUNNING, *, uuid: str | None = None) -> None:
        """Record a VM that now runs here (started, or migrated in), before monitoring shows it."""
        self.vm_requested[vm_id] = requested
        self.domains = [d for d in self.domains if d.get("name") != vm_id] + [
            {"name": vm_id, "uuid": uuid, "state": state, "vcpus": requested[0], "memory": requested[1]}]
        if vm_id not in self.description.assigned_virtual_machines:
            self.description.assigned_virtual_machines.append(vm_id)

    def remove_vm(self, vm_id: str) -> Capacity | None:
        """Forget a VM that left (destroyed, or migrated away); its requested capacity, if known."""
        self.domains = [d for d in self.domains if d.get("name") != vm_id]
        if vm_id in self.description.assigned_virtual_machines:
            self.description.assigned_virtual_machines.remove(vm_id)
        return self.vm_requested.pop(vm_id, None)

    def requested(self) -> Capacity:
        """What the VMs running here requested (their libvirt size for VMs adopted at a join)."""
        total = ZERO
        for d in self.domains:
            if d.get("state") in HOLDING:
                total = add(total, self.vm_requested.get(
                    d["name"], (float(d.get("vcpus", 0)), float(d.get("memory", 0)), 0.0, 0.0)))
        return total

    def holds(self) -> bool:
        """True when a VM runs (or is paused) here."""
        return any(d.get("state") in HOLDING for d in self.domains)


class Reservations:
    """Capacity held on local controllers for VMs on their way there (starting, or migrating
    in), each released on every path out of the code that made it.

    ``lock`` is the placement lock: deciding where VMs go and reserving for them happen under
    it (so two batches never count the same free capacity), and so does choosing hosts to power
    down (so a host a plan chose is never powered down under it). A reservation made for a peer
    group manager has a ``ttl``: if the peer never comes back to commit or release it, it expires.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = asyncio.Lock()
        self._clock = clock
        # lc id -> vm id -> capacity held there
        self._held: dict[str, dict[str, Capacity]] = {}
        # (lc id, vm id) -> deadline, for reservations a peer holds
        self._expires: dict[tuple[str, str], float] = {}

    def reserve(self, lc_id: str, vm_id: str, requested: Capacity, ttl: float | None = None) -> None:
        """Hold ``requested`` on ``lc_id`` for ``vm_id``; with ``ttl``, only for that many seconds."""
        self._held.setdefault(lc_id, {})[vm_id] = requested
        if ttl is None:
            self._expires.pop((lc_id, vm_id), None)
        else:
            self._expires[(lc_id, vm_id)] = self._clock() + ttl

    def release(self, lc_id: str, vm_id: str) -> bool:
        """Give back what ``reserve`` held (True if something was held)."""
        self._expires.pop((lc_id, vm_id), None)
        held = self._held.get(lc_id)
        if held is None:
            return False
        found = held.pop(vm_id, None) is not None
        if not held:
            del self._held[lc_id]
        return found

    def release_vm(self, vm_id: str) -> None:
        """Give back whatever is held for ``vm_id``, wherever."""
        for lc_id in [k for k, held in self._held.items() if vm_id in held]:
            self.release(lc_id, vm_id)

    def _expire(self) -> None:
        if not self._expires:
            return
        now = self._clock()
        for (lc_id, vm_id), deadline in list(self._expires.items()):
            if deadline <= now:
                log.warning("the reservation for %s on %s expired: the migration that asked for it never finished",
                            vm_id, lc_id)
                self.release(lc_id, vm_id)

    def on(self, lc_id: str) -> Capacity:
        """What is held on ``lc_id``."""
        self._expire()
        total = ZERO
        for c in self._held.get(lc_id, {}).values():
            total = add(total, c)
        return total

    def total(self) -> Capacity:
        """What is held on all local controllers."""
        self._expire()
        total = ZERO
        for held in self._held.values():
            for c in held.values():
                total = add(total, c)
        return total

    def any_on(self, lc_id: str) -> bool:
        """True when something is held on ``lc_id`` (a host with a reservation is not idle)."""
        self._expire()
        return bool(self._held.get(lc_id))

    def holds(self, vm_id: str) -> bool:
        """True when something is held for ``vm_id`` (it is on its way somewhere)."""
        return any(vm_id in held for held in self._held.values())

    def snapshot(self) -> dict[str, dict[str, Capacity]]:
        """lc id -> vm id -> capacity, as held now (a copy)."""
        self._expire()
        return {lc_id: dict(held) for lc_id, held in self._held.items()}


class Hosts:
    """The local controllers of one manager role (``lcs``), what is reserved on them and the
    thresholds placement fills them to."""

    def __init__(self, thresholds: Thresholds, reservations: Reservations | None = None) -> None:
        self.lcs: dict[str, LocalControllerRecord] = {}
        self.reservations = reservations if reservations is not None else Reservations()
        self.thresholds = thresholds

    def requested_on(self, lc_id: str) -> Capacity:
        rec = self.lcs.get(lc_id)
        return rec.requested() if rec is not None else ZERO

    def reserved_on(self, lc_id: str) -> Capacity:
        return self.reservations.on(lc_id)

    def taken_on(self, lc_id: str) -> Capacity:
        """Requested by the VMs there plus reserved for the VMs on their way there."""
        return add(self.requested_on(lc_id), self.reserved_on(lc_id))

    def fits(self, lc_id: str, requested: Capacity) -> str | None:
        """None if ``requested`` fits on ``lc_id`` now (up to the MID threshold, over all four
        resources: ``snooze.capacity``); else why not."""
        rec = self.lcs.get(lc_id)
        if rec is None:
            return f"{lc_id} is not managed here"
        if rec.description.status != Status.ACTIVE:
            return f"{lc_id} is {rec.description.status.value}"
        room = capacity.headroom(rec.description.total_capacity, rec.requested(), self.reserved_on(lc_id),
                                 self.thresholds.mid)
        return capacity.refusal(requested, room, lc_id)

    def adopt(self, lc_id: str, vm_id: str, requested: Capacity, uuid: str | None = None,
              state: VMStatus = VMStatus.RUNNING) -> None:
        """A VM is now on ``lc_id`` (started, or migrated in): its reservation there becomes the
        VM in one step. Never counted twice, as reserved and as running, which would hide free
        capacity from a concurrent placement."""
        self.reservations.release(lc_id, vm_id)
        rec = self.lcs.get(lc_id)
        if rec is not None:
            rec.add_vm(vm_id, requested, state, uuid=uuid)

    def busy(self, lc_id: str) -> bool:
        """True when ``lc_id`` hosts a VM or has capacity reserved (it is not idle)."""
        rec = self.lcs.get(lc_id)
        return self.reservations.any_on(lc_id) or (rec is not None and rec.holds())

    def in_flight(self, vm_id: str) -> bool:
        """True when capacity is held for ``vm_id`` somewhere (it is starting or moving)."""
        return self.reservations.holds(vm_id)
