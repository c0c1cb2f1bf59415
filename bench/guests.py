#!/usr/bin/env python3
"""Real-guest benchmark: from ``?startVirtualCluster`` until each guest answers its name over
HTTP, for 1, 4 and 8 guests submitted at once, on the local QEMU cluster (TCG); and the same
submissions on libvirt's test driver for comparison. It PRINTS figures (with the targets next to
them); it is not a pass/fail test.

    .venv/bin/python bench/guests.py                  # sizes 1,4,8 on 4 QEMU hosts (about 3 min)
    .venv/bin/python bench/guests.py --sizes 1,2 --lcs 2
    .venv/bin/python bench/guests.py --rounds 3       # each size 3 times (medians over all)
    .venv/bin/python bench/guests.py --no-test-driver # QEMU only
    .venv/bin/python bench/guests.py --json [FILE]    # also machine-readable results
    .venv/bin/python bench/guests.py --keep           # keep the state dirs (configs, logs)

The cluster is ``snooze cluster up --hypervisor qemu``'s (``LocalCluster(hypervisor="qemu")``): a
bootstrap with the image repository, 2 group managers (one is the leader) and ``--lcs`` local
controllers, each on its own private libvirtd + QEMU host in its own network namespace (needs
root; scripts/install-qemu.sh). Each host offers this machine's CPUs (2 here), so 8 guests of
1 vcpu need 4 hosts. ``snooze-tiny`` is built when missing and uploaded once; each guest (1
vcpu, ``--memory`` KiB) boots from its own overlay with its config drive, and is asked
``GET http://ADDRESS/`` every 0.1 s from inside its host's namespace until it answers its name.
The first size also fetches the image into each host's cache (the "fetch" column).

Per guest, from the local controller's log (its own clock, the same machine's):

- placement: submission -> the local controller begins the guest's disks (bootstrap, leader,
  group manager, the start order);
- disk: the overlay + config drive (+ fetching the image into the cache the first time);
- domain start: disks ready -> libvirt's domain running;
- boot: domain running -> the guest's first HTTP answer (the kernel, the init, the NIC, httpd).

Targets (issue 11): the first guest answering < 10 s under TCG; disk preparation < 0.2 s per VM
(an overlay, not a copy). The exit status is 0 whatever the figures; 1 if a cluster could not
be started or a guest failed, 130 if interrupted.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: snooze
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common

import libvirt  # noqa: E402
from common import (  # noqa: E402
    FAST_TIMING,
    BenchError,
    Bootstrap,
    add_output_options,
    arg_parser,
    fmt_s,
    interruptible,
    log_time,
    port_range,
    remove_state_dir,
    start_virtual_cluster,
    stop_cluster,
    table,
    vm_metadata,
    write_json,
)

from snooze.dev import guestimage, netns  # noqa: E402
from snooze.dev.localcluster import (  # noqa: E402
    GUEST_IMAGE,
    ClusterError,
    ClusterOptions,
    LocalCluster,
    upload_image,
)
from snooze.dev.sim.libvirtd import VM_BRIDGE  # noqa: E402

TARGET_FIRST = 10.0
TARGET_DISK = 0.2
DISKS = re.compile(r"disks of (\S+) ready in ([0-9.]+) s \(image \S+ (fetched in ([0-9.]+) s|cached)")
STARTED = re.compile(r"started (\S+) \(")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def templates(prefix: str, n: int, memory: int, image: str) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-{i}", "vcpus": 1, "memory": memory, "imageId": image,
             "networkCapacityDemand": {"rxBytes": 1024.0, "txBytes": 1024.0}} for i in range(1, n + 1)]


def lc_events(c: LocalCluster) -> dict[str, dict[str, float]]:
    """Per VM: when its disks were ready (and how long they took, and any fetch) and when it
    started, from every local controller's log."""
    events: dict[str, dict[str, float]] = {}
    for spec in c.processes:
        if spec["role"] != "localcontroller":
            continue
        try:
            lines = Path(spec["log"]).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            at = log_time(line)
            if at is None:
                continue
            if m := DISKS.search(line):
                e = events.setdefault(m.group(1), {})
                e.update(disksReady=at, disk=float(m.group(2)))
                if m.group(4):
                    e["fetch"] = float(m.group(4))
            elif m := STARTED.search(line):
                events.setdefault(m.group(1), {})["started"] = at
    return events


class Prober:
    """``GET http://ADDRESS/`` from inside each host's namespace, on threads living there."""

    def __init__(self, namespaces: dict[str, str]) -> None:
        self.pools = {lc: netns.NamespaceExecutor(ns, workers=4) for lc, ns in namespaces.items()}
        self.namespaces = namespaces
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def check_route(self, lc: str, address: str) -> None:
        device = netns.route_device(self.namespaces[lc], address)
        if device != VM_BRIDGE:
            raise BenchError(f"{address} is routed through {device} in {self.namespaces[lc]}, not {VM_BRIDGE}")

    def get(self, address: str) -> str | None:
        try:
            with self.opener.open(f"http://{address}/", timeout=0.5) as resp:
                return str(resp.read().decode(errors="replace"))
        except (OSError, ValueError):
            return None

    def wait(self, guests: list[dict[str, Any]], timeout: float) -> None:
        """Set each guest's ``answeredAt`` (wall clock) once it answers its name."""
        pending = list(guests)
        for g in pending:
            self.check_route(g["lc"], g["ip"])
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            futures = {self.pools[g["lc"]].submit(self.get, g["ip"]): g for g in pending}
            for future, g in futures.items():
                if future.result() == g["id"] + "\n":
                    g["answeredAt"] = time.time()
                    pending.remove(g)
            if pending:
                time.sleep(0.1)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False)


def destroy_all(c: LocalCluster, bs: Bootstrap, ids: list[str]) -> None:
    for vm_id in ids:
        bs.call("POST", "destroyVirtualMachine", vm_id)
    if c.hypervisors is None:
        return
    deadline = time.monotonic() + 60
    for host in c.hypervisors.hosts:
        conn = libvirt.open(host.uri)
        try:
            while conn.listAllDomains() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            conn.close()

    def released() -> bool:
        # The leader places on its group managers' summaries: wait until they show the room again.
        gms = bs.get_json("getGroupManagerDescriptions") or []
        summaries = [gm.get("summaryInformation") or {} for gm in gms if isinstance(gm, dict)]
        return bool(summaries) and all(not any((s.get("requestedCapacity") or [0])[:1]) and
                                       not any((s.get("reservedCapacity") or [0])[:1]) for s in summaries)

    while not released() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2 * c.options.monitoring_interval)  # and the leader has the summary that says so


def run_qemu_size(c: LocalCluster, bs: Bootstrap, prober: Prober, n: int, round_no: int, memory: int,
                  timeout: float) -> dict[str, Any]:
    prefix = f"g{n}r{round_no}-{int(time.time()) % 100000}"
    r = start_virtual_cluster(bs, templates(prefix, n, memory, GUEST_IMAGE), timeout)
    t0 = r["startedAt"]
    guests = []
    for vm in vm_metadata(r):
        if vm.get("status") != "RUNNING":
            raise BenchError(f"{vm.get('virtualMachineId')}: {vm.get('status')} {vm.get('errorCode')} {vm.get('message', '')}")
        guests.append({"id": vm["virtualMachineId"], "ip": vm["ipAddress"],
                       "lc": vm["virtualMachineLocation"]["localControllerId"]})
    if len(guests) != n:
        raise BenchError(f"{len(guests)} of {n} guests in the response (timeout {timeout:.0f}s?)")
    prober.wait(guests, timeout)
    events = lc_events(c)
    for g in guests:
        e = events.get(g["id"], {})
        answered = g.get("answeredAt")
        g["answer"] = None if answered is None else answered - t0
        g["disk"] = e.get("disk")
        g["fetch"] = e.get("fetch")
        ready, started = e.get("disksReady"), e.get("started")
        g["placement"] = None if ready is None or g["disk"] is None else ready - g["disk"] - t0
        g["domainStart"] = None if ready is None or started is None else started - ready
        g["boot"] = None if started is None or answered is None else answered - started
    destroy_all(c, bs, [g["id"] for g in guests])
    missing = [g["id"] for g in guests if g["answer"] is None]
    if missing:
        raise BenchError(f"no answer within {timeout:.0f}s from {', '.join(missing)}")
    return {"size": n, "round": round_no, "responseSeconds": r["responseSeconds"], "guests": guests}


def run_test_driver(state: Path, sizes: list[int], rounds: int, lcs: int, keep: bool) -> list[dict[str, Any]]:
    c = LocalCluster(state, ClusterOptions(gms=2, lcs=lcs, base_port=port_range(4 + lcs), ec2=False, **FAST_TIMING))
    results = []
    try:
        c.up(wait=True, timeout=90)
        bs = Bootstrap(c.options.base_port)
        start_virtual_cluster(bs, templates("warm", 1, 131072, "snooze-tiny.qcow2"), 30)
        for round_no in range(1, rounds + 1):
            for n in sizes:
                r = start_virtual_cluster(bs, templates(f"t{n}r{round_no}", n, 131072, "snooze-tiny.qcow2"), 60)
                ok = sum(vm.get("status") == "RUNNING" for vm in vm_metadata(r))
                results.append({"size": n, "round": round_no, "responseSeconds": r["responseSeconds"], "running": ok})
                for vm in vm_metadata(r):
                    bs.call("POST", "destroyVirtualMachine", vm["virtualMachineId"])
    finally:
        stop_cluster(c)
        remove_state_dir(state, not keep, prefix="test driver: ")
    return results


def summarise(runs: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        gs = [g for r in runs if r["size"] == n for g in r["guests"]]

        def col(key: str, gs: list[dict[str, Any]] = gs) -> list[float]:
            return [g[key] for g in gs if g.get(key) is not None]

        first = [min(g["answer"] for g in r["guests"]) for r in runs if r["size"] == n]
        rows.append({"size": n, "guests": len(gs), "first": median(first), "median": median(col("answer")),
                     "max": max(col("answer"), default=None), "placement": median(col("placement")),
                     "disk": median(col("disk")), "diskMax": max(col("disk"), default=None),
                     "fetch": max(col("fetch"), default=None), "domainStart": median(col("domainStart")),
                     "boot": median(col("boot")), "bootMax": max(col("boot"), default=None),
                     "response": median([r["responseSeconds"] for r in runs if r["size"] == n and r["responseSeconds"]])})
    return rows


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--sizes", default="1,4,8", help="guests submitted at once, comma-separated (default 1,4,8)")
    ap.add_argument("--rounds", type=int, default=1, help="times each size is run (default 1)")
    ap.add_argument("--lcs", type=int, default=4, help="QEMU hosts (default 4: each offers this machine's CPUs)")
    ap.add_argument("--memory", type=int, default=131072, help="guest memory in KiB (default 131072 = 128 MiB)")
    ap.add_argument("--timeout", type=float, default=240.0, help="per size: seconds until every guest answered")
    ap.add_argument("--no-test-driver", dest="test_driver", action="store_false", help="skip the test-driver comparison")
    ap.add_argument("--state-dir", type=Path, default=Path(".state/bench-guests"))
    add_output_options(ap, "the state dirs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    interruptible()
    results: dict[str, Any] = {"sizes": sizes, "lcs": args.lcs, "memoryKiB": args.memory, "accelerator": "tcg"}
    try:
        image = guestimage.ensure_image()
        c = LocalCluster(args.state_dir / "qemu", ClusterOptions(gms=2, lcs=args.lcs, base_port=port_range(1), ec2=False,
                                                                 hypervisor="qemu", guest_image=False, **FAST_TIMING))
        runs: list[dict[str, Any]] = []
        try:
            t = time.monotonic()
            c.up(wait=True, timeout=180)
            results["clusterUpSeconds"] = time.monotonic() - t
            t = time.monotonic()
            record = upload_image(c.bootstrap_url, image, GUEST_IMAGE)
            results["uploadSeconds"] = time.monotonic() - t
            results["imageBytes"] = record.get("size")
            print(f"QEMU cluster: {args.lcs} hosts up in {results['clusterUpSeconds']:.1f} s; {GUEST_IMAGE} "
                  f"({record.get('size', 0) / 2**20:.1f} MiB) uploaded in {results['uploadSeconds']:.2f} s", flush=True)
            bs = Bootstrap(c.options.base_port)
            prober = Prober({p["id"]: p["netns"] for p in c.processes if p["role"] == "localcontroller"})
            try:
                for round_no in range(1, args.rounds + 1):
                    for n in sizes:
                        run = run_qemu_size(c, bs, prober, n, round_no, args.memory, args.timeout)
                        runs.append(run)
                        answers = sorted(g["answer"] for g in run["guests"])
                        run["loadAverage"] = os.getloadavg()[0]
                        print(f"  {n} guest(s), round {round_no}: answering after "
                              + ", ".join(f"{a:.1f}" for a in answers) + f" s (load average {run['loadAverage']:.1f}"
                              f" on {os.cpu_count()} CPUs)", flush=True)
            finally:
                prober.close()
        finally:
            stop_cluster(c)
            remove_state_dir(args.state_dir / "qemu", not args.keep, prefix="QEMU cluster: ")
        results["qemu"] = runs
        rows = summarise(runs, sizes)
        results["summary"] = rows
        print(f"\nQEMU (TCG, {args.memory // 1024} MiB guests), seconds from submission; medians over guests "
              f"(first: median over rounds of the first guest answering)")
        table(["guests", "first", "median", "max", "placement", "disk", "disk max", "fetch", "domain start", "boot",
               "boot max", "RUNNING"],
              [[str(r["size"]), fmt_s(r["first"], 1), fmt_s(r["median"], 1), fmt_s(r["max"], 1), fmt_s(r["placement"]),
                fmt_s(r["disk"], 3), fmt_s(r["diskMax"], 3), fmt_s(r["fetch"]), fmt_s(r["domainStart"]), fmt_s(r["boot"], 1),
                fmt_s(r["bootMax"], 1), fmt_s(r["response"])] for r in rows])
        first = rows[0]["first"] if rows else None
        disk = max((r["diskMax"] for r in rows if r["diskMax"] is not None), default=None)
        print(f"\ntarget: first guest answering < {TARGET_FIRST:.0f} s: {fmt_s(first, 1)} "
              f"{'MET' if first is not None and first < TARGET_FIRST else 'MISSED'}")
        print(f"target: disk preparation < {TARGET_DISK} s per VM: max {fmt_s(disk, 3)} "
              f"{'MET' if disk is not None and disk < TARGET_DISK else 'MISSED'}")
        if args.test_driver:
            td = run_test_driver(args.state_dir / "test", sizes, args.rounds, args.lcs, args.keep)
            results["testDriver"] = td
            print(f"\ntest driver (nothing boots), {args.lcs} hosts: submission -> RUNNING in the response")
            table(["guests", "RUNNING after", "running"],
                  [[str(n), fmt_s(median([r["responseSeconds"] for r in td if r["size"] == n and r["responseSeconds"]])),
                    f"{min(r['running'] for r in td if r['size'] == n)}/{n}"] for n in sizes])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, ClusterError, guestimage.GuestImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        write_json(results, args.json)
        return 1
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
