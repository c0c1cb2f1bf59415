"""Placement: where VMs go, which VMs move, which hosts sleep or wake, as pure data.

A pure, synchronous package (no I/O, no asyncio, stdlib only). Given host views and
requests it returns a ``Plan``; the caller applies it and re-checks every step against
fresh state. The pipeline is filters (feasibility, with a recorded reason for every
rejected host) -> a policy's scoring -> the plan. See docs/placement.md.
"""

from .batch import Batch, BatchPolicy
from .capacity import is_overloaded, is_underloaded
from .consolidation import (
    CONSOLIDATION_POLICIES,
    DEFAULT_CONSOLIDATION,
    ConsolidationPolicy,
    CostAware,
    Sercon,
    make_consolidation_policy,
)
from .dotproduct import DotProduct
from .estimators import ESTIMATORS, Estimator, make_estimator
from .filters import Filter, default_filters
from .greedy import BestFit, FirstFit, RoundRobin
from .makeroom import make_room
from .registry import (
    BUILTIN_POLICIES,
    DEFAULT_PLACEMENT,
    ENTRY_POINT_GROUP,
    PlacementPolicy,
    known_policies,
    make_placement_policy,
)
from .relocation import relocate_overloaded, relocate_underloaded
from .types import (
    DEFAULT_THRESHOLDS,
    RESOURCES,
    ZERO,
    HostView,
    Migration,
    Placement,
    Plan,
    PowerState,
    Rejection,
    Thresholds,
    UnknownPolicyError,
    Vector,
    VMRequest,
    VMView,
)

__all__ = [
    "BUILTIN_POLICIES",
    "CONSOLIDATION_POLICIES",
    "DEFAULT_CONSOLIDATION",
    "DEFAULT_PLACEMENT",
    "DEFAULT_THRESHOLDS",
    "ENTRY_POINT_GROUP",
    "ESTIMATORS",
    "RESOURCES",
    "ZERO",
    "Batch",
    "BatchPolicy",
    "BestFit",
    "ConsolidationPolicy",
    "CostAware",
    "DotProduct",
    "Estimator",
    "Filter",
    "FirstFit",
    "HostView",
    "Migration",
    "Placement",
    "PlacementPolicy",
    "Plan",
    "PowerState",
    "Rejection",
    "RoundRobin",
    "Sercon",
    "Thresholds",
    "UnknownPolicyError",
    "VMRequest",
    "VMView",
    "Vector",
    "default_filters",
    "is_overloaded",
    "is_underloaded",
    "known_policies",
    "make_consolidation_policy",
    "make_estimator",
    "make_room",
    "make_placement_policy",
    "relocate_overloaded",
    "relocate_underloaded",
]
