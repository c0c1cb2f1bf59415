"""Policies by name: the built-ins, then plugins from the ``snooze.placement`` entry points.

Plugins are found only through declared entry points (never by scanning a directory), so
what can run is what an installed distribution says it provides. A plugin is a class with a
``name`` and a ``place(requests, hosts) -> Plan`` method; it is constructed with the same
keyword arguments as the built-ins (``thresholds``, ``sort_norm`` and any options).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from .dotproduct import DotProduct
from .greedy import BestFit, FirstFit, RoundRobin
from .types import HostView, Plan, Thresholds, UnknownPolicyError, VMRequest

ENTRY_POINT_GROUP = "snooze.placement"
DEFAULT_PLACEMENT = "dot-product"


@runtime_checkable
class PlacementPolicy(Protocol):
    name: str

    def place(self, requests: Sequence[VMRequest], hosts: Sequence[HostView]) -> Plan: ...


BUILTIN_POLICIES: dict[str, Callable[..., PlacementPolicy]] = {
    RoundRobin.name: RoundRobin,
    FirstFit.name: FirstFit,
    BestFit.name: BestFit,
    DotProduct.name: DotProduct,
}


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_policies() -> list[str]:
    """Every name ``make_placement_policy`` accepts, built-ins first."""
    names = list(BUILTIN_POLICIES)
    names += sorted(n for n in _plugins() if n not in BUILTIN_POLICIES)
    return names


def make_placement_policy(
    name: str = DEFAULT_PLACEMENT,
    *,
    thresholds: Thresholds | None = None,
    sort_norm: str = "L1",
    **options: Any,
) -> PlacementPolicy:
    """A fresh policy object by name; raises ``UnknownPolicyError`` listing the known names."""
    factory: Callable[..., Any] | None = BUILTIN_POLICIES.get(name)
    if factory is None:
        ep = _plugins().get(name)
        if ep is None:
            raise UnknownPolicyError(
                f"unknown placement policy {name!r}; known: {', '.join(known_policies())}"
            )
        factory = ep.load()
    policy = factory(thresholds=thresholds, sort_norm=sort_norm, **options)
    if not isinstance(policy, PlacementPolicy):
        raise TypeError(f"placement plugin {name!r} has no 'name' and 'place(requests, hosts)'")
    return policy
