"""The wake-up driver interface: what a group manager calls to wake a sleeping host.

Every driver (IPMI, Wake-on-LAN, a command) reports failure as `WakeupError` with a message
that says what failed, so that the manager can log it and mark the host without knowing which
driver it used.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["NoWakeup", "WakeupDriver", "WakeupError", "WakeupSettingsError"]

DEFAULT_TIMEOUT = 5.0
"""Seconds a wake-up (or a power status query) may take before it counts as failed."""


class WakeupError(Exception):
    """A host could not be woken (or queried); the message says why."""


class WakeupSettingsError(WakeupError, ValueError):
    """The wake-up settings of a host are invalid (unknown driver, malformed options)."""


@runtime_checkable
class WakeupDriver(Protocol):
    """Wakes one host. Built from the host's wake-up settings by `make_wakeup_driver`."""

    name: str
    """The driver's name in the settings: "IPMI", "WOL", "COMMAND", "TEST" or "NONE"."""

    async def wake(self) -> None:
        """Ask the host to power on; returns once the request is accepted.

        Raises `WakeupError`. Accepted is not booted: the host's local controller announces
        itself when it is up.
        """
        ...

    async def power_status(self) -> str | None:
        """The host's power as its driver sees it: "on", "off", or None when unknown.

        Raises `WakeupError`.
        """
        ...


class NoWakeup:
    """The driver of a host that cannot be woken remotely (driver "NONE")."""

    name = "NONE"

    async def wake(self) -> None:
        raise WakeupError("host has no wake-up driver")

    async def power_status(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NoWakeup()"
