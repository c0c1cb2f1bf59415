"""Address management benchmark: allocations per second, duplicates, time per allocation by fill,
against Loch Ness's method as the baseline. Prints tables; asserts nothing.

    .venv/bin/python bench/ipam.py            # about a minute
    .venv/bin/python bench/ipam.py --quick    # fewer allocations, about 30 s
    .venv/bin/python bench/ipam.py --json     # also print the results as JSON (or --json FILE)

A private ZooKeeper server on 127.0.0.1 (``snooze.dev.zookeeper``), stopped on exit.

Methods
  snooze    ``snooze.network.ipam.Ipam.reserve``: bitmap chunks with a cursor, the chunk (and
            the pool when a chunk opens or fills) written at the version read together with
            the address znode in one transaction; retried after a conflict.
  lochness  Loch Ness's ``Subnet.ReserveAddress``: a random address of the range, created if
            absent (``create``), another random one on NodeExists; no bitmap.

Runs
  throughput  1, 8 and 32 concurrent allocators (threads spread over up to 4 processes, each
              process with its own ZooKeeper session) on one /16 subnet and on 16 /20 subnets
              (allocator i on subnet i mod 16); every address handed out is collected and the
              duplicates counted (must be 0); conflicts = retried transactions (snooze) or
              addresses found taken (lochness).
  fill        one allocator on a /20 (4,094 addresses) filled to 10 % and to 99 % beforehand
              (snooze: reserve_many in batches; lochness: the same count of random addresses
              created), then the time of each of the next allocations (each given back,
              untimed, so that every sample sees the same fill).

Targets (issue 12): >= 1,000 allocations/s with 8 allocators (snooze); at 99 % fill snooze's
time per allocation >= 5x better than the baseline's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kazoo.client import KazooClient  # noqa: E402
from kazoo.exceptions import NodeExistsError  # noqa: E402

from snooze.dev.zookeeper import ZooKeeperServer  # noqa: E402
from snooze.network.ipam import Ipam  # noqa: E402
from snooze.network.model import Network, Subnet  # noqa: E402
from snooze.network.store import NetworkStore  # noqa: E402

ROOT = "/bench-ipam"
BASELINE = f"{ROOT}/lochness"  # the baseline's addresses: BASELINE/<subnet>/<ip>
MAX_PROCESSES = 4
#: Loch Ness gave up after this many taken addresses (and returned no address and no error).
BASELINE_ATTEMPTS = 100_000


# -- the baseline: Loch Ness's random create-if-absent ---------------------------------------------
def lochness_reserve(client: KazooClient, subnet: Subnet, guest: str, rng: random.Random) -> tuple[str | None, int]:
    """(address or None, addresses found taken)."""
    base = f"{BASELINE}/{subnet.id}"
    taken = 0
    for _attempt in range(BASELINE_ATTEMPTS):
        ip = str(subnet.address(rng.randrange(subnet.size)))
        try:
            client.create(f"{base}/{ip}", guest.encode())
            return ip, taken
        except NodeExistsError:
            taken += 1
    return None, taken


# -- one worker process: several allocator threads ---------------------------------------------------
def _worker(zk: str, method: str, jobs: list[tuple[str, dict[str, Any], int]], ready: Any, go: Any, out: Any) -> None:
    client = KazooClient(hosts=zk, timeout=30)
    client.start(timeout=30)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(name: str, subnet_json: dict[str, Any], count: int) -> None:
        subnet = Subnet.from_json(subnet_json)
        ipam = Ipam(client, ROOT)
        rng = random.Random(name)
        got: list[str] = []
        lat: list[float] = []
        conflicts = 0
        missing = 0
        go.wait()
        for n in range(count):
            t = time.perf_counter()
            if method == "snooze":
                got.append(str(ipam.reserve(subnet.id, f"{name}-{n}")))
            else:
                ip, taken = lochness_reserve(client, subnet, f"{name}-{n}", rng)
                conflicts += taken
                if ip is None:
                    missing += 1
                else:
                    got.append(ip)
            lat.append(time.perf_counter() - t)
        end = time.time()
        if method == "snooze":
            conflicts = ipam.conflicts
        with lock:
            results.append({"name": name, "subnet": subnet.id, "addresses": got, "latencies": lat,
                            "conflicts": conflicts, "missing": missing, "end": end})

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    ready.put(len(jobs))
    for t in threads:
        t.join()
    out.put(results)
    client.stop()
    client.close()


def run_concurrent(zk: str, method: str, subnets: list[Subnet], allocators: int, per_allocator: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    processes = min(allocators, MAX_PROCESSES)
    jobs: list[list[tuple[str, dict[str, Any], int]]] = [[] for _ in range(processes)]
    for i in range(allocators):
        jobs[i % processes].append((f"{method}-a{i}", subnets[i % len(subnets)].to_json(), per_allocator))
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(zk, method, j, ready, go, out)) for j in jobs]
    for p in procs:
        p.start()
    for _p in procs:
        ready.get(timeout=120)
    t0 = time.time()
    go.set()
    results = [r for _p in procs for r in out.get(timeout=600)]
    for p in procs:
        p.join(30)
    every = [a for r in results for a in r["addresses"]]
    per_subnet: dict[str, list[str]] = {}
    for r in results:
        per_subnet.setdefault(r["subnet"], []).extend(r["addresses"])
    duplicates = sum(len(v) - len(set(v)) for v in per_subnet.values())
    lat = sorted(x for r in results for x in r["latencies"])
    took = max(r["end"] for r in results) - t0
    return {
        "method": method, "subnets": len(subnets), "allocators": allocators, "allocations": len(every),
        "seconds": took, "perSecond": len(every) / took if took > 0 else 0.0,
        "conflicts": sum(r["conflicts"] for r in results), "duplicates": duplicates,
        "noAddress": sum(r["missing"] for r in results),
        "p50ms": 1e3 * lat[len(lat) // 2] if lat else 0.0, "p99ms": 1e3 * lat[int(len(lat) * 0.99)] if lat else 0.0,
    }


# -- fill ---------------------------------------------------------------------------------------
def prefill(client: KazooClient, store: NetworkStore, method: str, subnet: Subnet, count: int) -> None:
    if count <= 0:
        return
    if method == "snooze":
        done = 0
        while done < count:
            batch = [f"fill-{done + i}" for i in range(min(1000, count - done))]
            store.ipam.reserve_many(subnet.id, batch)
            done += len(batch)
        return
    base = f"{BASELINE}/{subnet.id}"
    client.ensure_path(base)
    offsets = random.Random(subnet.id).sample(range(subnet.size), count)
    pending = [client.create_async(f"{base}/{subnet.address(o)}", b"fill") for o in offsets]
    for p in pending:
        p.get(timeout=60)


def run_fill(client: KazooClient, store: NetworkStore, method: str, fill: float, index: int, samples: int) -> dict[str, Any]:
    sid = f"fill-{method}-{round(fill * 100)}"
    subnet = store.create(Subnet.from_json({"id": sid, "network": "bench", "cidr": f"10.250.{16 * index}.0/20"}))
    assert isinstance(subnet, Subnet)
    prefill(client, store, method, subnet, int(subnet.size * fill))
    ipam = Ipam(client, ROOT)
    rng = random.Random(f"{sid}-reserve")  # not the fill's sequence
    lat: list[float] = []
    taken = 0
    for n in range(samples):
        t = time.perf_counter()
        if method == "snooze":
            ip = str(ipam.reserve(sid, f"sample-{n}"))
        else:
            got, found = lochness_reserve(client, subnet, f"sample-{n}", rng)
            taken += found
            ip = str(got)
        lat.append(time.perf_counter() - t)
        # Given back (not timed), so that every sample sees the same fill.
        if method == "snooze":
            ipam.release(sid, ip, f"sample-{n}")
        else:
            client.delete(f"{BASELINE}/{sid}/{ip}")
    return {"method": method, "fill": fill, "size": subnet.size, "samples": samples,
            "meanMs": 1e3 * statistics.fmean(lat), "p50ms": 1e3 * statistics.median(lat),
            "maxMs": 1e3 * max(lat), "attempts": 1 + taken / samples if method == "lochness" else 1 + ipam.conflicts / samples}


# -- main ---------------------------------------------------------------------------------------
def table(heads: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer allocations")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    per = {1: 1000, 8: 400, 32: 150} if not args.quick else {1: 300, 8: 150, 32: 50}
    samples = 40 if not args.quick else 15
    results: dict[str, Any] = {"throughput": [], "fill": []}
    with tempfile.TemporaryDirectory(prefix="bench-ipam-") as tmp:
        zk = ZooKeeperServer(Path(tmp) / "zk")
        zk.start()
        client = KazooClient(hosts=zk.address, timeout=30)
        client.start(timeout=30)
        try:
            store = NetworkStore(client, ROOT)
            store.create(Network("bench"))
            serial = 0
            for method in ("snooze", "lochness"):
                for count in (1, 16):
                    for allocators in (1, 8, 32):
                        subnets = []
                        for _ in range(count):
                            serial += 1
                            # A /16 alone; /20s when there are 16 (each its own, never overlapping).
                            cidr = f"100.{64 + serial}.0.0/16" if count == 1 else f"10.{serial // 16}.{(serial % 16) * 16}.0/20"
                            sub = store.create(Subnet.from_json({"id": f"s{serial}", "network": "bench", "cidr": cidr}))
                            assert isinstance(sub, Subnet)
                            client.ensure_path(f"{BASELINE}/{sub.id}")
                            subnets.append(sub)
                        r = run_concurrent(zk.address, method, subnets, allocators, per[allocators])
                        results["throughput"].append(r)
                        print(f"  {method:8} {count:2} subnet(s) {allocators:2} allocators: {r['perSecond']:7.0f}/s, "
                              f"{r['duplicates']} duplicates", flush=True)
            for index, (method, fill) in enumerate((m, f) for m in ("snooze", "lochness") for f in (0.10, 0.99)):
                r = run_fill(client, store, method, fill, index, samples)
                results["fill"].append(r)
        finally:
            client.stop()
            client.close()
            zk.stop()

    print("\nThroughput (allocations per second; duplicates must be 0)")
    table(["method", "subnets", "allocators", "allocations", "seconds", "alloc/s", "conflicts", "duplicates", "no address", "p50 ms", "p99 ms"],
          [[r["method"], str(r["subnets"]), str(r["allocators"]), str(r["allocations"]), f"{r['seconds']:.2f}",
            f"{r['perSecond']:.0f}", str(r["conflicts"]), str(r["duplicates"]), str(r["noAddress"]),
            f"{r['p50ms']:.2f}", f"{r['p99ms']:.2f}"] for r in results["throughput"]])
    print("\nTime per allocation by fill (one allocator, a /20 of 4,094 addresses)")
    table(["method", "fill", "samples", "mean ms", "p50 ms", "max ms", "attempts/alloc"],
          [[r["method"], f"{r['fill']:.0%}", str(r["samples"]), f"{r['meanMs']:.2f}", f"{r['p50ms']:.2f}",
            f"{r['maxMs']:.2f}", f"{r['attempts']:.1f}"] for r in results["fill"]])

    eight = [r for r in results["throughput"] if r["method"] == "snooze" and r["allocators"] == 8]
    fill99 = {r["method"]: r for r in results["fill"] if r["fill"] == 0.99}
    ratio = fill99["lochness"]["meanMs"] / fill99["snooze"]["meanMs"]
    dups = sum(r["duplicates"] for r in results["throughput"] if r["method"] == "snooze")
    print("\nTargets")
    for r in eight:
        verdict = "MET" if r["perSecond"] >= 1000 else "MISSED"
        print(f"  >= 1,000 allocations/s with 8 allocators on {r['subnets']} subnet(s): {r['perSecond']:.0f}/s  {verdict}")
    print(f"  >= 5x the random-retry baseline at 99 % fill: {ratio:.1f}x  {'MET' if ratio >= 5 else 'MISSED'}")
    print(f"  duplicates (snooze): {dups}  {'MET' if dups == 0 else 'MISSED'}")
    results["targets"] = {"eightAllocatorsPerSecond": {str(r["subnets"]): r["perSecond"] for r in eight},
                          "fill99Ratio": ratio, "duplicates": dups}
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
