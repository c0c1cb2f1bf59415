"""Wake-up of sleeping hosts: the drivers a group manager uses to power a local controller on.

A local controller's wake-up settings (``{"driver": ..., "options": ...}``) name one of the
drivers IPMI, WOL, COMMAND, TEST or NONE; `make_wakeup_driver` builds it, and the manager
calls ``await driver.wake()`` when placement needs the host. Every failure is a
`WakeupError` whose message says what failed. See docs/power.md.
"""

from groupmanager.power.command import CommandWakeup
from groupmanager.power.driver import NoWakeup, WakeupDriver, WakeupError, WakeupSettingsError
from groupmanager.power.factory import DRIVERS, make_wakeup_driver
from groupmanager.power.ipmi import IpmiOptions, IpmiWakeup, parse_ipmi_options
from groupmanager.power.wol import WolOptions, WolWakeup, magic_packet, parse_wol_options

__all__ = [
    "DRIVERS",
    "CommandWakeup",
    "IpmiOptions",
    "IpmiWakeup",
    "NoWakeup",
    "WakeupDriver",
    "WakeupError",
    "WakeupSettingsError",
    "WolOptions",
    "WolWakeup",
    "magic_packet",
    "make_wakeup_driver",
    "parse_ipmi_options",
    "parse_wol_options",
]
