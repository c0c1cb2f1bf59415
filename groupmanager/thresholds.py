"""The group manager's placement thresholds (the original's MIN, MID, MAX per resource)."""

from __future__ import annotations

from groupmanager.placement import Thresholds
from snooze.config import GroupManagerSettings


def thresholds_from(settings: GroupManagerSettings) -> Thresholds:
    cpu, mem, net = settings.cpu_thresholds, settings.memory_thresholds, settings.network_thresholds
    return Thresholds(
        (float(cpu[0]), float(mem[0]), float(net[0]), float(net[0])),
        (float(cpu[1]), float(mem[1]), float(net[1]), float(net[1])),
        (float(cpu[2]), float(mem[2]), float(net[2]), float(net[2])),
    )
