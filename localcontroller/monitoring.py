"""Host and VM usage sampling for monitoring reports, with bounded history.

On a real hypervisor the host's usage comes from psutil and each domain's from libvirt's CPU
time. With libvirt's test driver many simulated hosts share one machine, so the host's usage
is the sum of its domains' (each domain counted at its requested size).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import psutil

from localcontroller.hypervisor import LibvirtHypervisor
from snooze.codes import VMStatus


class HostMonitor:
    def __init__(self, hypervisor: LibvirtHypervisor, history: int) -> None:
        self.hypervisor = hypervisor
        self.history: deque[dict[str, Any]] = deque(maxlen=max(1, history))
        self._cpu_prev: dict[str, tuple[float, int]] = {}

    async def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        domains = await self.hypervisor.domains()
        vms: dict[str, list[float]] = {}
        for d in domains:
            if not d.state.started:
                continue
            if self.hypervisor.is_test_driver:
                cpu = float(d.vcpus) if d.state is VMStatus.RUNNING else 0.0
            else:
                prev = self._cpu_prev.get(d.name)
                cpu = 0.0
                if prev is not None and now > prev[0]:
                    cpu = max(0.0, (d.cpu_time_ns - prev[1]) / 1e9 / (now - prev[0]))
                self._cpu_prev[d.name] = (now, d.cpu_time_ns)
            vms[d.name] = [cpu, float(d.memory_kib), 0.0, 0.0]
        if self.hypervisor.is_test_driver:
            host = [sum(v[i] for v in vms.values()) for i in range(4)]
        else:
            mem = psutil.virtual_memory()
            host = [psutil.cpu_percent(None) / 100.0 * (psutil.cpu_count() or 1), (mem.total - mem.available) / 1024, 0.0, 0.0]
        sample = {
            "timestamp": time.time(),
            "hostUsage": host,
            "virtualMachines": vms,
            "domains": [d.to_json() for d in domains],
        }
        self.history.append({"timestamp": sample["timestamp"], "hostUsage": host})
        return sample
