"""VIF plugging: plug and unplug time per port, for each plugin, on real devices.

Each plugin gets a fresh network namespace of its own ("a host"), and for ``ovs`` a private
``ovsdb-server`` + ``ovs-vswitchd`` (userspace datapath) in it (``snooze.dev.ovs``). COUNT VMs'
VIFs are plugged one after the other through ``VifLibrary`` exactly as a local controller plugs
them (the tap, the bridge or the OVS port with os-vif's external ids), each plug timed; then
each is unplugged, timed. Prints median, p99 and max per plugin and operation, against the
issue's targets (plug: < 50 ms median on linux_bridge, < 150 ms on ovs). Everything made is
removed at the end, also on failure.

    .venv/bin/python bench/network.py               # 200 ports per plugin (under a minute)
    .venv/bin/python bench/network.py --count 50

Not measured here yet: the live-migration downtime of a pinged guest (it needs guests plugged
across two hosts, which the local cluster does not join yet; docs/networking.md, "Not done yet").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcontroller.vif.library import VifLibrary  # noqa: E402
from snooze.dev import netns, ovs  # noqa: E402
from snooze.vif import objects as o  # noqa: E402

TARGETS = {"linux_bridge": 0.050, "ovs": 0.150}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def vif(plugin: str, i: int) -> o.VIFBase:
    common = {"id": str(uuid.UUID(int=i + 1)), "address": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
              "plugin": plugin, "vif_name": f"tapb{i:05d}", "network": o.Network(id="bench", mtu=1500)}
    if plugin == "ovs":
        return o.VIFOpenVSwitch(**common, bridge_name="br-bench",
                                port_profile=o.VIFPortProfileOpenVSwitch(interface_id=common["id"], datapath_type="netdev"))
    return o.VIFBridge(**common, bridge_name="br-bench")


def run(plugin: str, count: int, ns: str, options: dict[str, object]) -> dict[str, list[float]]:
    lib = VifLibrary()
    lib.initialize([plugin], {plugin: options})
    instance = o.InstanceInfo(uuid=str(uuid.UUID(int=0xBE)), name="bench")
    times: dict[str, list[float]] = {"plug": [], "unplug": []}
    vifs = [vif(plugin, i) for i in range(count)]

    def timed(verb: str) -> None:
        for v in vifs:
            t = time.perf_counter()
            getattr(lib, verb)(v, instance)
            times[verb].append(time.perf_counter() - t)

    try:
        netns.call_in(ns, timed, "plug")
        netns.call_in(ns, timed, "unplug")
    finally:
        lib.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="ports per plugin (default 200)")
    ap.add_argument("--plugins", default="linux_bridge,ovs", help="comma-separated (default linux_bridge,ovs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py: needs root (network namespaces, devices)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {}
    for plugin in args.plugins.split(","):
        ns = f"snzbench{os.getpid()}-{plugin.replace('_', '')}"[:30]
        netns.ip("netns", "add", ns)
        try:
            netns.ip("link", "set", "lo", "up", netns=ns)
            if plugin == "ovs":
                missing = ovs.available()
                if missing:
                    print(f"ovs: {missing}", file=sys.stderr)
                    return 2
                with tempfile.TemporaryDirectory(prefix="snzbench-ovs-", dir="/tmp") as d:
                    switch = ovs.OvsSwitch(Path(d), netns=ns)
                    try:
                        switch.start()
                        results[plugin] = run(plugin, args.count, ns, {"ovsdb": switch.remote, "datapath_type": "netdev"})
                    finally:
                        switch.stop()
            else:
                results[plugin] = run(plugin, args.count, ns, {})
        finally:
            netns.delete_namespaces([ns])
    print(f"VIF plug and unplug, {args.count} ports per plugin, one after the other (ms)")
    print(f"{'plugin':<14}{'operation':<10}{'median':>9}{'p99':>9}{'max':>9}   target (plug median)")
    for plugin, times in results.items():
        for verb, values in times.items():
            med = statistics.median(values)
            target = ""
            if verb == "plug" and plugin in TARGETS:
                ok = "met" if med < TARGETS[plugin] else "MISSED"
                target = f"< {TARGETS[plugin] * 1000:.0f} ms: {ok}"
            print(f"{plugin:<14}{verb:<10}{med * 1000:>9.2f}{pct(values, 99) * 1000:>9.2f}{max(values) * 1000:>9.2f}   {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
