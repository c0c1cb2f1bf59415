"""Host and VM usage sampling for monitoring reports, with bounded history.

On a real hypervisor the host's usage comes from psutil and each domain's from libvirt's CPU
time. With libvirt's test driver many simulated hosts share one machine, so the host's usage
is the sum of its domains' (each domain counted at its requested size).
"""

from __future__ import annotations

import json
import secrets
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


class ReportDeltas:
    """Which monitoring reports go whole, and which as a heartbeat saying "unchanged".

    As Kubernetes' kubelet sends its node status only when it changed (or every
    ``nodeStatusReportFrequency``) and renews a lease as its heartbeat: a report whose content
    (host usage, VM usage, domains) is the same as the last one sent whole to the same group
    manager is replaced by a heartbeat naming that report's ``seq``, which the group manager
    takes again, except every ``full_every``-th. ``forget()`` after a report that failed or a
    join: the next one goes whole. A host at rest (nothing changes) then costs its group
    manager one UDP datagram per interval instead of an HTTP request.
    """

    def __init__(self, full_every: int) -> None:
        self.full_every = max(1, full_every)
        # Numbers start anywhere: a restarted controller never repeats its former ones.
        self.seq = secrets.randbelow(1 << 31)
        self._last: tuple[str, str] | None = None
        self._skipped = 0

    def unchanged(self, gm_id: str, sample: dict[str, Any]) -> int | None:
        """The ``seq`` to announce in place of ``sample``; None: send it whole, as the report
        numbered ``self.seq`` (counted as sent: ``forget()`` if it fails)."""
        content = json.dumps([sample.get("hostUsage"), sample.get("virtualMachines"), sample.get("domains")],
                             sort_keys=True, default=str)
        if self._last == (gm_id, content) and self._skipped + 1 < self.full_every:
            self._skipped += 1
            return self.seq
        self.seq += 1
        self._last = (gm_id, content)
        self._skipped = 0
        return None

    def forget(self) -> None:
        self._last = None
