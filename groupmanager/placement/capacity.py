"""Capacity arithmetic shared by every policy: headroom under MID, load, norms, thresholds.

A resource whose total is 0 (typically rx/tx that a host does not report) is treated as
unconstrained: it never makes a host infeasible and never counts towards its load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .types import HostView, Thresholds, Vector

INF = math.inf

#: Relative slack on capacity so that a VM that fills a host exactly to MID is not lost to
#: floating-point rounding; 1e-9 of a host is far below anything a hypervisor can allocate.
EPSILON = 1e-9


def headroom(host: HostView, thresholds: Thresholds) -> list[float]:
    """What may still be added per resource: ``MID * total - used - reserved`` (inf if total 0)."""
    out: list[float] = []
    for total, used, reserved, mid in zip(
        host.total, host.used, host.reserved, thresholds.mid, strict=True
    ):
        if total <= 0:
            out.append(INF)
        else:
            out.append(mid * total - used - reserved + EPSILON * total)
    return out


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


def fits(demand: Sequence[float], room: Sequence[float]) -> bool:
    return all(d <= r for d, r in zip(demand, room, strict=True))
