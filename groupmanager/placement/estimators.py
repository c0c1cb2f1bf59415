"""Demand estimators: from a VM's monitoring history to the vector placement counts it as.

``average`` is the original's estimator (mean of the last N samples); ``ewma`` reacts to
recent change without forgetting at once; ``static`` ignores monitoring and scales the
requested capacity by a packing density per resource (the original's PackingDensity).
With no history every estimator falls back to the request, as the original did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .types import UnknownPolicyError, Vector


class Estimator(Protocol):
    name: str

    def estimate(self, history: Sequence[Vector], requested: Vector) -> Vector: ...


def _vec(values: Sequence[float]) -> Vector:
    return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))


class Average:
    """Mean of the last ``window`` samples."""

    name = "average"

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window

    def estimate(self, history: Sequence[Vector], requested: Vector) -> Vector:
        recent = list(history[-self.window :])
        if not recent:
            return _vec(requested)
        n = len(recent)
        return _vec([sum(s[d] for s in recent) / n for d in range(4)])


class Ewma:
    """Exponentially weighted moving average, oldest sample first; ``alpha`` weighs the newest."""

    name = "ewma"

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha

    def estimate(self, history: Sequence[Vector], requested: Vector) -> Vector:
        if not history:
            return _vec(requested)
        acc = list(history[0])
        a = self.alpha
        for sample in history[1:]:
            acc = [a * x + (1.0 - a) * y for x, y in zip(sample, acc, strict=True)]
        return _vec(acc)


class Static:
    """Requested capacity times a packing density per resource (1.0: no overcommit)."""

    name = "static"

    def __init__(self, density: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        if len(density) != 4 or any(x <= 0 for x in density):
            raise ValueError("density must be 4 positive factors")
        self.density = _vec(density)

    def estimate(self, history: Sequence[Vector], requested: Vector) -> Vector:
        return _vec([r * k for r, k in zip(requested, self.density, strict=True)])


ESTIMATORS: dict[str, type[Any]] = {"average": Average, "ewma": Ewma, "static": Static}


def make_estimator(name: str = "average", **options: Any) -> Estimator:
    cls = ESTIMATORS.get(name)
    if cls is None:
        raise UnknownPolicyError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    est: Estimator = cls(**options)
    return est
