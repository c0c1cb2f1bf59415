"""The local controller's join backoff (``localcontroller.backoff``), driven by a fake clock and
seeded random sources: waits grow and are capped, a success starts over, a hopeless refusal
waits about the cap, a Retry-After is honoured, and a herd of refused hosts is spread out."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from localcontroller.backoff import Backoff, BackoffPolicy


def test_each_wait_lies_under_a_ceiling_that_doubles_up_to_the_cap() -> None:
    b = Backoff(BackoffPolicy(base=0.5, cap=8.0, spread=2.0), random.Random(1))
    ceilings = []
    for _ in range(8):
        ceiling = b.ceiling()
        ceilings.append(ceiling)
        assert 0.0 <= b.delay() <= ceiling
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert b.failures == 8


def test_a_success_starts_over() -> None:
    b = Backoff(BackoffPolicy(base=0.5, cap=8.0), random.Random(2))
    for _ in range(5):
        b.delay()
    assert b.ceiling() == 8.0
    b.reset()
    assert b.failures == 0 and b.ceiling() == 0.5


def test_a_refusal_no_retry_can_cure_waits_about_the_cap() -> None:
    b = Backoff(BackoffPolicy(base=0.5, cap=8.0), random.Random(3))
    waits = [b.delay(retryable=False) for _ in range(50)]
    assert all(4.0 <= w <= 8.0 for w in waits)
    assert len(set(waits)) == 50, "jittered, not in step"


def test_a_retry_after_is_never_undercut() -> None:
    b = Backoff(BackoffPolicy(base=0.5, cap=8.0), random.Random(4))
    for _ in range(20):
        assert b.delay(retry_after=3.0) >= 3.0


def test_a_rejoin_first_waits_within_the_spread() -> None:
    b = Backoff(BackoffPolicy(spread=2.0), random.Random(5))
    waits = [b.first_rejoin_delay() for _ in range(100)]
    assert all(0.0 <= w <= 2.0 for w in waits) and max(waits) > 1.0
    assert Backoff(BackoffPolicy(spread=0.0)).first_rejoin_delay() == 0.0


@pytest.mark.parametrize(("base", "cap", "spread"), [(0.0, 8.0, 1.0), (1.0, 0.5, 1.0), (0.5, 8.0, -1.0)])
def test_nonsense_timings_are_refused_naming_the_options(base: float, cap: float, spread: float) -> None:
    with pytest.raises(ValueError, match="join_backoff_base"):
        BackoffPolicy(base, cap, spread)


def simulate_herd(hosts: int, admit_per_second: int, policy: BackoffPolicy | None, *, seed: int = 7) -> tuple[float, int]:
    """``hosts`` hosts all ask at t=0 a leader that admits ``admit_per_second`` joins a second
    (refusing the rest, as a full connection table does); on a fake clock. Returns (time the
    last one got in, attempts made). ``policy`` None: the old fixed 0.5 s retry."""
    rng = random.Random(seed)
    backoffs = [Backoff(policy, random.Random(rng.random())) if policy else None for _ in range(hosts)]
    queue = [(0.0, i) for i in range(hosts)]
    heapq.heapify(queue)
    admitted: Counter[int] = Counter()
    attempts = 0
    last = 0.0
    while queue:
        now, i = heapq.heappop(queue)
        attempts += 1
        second = int(now)
        if admitted[second] < admit_per_second:
            admitted[second] += 1
            last = max(last, now)
            continue
        b = backoffs[i]
        heapq.heappush(queue, (now + (b.delay() if b is not None else 0.5), i))
    return last, attempts


def test_a_refused_herd_asks_far_less_often_than_with_a_fixed_retry() -> None:
    # 2,000 hosts at once against a leader that takes 100 a second: with a fixed 0.5 s retry
    # every refused host comes back twice a second, all in step.
    fixed_last, fixed_attempts = simulate_herd(2000, 100, None)
    backoff_last, backoff_attempts = simulate_herd(2000, 100, BackoffPolicy(base=0.5, cap=8.0))
    print(f"\nfixed 0.5 s: all in after {fixed_last:.1f}s, {fixed_attempts} attempts; "
          f"backoff: all in after {backoff_last:.1f}s, {backoff_attempts} attempts")
    assert backoff_attempts * 3 < fixed_attempts
    # The price, bounded: at most about one cap later than the leader's rate allows.
    assert backoff_last <= 2000 / 100 + 8.0 + 1.0
