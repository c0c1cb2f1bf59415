"""The capacity rule: whether a demand fits on a host, the same everywhere it is asked.

Placement (``groupmanager.placement``: a plan), the group manager's applier (``Migrations.fits``:
each step of a plan re-checked against fresh state) and the local controller (its own re-check
before it starts or receives a domain) all decide with ``headroom`` and ``fits`` here, over all
four resources of a capacity vector ``[cpu, memory KiB, rx KiB/s, tx KiB/s]``, with one
epsilon. They differ only in the limit they apply: a group manager fills a host up to its MID
threshold, a local controller refuses only what exceeds the host's total.

A resource whose total is 0 (typically rx/tx that a host does not report) is unconstrained: it
never refuses a demand. Pure arithmetic: no I/O, importable by every layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["EPSILON", "FULL", "INF", "RESOURCES", "fits", "headroom", "refusal"]

INF = math.inf

#: Relative slack on capacity, so that a demand that fills a host exactly to its limit is not
#: refused for floating-point rounding; 1e-9 of a host is far below anything a hypervisor can
#: allocate.
EPSILON = 1e-9

#: Names of the four resources, in vector order.
RESOURCES: tuple[str, str, str, str] = ("cpu", "memory", "rx", "tx")

#: The limit of a local controller: the whole host.
FULL: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


def headroom(
    total: Sequence[float], used: Sequence[float], reserved: Sequence[float] | None = None,
    limit: Sequence[float] = FULL,
) -> list[float]:
    """What may still be added per resource: ``limit * total - used - reserved`` plus the
    epsilon (``INF`` where the total is 0)."""
    held = reserved if reserved is not None else (0.0, 0.0, 0.0, 0.0)
    out: list[float] = []
    for t, u, r, f in zip(total, used, held, limit, strict=True):
        out.append(INF if t <= 0 else f * t - u - r + EPSILON * t)
    return out


def fits(demand: Sequence[float], room: Sequence[float]) -> bool:
    """True when ``demand`` fits in ``room`` (a ``headroom``) on every resource."""
    return all(d <= r for d, r in zip(demand, room, strict=True))


def refusal(demand: Sequence[float], room: Sequence[float], where: str) -> str | None:
    """None when ``demand`` fits in ``room``; else why not, naming the first resource short on
    ``where`` (the sentence both the group manager and the local controller report)."""
    for name, d, r in zip(RESOURCES, demand, room, strict=True):
        if d > r:
            return f"{name}: {d:g} needed, {max(0.0, r):g} free on {where}"
    return None
