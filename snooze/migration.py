"""How long a live migration may take, as every role that waits for one counts it.

A group manager orders the source host and waits for its answer; the bootstrap forwards a
client's ``migrateVirtualMachine`` to the group manager and waits for that. Both wait
``order_budget`` seconds (the bootstrap a minute more), computed from the destination's
registered ``hypervisorSettings.migration`` and the guest's memory.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ASSUMED_LINK_MIB", "DEFAULT_MIGRATION_TIMEOUT", "MAX_MIGRATION_TIMEOUT", "MAX_ORDER_SECONDS",
           "order_budget", "recovery_timeout", "setting"]

#: Bounds of a migration's convergence timeout (``migration.timeout``), and its default.
MAX_MIGRATION_TIMEOUT = 3600.0
DEFAULT_MIGRATION_TIMEOUT = 60.0
#: The speed (MiB/s) a migration without a bandwidth cap is assumed to have at least (a 1 Gbit/s
#: link), for the time its guest's memory takes to cross.
ASSUMED_LINK_MIB = 112.0
#: No order is waited for longer (3 h): a destination's reservation lives this long plus a
#: minute, under the 4 h a group manager accepts for one.
MAX_ORDER_SECONDS = 3 * MAX_MIGRATION_TIMEOUT


def setting(settings: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """``migration.KEY`` of ``settings`` when a number in ``[low, high]``; ``default`` otherwise."""
    mig = settings.get("migration")
    value = mig.get(key, default) if isinstance(mig, dict) else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        return default
    return float(value)


def recovery_timeout(settings: dict[str, Any]) -> float:
    """The seconds a source spends resuming a failed post-copy migration (``migration.recoveryTimeout``)."""
    return setting(settings, "recoveryTimeout", DEFAULT_MIGRATION_TIMEOUT, 0.0, MAX_MIGRATION_TIMEOUT)


def order_budget(settings: dict[str, Any], memory_kib: float, timeout: float | None = None) -> float:
    """Seconds to wait for a migration of a guest of ``memory_kib`` to the destination whose
    registered settings are ``settings`` (``timeout``: its convergence timeout, when already
    read; else ``migration.timeout``).

    The watchdog forces convergence at the timeout (pausing the guest, or switching to
    post-copy); from then on the guest's memory may still have to cross whole, at the
    migration's bandwidth cap (or an assumed 1 Gbit/s link): a 4 GiB guest capped at 1 MiB/s
    needs up to 4,096 s (CI saw an order time out after 34 s while a post-copy at that cap still
    ran, and the reply, with how it was recovered, was lost). Then the time to resume a failed
    post-copy, and 30 s of slack; at most ``MAX_ORDER_SECONDS``."""
    if timeout is None:
        timeout = setting(settings, "timeout", DEFAULT_MIGRATION_TIMEOUT, 0.0, MAX_MIGRATION_TIMEOUT)
    rate = setting(settings, "bandwidth", ASSUMED_LINK_MIB, 1e-9, 1e18)
    memory = memory_kib if isinstance(memory_kib, (int, float)) and math.isfinite(memory_kib) else 0.0
    budget = timeout * 3 + max(0.0, memory) / 1024 / rate + recovery_timeout(settings) + 30
    return min(budget, MAX_ORDER_SECONDS)
