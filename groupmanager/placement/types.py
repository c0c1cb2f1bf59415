"""The plain data that placement reads and writes: host and VM views in, plans out.

Everything here is immutable input or a JSON-able result; nothing holds a socket, a
lock or a clock, so a plan can be computed on any snapshot and checked by whoever
applies it. Capacity vectors keep the original Snooze order and units:
``(cpu vcpus, memory KiB, network rx KiB/s, network tx KiB/s)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from snooze.capacity import RESOURCES

Vector = tuple[float, float, float, float]

ZERO: Vector = (0.0, 0.0, 0.0, 0.0)

__all__ = [
    "DEFAULT_THRESHOLDS", "RESOURCES", "ZERO", "HostView", "Migration", "Placement", "Plan", "PowerState",
    "Rejection", "Thresholds", "UnknownPolicyError", "VMRequest", "VMView", "Vector",
]


class PowerState(str, Enum):
    """A host's power state as placement sees it."""

    ACTIVE = "ACTIVE"
    PASSIVE = "PASSIVE"  # powered down or suspended; usable only after a wake-up
    WAKING = "WAKING"  # a wake-up is under way: its capacity is coming, no new wake-up needed


class UnknownPolicyError(ValueError):
    """Raised for a policy, estimator or consolidation name nobody registered."""


@dataclass(frozen=True)
class VMView:
    """A VM already running on a host. ``used`` is its estimated demand (None: use requested)."""

    id: str
    requested: Vector
    used: Vector | None = None

    @property
    def demand(self) -> Vector:
        return self.requested if self.used is None else self.used


@dataclass(frozen=True)
class HostView:
    """A read-only snapshot of one host (or, for the group leader, one group manager).

    ``used`` is the estimated usage of the VMs on it and ``reserved`` the capacity held for
    VMs in flight; free capacity is ``total - used - reserved``. ``networks`` lists the
    networks with a free address; empty means no network constraint is known.

    The network model (issue 12): ``subnets`` are the subnets among the requests' that this
    host serves (None: every subnet, nothing is known to restrict it; a group manager serves
    the subnets its local controllers serve), ``full_subnets`` those with no free address left
    for the VMs being placed (a VM whose address is already reserved needs none: its caller
    leaves them out).
    """

    id: str
    total: Vector
    used: Vector = ZERO
    reserved: Vector = ZERO
    power: PowerState = PowerState.ACTIVE
    alive: bool = True
    vms: tuple[VMView, ...] = ()
    networks: frozenset[str] = frozenset()
    subnets: frozenset[str] | None = None
    full_subnets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class VMRequest:
    """One VM to place, with its constraints."""

    id: str
    requested: Vector
    pinned_host: str | None = None
    affinity_group: str | None = None  # VMs of one group share one host
    anti_affinity_group: str | None = None  # VMs of one group never share a host
    network: str | None = None  # the subnet (network model) its address is in, when hosts differ
    excluded_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Placement:
    vm_id: str
    host_id: str


@dataclass(frozen=True)
class Migration:
    vm_id: str
    source: str
    destination: str
    memory: float  # KiB to copy: the migration's cost


@dataclass
class Rejection:
    """Why a VM was not placed: a sentence, and how many hosts each filter rejected."""

    reason: str
    filtered: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    """A placement or reconfiguration decision, as plain data for the applier to re-check."""

    placements: list[Placement] = field(default_factory=list)
    unplaced: dict[str, Rejection] = field(default_factory=dict)
    migrations: list[Migration] = field(default_factory=list)
    power_down: list[str] = field(default_factory=list)
    wake_up: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why a relocation or consolidation stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "placements": [{"vm_id": p.vm_id, "host_id": p.host_id} for p in self.placements],
            "unplaced": {
                vm: {"reason": r.reason, "filtered": dict(r.filtered)}
                for vm, r in self.unplaced.items()
            },
            "migrations": [
                {
                    "vm_id": m.vm_id,
                    "source": m.source,
                    "destination": m.destination,
                    "memory": m.memory,
                }
                for m in self.migrations
            ],
            "power_down": list(self.power_down),
            "wake_up": list(self.wake_up),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Thresholds:
    """Utilisation fractions (0..1) per resource: the original's MIN, MID and MAX.

    A host under ``minimum`` on every resource is underloaded, one over ``maximum`` on any
    resource is overloaded, and placement never fills a host past ``mid``.
    """

    minimum: Vector = (0.2, 0.2, 0.2, 0.2)
    mid: Vector = (0.9, 0.9, 0.9, 0.9)
    maximum: Vector = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("minimum", "mid", "maximum"):
            vec = getattr(self, name)
            if len(vec) != 4 or any(not 0.0 <= x <= 1.0 for x in vec):
                raise ValueError(f"threshold {name} must be 4 fractions in [0, 1], got {vec!r}")

    @classmethod
    def uniform(cls, minimum: float = 0.2, mid: float = 0.9, maximum: float = 1.0) -> Thresholds:
        return cls((minimum,) * 4, (mid,) * 4, (maximum,) * 4)


DEFAULT_THRESHOLDS = Thresholds()
