"""How long a local controller waits between attempts to join: full-jitter exponential backoff.

Why: a fixed short retry turns one refusal into a storm. With 2,000 hosts on one machine, a
leader that refused joins (``TOO_MANY_CONNECTIONS``, ``LEADER_SETTLING``, ``NO_GROUP_MANAGER``)
got 11,875 retries from one process, each a new connection that the refusal was about. Here the
n-th consecutive failure waits a uniform random time in ``[0, min(cap, base * 2**n)]`` ("full
jitter", AWS architecture blog, *Exponential Backoff and Jitter*), so retries thin out and never
arrive in step; a success starts over.

* A refusal whose code is not retryable (a bad key, a refused description) will not get better
  by asking again soon: it waits about ``cap`` at once.
* A peer that names when to come back (``Retry-After``) is not asked before then; jitter on top
  keeps the hosts it told the same thing from coming back in the same instant.
* A re-join after the host's group manager went away (or an order to move) first waits a
  uniform random time in ``[0, spread]``: the hosts of a group manager that died all notice at
  about the same heartbeat, and would otherwise reach the leader, then one group manager, at once.

Pure: no clock, no sleeping; the caller sleeps what ``delay`` says (so tests drive it with a
fake clock and a seeded random source).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "BackoffPolicy"]


@dataclass(frozen=True)
class BackoffPolicy:
    """The join's timings; ``[localcontroller] join_backoff_base``, ``join_backoff_cap`` and
    ``rejoin_spread`` set them."""

    #: Seconds: the ceiling of the first retry's random wait; it doubles with each failure.
    base: float = 0.5
    #: Seconds: the largest ceiling. Below the heartbeat timeout (10 s) so a host refused during
    #: a failover is back within "heartbeat timeout + 10 s" of it.
    cap: float = 8.0
    #: Seconds: a re-join's first attempt waits a random time up to this.
    spread: float = 2.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and self.spread >= 0):
            raise ValueError("[localcontroller] join_backoff_base must be > 0, join_backoff_cap >= join_backoff_base "
                             "and rejoin_spread >= 0")


@dataclass
class Backoff:
    """The waits of one local controller's successive join attempts."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    rng: random.Random = field(default_factory=random.Random)
    #: Consecutive failures since the last success (or reset).
    failures: int = 0

    def ceiling(self) -> float:
        """The largest wait after the failures so far."""
        p = self.policy
        # 2**n overflows nothing below 64; past that the cap has long been reached.
        return min(p.cap, p.base * float(2 ** min(self.failures, 62)))

    def delay(self, *, retryable: bool = True, retry_after: float | None = None) -> float:
        """Seconds to wait after one more failure (counted here)."""
        p = self.policy
        if not retryable:
            self.failures += 1
            # About cap, never in step with the others refused the same way.
            return p.cap * (0.5 + 0.5 * self.rng.random())
        ceiling = self.ceiling()
        self.failures += 1
        wait = self.rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            wait += retry_after
        return wait

    def first_rejoin_delay(self) -> float:
        """Seconds before the first attempt of a re-join (not of the first join at start)."""
        return self.rng.uniform(0.0, self.policy.spread)

    def reset(self) -> None:
        self.failures = 0
