"""Builds the wake-up driver of a host from its wake-up settings.

The settings are the original Snooze's ``wakeupSettings`` of a local controller:
``{"driver": "IPMI" | "WOL" | "COMMAND" | "TEST" | "NONE", "options": "..."}``, with an
optional ``"timeout"`` in seconds (default 5) for the drivers that wait for an answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groupmanager.power.command import CommandWakeup
from groupmanager.power.driver import DEFAULT_TIMEOUT, NoWakeup, WakeupDriver, WakeupSettingsError
from groupmanager.power.ipmi import IpmiWakeup
from groupmanager.power.wol import WolWakeup

__all__ = ["DRIVERS", "make_wakeup_driver"]

DRIVERS = ("IPMI", "WOL", "COMMAND", "TEST", "NONE")


def make_wakeup_driver(settings: Mapping[str, Any]) -> WakeupDriver:
    """Raises `WakeupSettingsError` (a `WakeupError`) when the settings are unusable."""
    if not isinstance(settings, Mapping):
        raise WakeupSettingsError(
            f"wake-up settings must be a mapping, not {type(settings).__name__}"
        )
    driver = str(settings.get("driver") or "NONE").strip().upper()
    options = settings.get("options") or ""
    if not isinstance(options, str):
        raise WakeupSettingsError(f"{driver}: wake-up options must be a string")
    timeout = _timeout(settings.get("timeout", DEFAULT_TIMEOUT))
    if driver == "IPMI":
        return IpmiWakeup.from_options(options, timeout=timeout)
    if driver == "WOL":
        return WolWakeup.from_options(options)
    if driver in ("COMMAND", "TEST"):
        return CommandWakeup.from_options(options, timeout=timeout, name=driver)
    if driver == "NONE":
        return NoWakeup()
    raise WakeupSettingsError(
        f"unknown wake-up driver {settings.get('driver')!r} (expected one of {', '.join(DRIVERS)})"
    )


def _timeout(value: Any) -> float:
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = 0.0
    if not timeout > 0:
        raise WakeupSettingsError(f"wake-up timeout must be a positive number, not {value!r}")
    return timeout
