"""snooze-cni against the reference CNI plugins: ADD and DEL latency, side by side.

``snooze-cni`` (its agent in this process on 127.0.0.1 of a "host" namespace, the network model
in a private ZooKeeper on 127.0.0.1) and the reference ``bridge`` plugin with ``host-local``
address management (Debian's containernetworking-plugins, /usr/lib/cni), over the same
containers: N namespaces one after the other (ADD timed, then each DEL timed), then P at once.
Every plugin runs as the runtime runs it: a new process per call, under ``ip netns exec HOST``.
Namespaces are made before and removed after each timed call; all of them are deleted at the
end, also on failure. Prints median and p99 per plugin, command and mode.

    .venv/bin/python bench/cni.py                 # 200 sequential, 20 parallel (a few minutes)
    .venv/bin/python bench/cni.py --count 50      # fewer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcontroller.cni.agent import AgentSettings, CniAgent  # noqa: E402
from localcontroller.cni.runtime import run_plugin  # noqa: E402
from snooze.coordination import Coordinator  # noqa: E402
from snooze.dev import netns  # noqa: E402
from snooze.dev.zookeeper import ZooKeeperServer  # noqa: E402
from snooze.network.model import Network, Subnet  # noqa: E402
from snooze.network.store import NetworkStore  # noqa: E402

PLUGIN = str(Path(sys.executable).with_name("snooze-cni"))
REFERENCE = "/usr/lib/cni"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def _listen_in(ns: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        s.setblocking(False)
        return s

    return netns.call_in(ns, make)


async def one(name: str, plugin: str, conf: dict[str, Any], host: str, ns: str, cid: str) -> tuple[float, float]:
    kw: dict[str, Any] = {"container_id": cid, "netns": f"/run/netns/{ns}", "prefix": ["ip", "netns", "exec", host], "path": [REFERENCE]}
    t0 = time.perf_counter()
    add = await run_plugin(plugin, "ADD", conf, **kw)
    t1 = time.perf_counter()
    if not add.ok:
        raise RuntimeError(f"{name} ADD failed: {add.output} {add.stderr}")
    t2 = time.perf_counter()
    d = await run_plugin(plugin, "DEL", {**conf, "prevResult": add.output}, **kw)
    t3 = time.perf_counter()
    if not d.ok:
        raise RuntimeError(f"{name} DEL failed: {d.output} {d.stderr}")
    return t1 - t0, t3 - t2


async def bench(count: int, parallel: int, tmp: Path) -> dict[str, Any]:
    zk = ZooKeeperServer(tmp / "zk")
    zk.start()
    prefix = f"bcni{secrets.token_hex(3)}"
    host = f"{prefix}-host"
    made = [host]
    coord = Coordinator(zk.address, root="/bench-cni", session_timeout=10.0)
    agent: CniAgent | None = None
    try:
        await coord.start(wait=15)
        netns.ip("netns", "add", host)
        netns.ip("link", "set", "lo", "up", netns=host)
        store = NetworkStore.of(coord)
        await coord.call(store.ensure)
        await coord.call(store.create, Network("net1"))
        await coord.call(store.create, Subnet.from_json({"id": "sub1", "network": "net1", "cidr": "10.235.0.0/20",
                                                        "gateway": "10.235.0.1"}))
        agent = CniAgent(coord, "lc-1", AgentSettings())
        await agent.start(sock=_listen_in(host))
        confs: dict[str, tuple[str, dict[str, Any]]] = {
            "snooze-cni": (PLUGIN, {"cniVersion": "1.0.0", "name": "net1", "type": "snooze-cni",
                                    "snooze": {"agent": agent.url, "network": "net1", "recordDir": str(tmp / "rec")}}),
            "bridge+host-local": (f"{REFERENCE}/bridge", {
                "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "refbr0", "isGateway": True,
                "ipam": {"type": "host-local", "subnet": "10.236.0.0/20", "dataDir": str(tmp / "hl")}}),
        }
        out: dict[tuple[str, str], Any] = {}
        serial = 0
        for name, (plugin, conf) in confs.items():
            adds, dels = [], []
            for _ in range(count):
                serial += 1
                ns = f"{prefix}-{serial}"
                made.append(ns)
                netns.ip("netns", "add", ns)
                a, d = await one(name, plugin, conf, host, ns, f"c{serial}")
                adds.append(a)
                dels.append(d)
                netns.ip("netns", "delete", ns)
            out[(name, "sequential")] = (adds, dels)
            names = []
            for _ in range(parallel):
                serial += 1
                names.append((f"{prefix}-{serial}", f"c{serial}"))
                made.append(names[-1][0])
                netns.ip("netns", "add", names[-1][0])
            results = await asyncio.gather(*(one(name, plugin, conf, host, ns, cid) for ns, cid in names))
            out[(name, "parallel")] = ([r[0] for r in results], [r[1] for r in results])
            netns.delete_namespaces([n for n, _ in names])
        return {f"{k[0]} {k[1]}": v for k, v in out.items()}
    finally:
        if agent is not None:
            await agent.stop()
        await coord.stop()
        netns.delete_namespaces(made)
        zk.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="containers one after the other (default 200)")
    ap.add_argument("--parallel", type=int, default=20, help="containers at once (default 20)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the samples as JSON")
    args = ap.parse_args()
    reason = netns.available()
    if reason:
        print(f"bench/cni.py: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-cni-") as tmp:
        res = asyncio.run(bench(args.count, args.parallel, Path(tmp)))
    print(f"{'plugin and mode':34} {'n':>4} {'ADD median':>11} {'ADD p99':>9} {'DEL median':>11} {'DEL p99':>9}  (ms)")
    for key, (adds, dels) in res.items():
        print(f"{key:34} {len(adds):4d} {statistics.median(adds) * 1e3:11.1f} {pct(adds, 99) * 1e3:9.1f} "
              f"{statistics.median(dels) * 1e3:11.1f} {pct(dels, 99) * 1e3:9.1f}")
    s = statistics.median(res["snooze-cni sequential"][0])
    r = statistics.median(res["bridge+host-local sequential"][0])
    print(f"snooze-cni ADD median / reference ADD median (sequential): {s / r:.2f} (target <= 1.5)")
    if args.json:
        Path(args.json).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
