"""Capacity arithmetic shared by every policy: headroom under MID, load, norms, thresholds.

A resource whose total is 0 (typically rx/tx that a host does not report) is treated as
unconstrained: it never makes a host infeasible and never counts towards its load. Whether a
demand fits is the one rule of ``snooze.capacity`` (its epsilon too), which the group manager's
applier and the local controller's re-check use as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from snooze import capacity as rule
from snooze.capacity import EPSILON, INF, fits

from .types import HostView, Thresholds, Vector

__all__ = [
    "EPSILON", "INF", "NORMS", "add", "euclid", "fits", "headroom", "is_overloaded", "is_underloaded", "l1",
    "load", "max_norm", "norm_function", "reference_capacity", "sub", "utilisation",
]


def headroom(host: HostView, thresholds: Thresholds) -> list[float]:
    """What may still be added per resource: ``MID * total - used - reserved`` (inf if total 0)."""
    return rule.headroom(host.total, host.used, host.reserved, thresholds.mid)


def utilisation(host: HostView) -> list[float]:
    """Usage as a fraction of total per constrained resource (unconstrained ones are 0)."""
    return [u / t if t > 0 else 0.0 for u, t in zip(host.used, host.total, strict=True)]


def load(host: HostView) -> float:
    """Normalised L1 load (used + reserved over total), the scalar hosts are ranked by."""
    return sum(
        (u + r) / t for u, r, t in zip(host.used, host.reserved, host.total, strict=True) if t > 0
    )


def is_overloaded(host: HostView, thresholds: Thresholds) -> bool:
    """True when any constrained resource is used beyond MAX."""
    return any(
        t > 0 and u > mx * t
        for u, t, mx in zip(host.used, host.total, thresholds.maximum, strict=True)
    )


def is_underloaded(host: HostView, thresholds: Thresholds) -> bool:
    """True when every constrained resource is used below MIN (an idle host is underloaded)."""
    return all(
        t <= 0 or u < mn * t
        for u, t, mn in zip(host.used, host.total, thresholds.minimum, strict=True)
    )




def l1(vec: Sequence[float]) -> float:
    return sum(abs(x) for x in vec)


def euclid(vec: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vec))


def max_norm(vec: Sequence[float]) -> float:
    return max((abs(x) for x in vec), default=0.0)


NORMS: dict[str, Callable[[Sequence[float]], float]] = {
    "L1": l1,
    "Euclid": euclid,
    "Max": max_norm,
}


def norm_function(name: str) -> Callable[[Sequence[float]], float]:
    """The original's sort norms by name (case-insensitive): L1, Euclid, Max."""
    for key, fn in NORMS.items():
        if key.lower() == name.lower():
            return fn
    raise ValueError(f"unknown sort norm {name!r}; known: {', '.join(NORMS)}")


def reference_capacity(hosts: Sequence[HostView], thresholds: Thresholds) -> Vector:
    """Largest MID capacity per resource: the scale that makes resources comparable."""
    ref = [0.0, 0.0, 0.0, 0.0]
    for h in hosts:
        for d in range(4):
            cap = h.total[d] * thresholds.mid[d]
            if cap > ref[d]:
                ref[d] = cap
    return (ref[0], ref[1], ref[2], ref[3])




def add(a: Sequence[float], b: Sequence[float]) -> Vector:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def sub(a: Sequence[float], b: Sequence[float]) -> Vector:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3])
