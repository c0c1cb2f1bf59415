#!/usr/bin/env python3
"""Energy benchmark: a simulated day on a local Snooze cluster, energy management OFF and ON.
It PRINTS figures (with the target next to them); it is not a pass/fail test.

    .venv/bin/python bench/energy.py                          # 24 simulated hours, 5 s each
    .venv/bin/python bench/energy.py --hours 6 --seconds-per-hour 4
    .venv/bin/python bench/energy.py --json                   # also print the results as JSON
    .venv/bin/python bench/energy.py --json out.json --keep   # write JSON; keep state dirs/logs

The cluster, all on 127.0.0.1: ZooKeeper, a bootstrap, 2 group managers (one becomes the group
leader, the other manages every local controller) and 8 local controllers on libvirt's test
driver, each host 8 vcpus / 16 GiB, heartbeat 0.5 s, monitoring 0.5 s. Both runs use a packing
placement policy (``groupmanager.placement_policy``, dot-product by default; the GM default
round-robin spreads VMs over every powered host, so no host ever goes idle).

The workload (seeded, identical in both runs) follows a diurnal curve of requested vcpus: a few
at night, a peak at 13:00. Every step (15 simulated minutes by default) each running VM leaves
with the probability of an exponential lifetime (mean 3 h); more leave at random while the
demand is above the curve, and new VMs (1-4 vcpus, 1-3 GiB per vcpu) arrive until it is reached.
At each step the departures are destroyed (``?destroyVirtualMachine``), then the arrivals are
submitted as one virtual cluster (``?startVirtualCluster``, ``?getVirtualClusterResponse``).

Run OFF: energy management off, every host stays on. Run ON: ``energy=True`` (each LC under a
simulated IPMI BMC), ``idle_time`` = --idle-hours simulated hours, ``reserved_nodes`` = 1 per
group manager. Before the clock starts, the midnight population is submitted and the cluster
left to settle (ON: until the idle hosts are powered down), so the day is a steady-state one.

Measured: ``?getLocalControllerList`` is sampled about every 0.2 s (real); hosts powered on are
those ACTIVE or WAKING, integrated into host-hours in simulated time. The lower bound: at each
step, the hosts needed = max over cpu and memory of ceil(demand / host capacity), at least the
reserved nodes, times the step. Target: ON within 15 % of the lower bound. Also: wake-ups and
power-downs (the managing group manager's "woke lc-"/"powered lc- down" log lines during the
day), the time from a submission that needed a sleeping host (a wake-up logged while it was
pending) to its VMs RUNNING, and every VM that failed to start (errorCode; must be 0).

The exit status is 0 whatever the figures are; 1 only if a cluster could not be started or
driven, 130 if interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: snooze
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common

from common import (  # noqa: E402
    FAST_TIMING,
    BenchError,
    Bootstrap,
    add_output_options,
    arg_parser,
    interruptible,
    log_time,
    port_range,
    remove_state_dir,
    start_virtual_cluster,
    stop_cluster,
    table,
    vm_metadata,
    wait_ready,
    warm_up,
    write_json,
)

from snooze.dev.localcluster import ClusterError, ClusterOptions, LocalCluster  # noqa: E402

GMS, LCS = 2, 8
LC_CPUS, LC_MEMORY_GIB = 8, 16
GIB_KIB = 1024 * 1024
TARGET_EXCESS = 15.0  # % over the lower bound
POLL = 0.05  # s between getVirtualClusterResponse polls
SAMPLE = 0.2  # s between getLocalControllerList samples
ON_STATES = ("ACTIVE", "WAKING")


# -- the workload ------------------------------------------------------------------------------
def demand_curve(hour: float, low: float, peak: float) -> float:
    """Requested vcpus at ``hour``: ``low`` at 01:00, ``peak`` at 13:00 (a cosine day)."""
    return low + (peak - low) * 0.5 * (1 - math.cos(2 * math.pi * (hour - 1.0) / 24.0))


def repack_hosts(vms: Sequence[tuple[int, int]]) -> int:
    """Hosts that first-fit decreasing needs for ``vms`` (vcpus, memory KiB) packed from scratch:
    what an ideal consolidation (migrating every VM) could reach at that moment."""
    cap = (LC_CPUS, LC_MEMORY_GIB * GIB_KIB)
    bins: list[list[int]] = []
    for c, m in sorted(vms, key=lambda v: -max(v[0] / cap[0], v[1] / cap[1])):
        for b in bins:
            if b[0] + c <= cap[0] and b[1] + m <= cap[1]:
                b[0] += c
                b[1] += m
                break
        else:
            bins.append([c, m])
    return len(bins)


def make_schedule(hours: float, step_h: float, low: float, peak: float, lifetime_h: float, seed: int) -> dict[str, Any]:
    """Every step's departures and arrivals, decided once so that both runs get the same day.
    Step 0 (hour 0) is the midnight population, submitted before the clock starts."""
    rng = random.Random(seed)
    running: dict[str, tuple[int, int]] = {}  # name -> (vcpus, memory KiB)
    counter = 0
    steps = []
    n = int(round(hours / step_h))
    p_leave = 1 - math.exp(-step_h / lifetime_h)
    for k in range(n):
        hour = k * step_h
        target = demand_curve(hour, low, peak)
        leave = [v for v in sorted(running) if k > 0 and rng.random() < p_leave]
        for v in leave:
            running.pop(v)
        cpu = sum(c for c, _ in running.values())
        while cpu > target and running:
            v = rng.choice(sorted(running))
            cpu -= running.pop(v)[0]
            leave.append(v)
        arrive = []
        while cpu < target:
            vcpus = rng.randint(1, 4)
            mem = vcpus * rng.randint(1, 3) * GIB_KIB
            counter += 1
            name = f"vm-{counter:04d}"
            running[name] = (vcpus, mem)
            arrive.append({"name": name, "vcpus": vcpus, "memory": mem})
            cpu += vcpus
        mem_total = sum(m for _, m in running.values())
        steps.append({"step": k, "hour": hour, "target": target, "leave": leave, "arrive": arrive,
                      "vms": len(running), "vcpus": cpu, "memoryGiB": mem_total / GIB_KIB,
                      "hostsNeeded": max(math.ceil(cpu / LC_CPUS), math.ceil(mem_total / (LC_MEMORY_GIB * GIB_KIB))),
                      "repackHosts": repack_hosts(list(running.values()))})
    return {"steps": steps, "vmsTotal": counter, "pLeave": p_leave}


# -- a run -------------------------------------------------------------------------------------
def template(vm: dict[str, Any]) -> dict[str, Any]:
    return dict(vm, imageId="debian.qcow2")


class Sampler(threading.Thread):
    """Samples ``?getLocalControllerList`` in the background: (monotonic, wall, {lc: (status, #VMs)})."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.bs = Bootstrap(port, timeout=5.0)
        self.samples: list[tuple[float, float, dict[str, tuple[str, int]]]] = []
        self.stop_event = threading.Event()
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.monotonic()
            data = self.bs.get_json("getLocalControllerList")
            if data and isinstance(data.get("localControllers"), list):
                snap = {lc["id"]: (lc.get("status") or "?", len(lc.get("assignedVirtualMachines") or []))
                        for lc in data["localControllers"]}
                self.samples.append((t, time.time(), snap))
            else:
                self.failures += 1
            self.stop_event.wait(max(0.0, SAMPLE - (time.monotonic() - t)))
        self.bs.close()

    def last(self) -> dict[str, tuple[str, int]]:
        return self.samples[-1][2] if self.samples else {}


def statuses(bs: Bootstrap) -> dict[str, str]:
    data = bs.get_json("getLocalControllerList") or {}
    return {lc["id"]: lc.get("status") for lc in data.get("localControllers") or []}


WOKE = re.compile(r"woke (lc-\S+) in ([0-9.]+)s")
DOWN = re.compile(r"powered (lc-\S+) down")
WAKE_FAIL = re.compile(r"waking (lc-\S+) failed")


def gm_events(c: LocalCluster) -> list[tuple[float, str, str, float | None]]:
    """(wall time, kind, lc, seconds) of every wake-up / power-down logged by any group manager."""
    out: list[tuple[float, str, str, float | None]] = []
    for spec in c.processes:
        if spec["role"] != "groupmanager":
            continue
        try:
            lines = Path(spec["log"]).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            at = log_time(line)
            if at is None:
                continue
            if (w := WOKE.search(line)):
                out.append((at, "woke", w.group(1), float(w.group(2))))
            elif (d := DOWN.search(line)):
                out.append((at, "down", d.group(1), None))
            elif (f := WAKE_FAIL.search(line)):
                out.append((at, "wakeFailed", f.group(1), None))
    return sorted(out)


def run_day(label: str, energy: bool, args: argparse.Namespace, schedule: dict[str, Any], keep: bool) -> dict[str, Any]:
    S = args.seconds_per_hour
    step_h = args.step_minutes / 60.0
    idle_time = args.idle_hours * S
    state_dir = Path(tempfile.mkdtemp(prefix=f"snooze-bench-energy-{label.lower()}-"))
    extra: dict[str, Any] = {"groupmanager.placement_policy": args.placement, "groupmanager.dispatch_policy": args.dispatch}
    if energy:
        extra["groupmanager.wakeup_time"] = args.wakeup_time
        if args.consolidation_hours > 0:
            # Energy management as Snooze means it: consolidate, then power the emptied hosts down.
            extra["groupmanager.consolidation_interval"] = args.consolidation_hours * S
            extra["groupmanager.consolidation_policy"] = args.consolidation_policy
    opts = ClusterOptions(gms=GMS, lcs=LCS, lc_cpus=LC_CPUS, lc_memory_gib=LC_MEMORY_GIB,
                          base_port=port_range(1 + GMS + LCS, udp=True), energy=energy, idle_time=idle_time,
                          reserved_nodes=args.reserved_nodes, extra=extra, **FAST_TIMING)
    cluster = LocalCluster(state_dir, opts)
    bs = Bootstrap(opts.base_port, timeout=30.0)
    sampler = Sampler(opts.base_port)
    res: dict[str, Any] = {"label": label, "energy": energy, "idleTimeSeconds": idle_time, "stateDir": str(state_dir),
                           "submissions": [], "failed": [], "destroyFailures": [], "slippageSeconds": 0.0}
    print(f"\n[{label}] energy management {'ON' if energy else 'OFF'}: cluster in {state_dir} on "
          f"127.0.0.1:{opts.base_port}-{opts.base_port + GMS + LCS}", flush=True)
    ok = False
    try:
        t = time.monotonic()
        cluster.up(wait=True, timeout=90)
        _, h, _ = wait_ready(cluster, bs)
        managing = [gm["id"] for gm in h.get("groupManagerDescriptions", []) if gm.get("localControllers")]
        res["managingGroupManagers"] = managing
        res["reservedTotal"] = args.reserved_nodes * max(1, len(managing)) if energy else 0
        print(f"[{label}] hierarchy formed in {time.monotonic() - t:.1f}s; LCs under {', '.join(managing)}", flush=True)
        # Warm-up: one VM, retried until it runs (the leader needs a first summary), then destroyed.
        _, r = warm_up(bs, lambda attempt: template({"name": f"warm-{attempt}", "vcpus": 1, "memory": GIB_KIB}),
                       within=40, pause=0.5, strict=False)
        bs.call("POST", "destroyVirtualMachine", vm_metadata(r)[0]["virtualMachineId"])

        running: set[str] = set()

        def do_step(st: dict[str, Any], record: bool) -> None:
            for name in st["leave"]:
                if name not in running:
                    continue  # it never started (already counted as failed)
                status, raw = bs.call("POST", "destroyVirtualMachine", name)
                if status != 200 or raw.strip() not in (b"true",):
                    res["destroyFailures"].append({"vm": name, "status": status, "body": raw[:200].decode(errors="replace")})
                running.discard(name)
            if not st["arrive"]:
                return
            r = start_virtual_cluster(bs, [template(v) for v in st["arrive"]], args.timeout, interval=POLL, strict=False)
            metas = vm_metadata(r)
            by_name = {m.get("virtualMachineId"): m for m in metas}
            failed = []
            hosts = set()
            for v in st["arrive"]:
                m = by_name.get(v["name"])
                if m and m.get("status") == "RUNNING":
                    running.add(v["name"])
                    hosts.add((m.get("virtualMachineLocation") or {}).get("localControllerId"))
                else:
                    code = (m or {}).get("errorCode") or ("NO_RESPONSE" if r.get("response") is None else (m or {}).get("status") or "MISSING")
                    failed.append({"vm": v["name"], "step": st["step"], "hour": st["hour"], "errorCode": code,
                                   "message": (m or {}).get("message")})
            res["failed"].extend(failed)
            if record:
                res["submissions"].append({"step": st["step"], "hour": st["hour"], "vms": len(st["arrive"]),
                                           "seconds": r["seconds"], "wall0": r["startedAt"], "wall1": r["finishedAt"],
                                           "hosts": sorted(h for h in hosts if h), "failed": len(failed),
                                           "before": dict(sampler.last())})

        # Midnight: the night population, then let the cluster settle (ON: idle hosts power down).
        sampler.start()
        steps = schedule["steps"]
        do_step(steps[0], record=False)
        settle_deadline = time.monotonic() + max(10.0, idle_time + 15.0)
        stable_since = time.monotonic()
        last: dict[str, str] | None = None
        while time.monotonic() < settle_deadline:
            now = statuses(bs)
            if now != last:
                last, stable_since = now, time.monotonic()
            if time.monotonic() - stable_since > idle_time + 2.0:
                break
            time.sleep(0.2)
        res["atMidnight"] = last
        print(f"[{label}] midnight: {steps[0]['vms']} VMs, hosts {dict(sorted((last or {}).items()))}", flush=True)

        # The day.
        t0 = time.monotonic()
        wall_t0 = time.time()
        res["dayStartWall"] = wall_t0
        for st in steps[1:]:
            due = t0 + st["hour"] * S
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                res["slippageSeconds"] = max(res["slippageSeconds"], -wait)
            do_step(st, record=True)
            if st["step"] % max(1, int(round(3 / step_h))) == 0:
                snap = sampler.last()
                on = sum(1 for s, _ in snap.values() if s in ON_STATES)
                print(f"[{label}]  {st['hour']:5.2f}h  demand {st['vcpus']:3d} vcpus {st['memoryGiB']:5.1f} GiB "
                      f"(>= {max(st['hostsNeeded'], res['reservedTotal'])} hosts)  powered on {on}  "
                      f"failed so far {len(res['failed'])}", flush=True)
        end = t0 + args.hours * S
        if end > time.monotonic():
            time.sleep(end - time.monotonic())
        res["dayEndWall"] = time.time()
        res["dayRealSeconds"] = time.monotonic() - t0
        sampler.stop_event.set()
        sampler.join(10)
        res.update(integrate(sampler.samples, t0, end, S))
        res["samplerFailures"] = sampler.failures
        ok = True
    finally:
        sampler.stop_event.set()
        bs.close()
        stop_cluster(cluster)
        events = gm_events(cluster)
        day0, day1 = res.get("dayStartWall", float("inf")), res.get("dayEndWall", float("inf"))
        res["events"] = [{"at": at - day0, "kind": k, "lc": lc, "seconds": s} for at, k, lc, s in events if day0 <= at <= day1]
        res["eventsBeforeDay"] = sum(1 for at, *_ in events if at < day0)
        remove_state_dir(state_dir, ok and not keep, prefix=f"[{label}] ")
    annotate_wakes(res, S)
    return res


def integrate(samples: list[tuple[float, float, dict[str, tuple[str, int]]]], t0: float, end: float, S: float) -> dict[str, Any]:
    """Host-hours powered on (ACTIVE or WAKING) and occupied (hosting a VM) in simulated time."""
    on_h = occupied_h = 0.0
    per_status: dict[str, float] = {}
    trans_wake = trans_down = 0
    prev: dict[str, str] = {}
    pts = [s for s in samples if s[0] <= end]
    prof = [{"h": (t - t0) / S, "on": sum(1 for st, _n in snap.values() if st in ON_STATES),
             "vm": sum(1 for st, n in snap.values() if st in ON_STATES and n > 0)} for t, _w, snap in pts if t >= t0]
    for i, (t, _wall, snap) in enumerate(pts):
        if t >= t0:
            for lc, (st, _n) in snap.items():
                before = prev.get(lc)
                if before == "PASSIVE" and st in ON_STATES:
                    trans_wake += 1
                if before in ON_STATES and st == "PASSIVE":
                    trans_down += 1
        prev = {lc: st for lc, (st, _n) in snap.items()}
        a = max(t, t0)
        b = min(pts[i + 1][0] if i + 1 < len(pts) else end, end)
        if b <= a:
            continue
        dh = (b - a) / S
        on_h += dh * sum(1 for st, _n in snap.values() if st in ON_STATES)
        occupied_h += dh * sum(1 for st, n in snap.values() if st in ON_STATES and n > 0)
        for st, _n in snap.values():
            per_status[st] = per_status.get(st, 0.0) + dh
    return {"hostHours": on_h, "occupiedHostHours": occupied_h, "statusHours": per_status, "samples": len(pts),
            "transitionsWake": trans_wake, "transitionsDown": trans_down, "_profile": prof}


def annotate_wakes(res: dict[str, Any], S: float) -> None:
    """A submission needed a sleeping host if a wake-up was logged while it was pending (or one
    of its VMs landed on a host the last sample before it showed asleep)."""
    day0 = res.get("dayStartWall", 0.0)
    wakes = [e for e in res.get("events", []) if e["kind"] in ("woke", "wakeFailed")]
    for s in res["submissions"]:
        a, b = s["wall0"] - day0, s["wall1"] - day0
        logged = [e for e in wakes if a - 0.05 <= e["at"] <= b + 0.05]
        asleep = [h for h in s["hosts"] if (s["before"].get(h) or ("?",))[0] not in ("ACTIVE",)]
        s["woke"] = sorted({e["lc"] for e in logged} | set(asleep))
        s.pop("before", None)


# -- reporting ---------------------------------------------------------------------------------
def lower_bound(schedule: dict[str, Any], step_h: float, reserved: int) -> float:
    # Step k's population is in effect over [k, k+1) steps; step 0 (midnight) from the clock's start.
    return sum(max(st["hostsNeeded"], reserved) * step_h for st in schedule["steps"])


def repack_bound(schedule: dict[str, Any], step_h: float, reserved: int) -> float:
    return sum(max(st["repackHosts"], reserved) * step_h for st in schedule["steps"])


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    a = results["args"]
    step_h = a["step_minutes"] / 60.0
    off, on = results["runs"].get("OFF"), results["runs"].get("ON")
    reserved = (on or {}).get("reservedTotal", a["reserved_nodes"])
    lb = lower_bound(results["schedule"], step_h, reserved)
    out: dict[str, Any] = {"lowerBoundHostHours": lb, "reservedTotal": reserved,
                           "repackHostHours": repack_bound(results["schedule"], step_h, reserved)}
    if off and "hostHours" in off:
        out["offHostHours"] = off["hostHours"]
    if on and "hostHours" in on:
        out["onHostHours"] = on["hostHours"]
        out["excessPercent"] = 100.0 * (on["hostHours"] - lb) / lb if lb else None
        out["occupiedHostHours"] = on["occupiedHostHours"]
        out["met"] = out["excessPercent"] is not None and out["excessPercent"] <= TARGET_EXCESS
        ev = on.get("events", [])
        out["wakeups"] = sum(1 for e in ev if e["kind"] == "woke")
        out["wakeFailures"] = sum(1 for e in ev if e["kind"] == "wakeFailed")
        out["powerDowns"] = sum(1 for e in ev if e["kind"] == "down")
        wake_secs = [e["seconds"] for e in ev if e["kind"] == "woke" and e["seconds"] is not None]
        out["wakeSeconds"] = {"median": statistics.median(wake_secs), "max": max(wake_secs)} if wake_secs else None
        need = [s["seconds"] for s in on["submissions"] if s.get("woke")]
        plain = [s["seconds"] for s in on["submissions"] if not s.get("woke")]
        out["wakeSubmissions"] = len(need)
        out["wakeLatency"] = {"median": statistics.median(need), "max": max(need)} if need else None
        out["plainLatency"] = {"median": statistics.median(plain), "max": max(plain)} if plain else None
    if off and off.get("submissions"):
        secs = [s["seconds"] for s in off["submissions"]]
        out["offLatency"] = {"median": statistics.median(secs), "max": max(secs)}
    return out


def report(results: dict[str, Any], out: Any = sys.stdout) -> None:
    a = results["args"]
    S = a["seconds_per_hour"]
    sm = results["summary"]
    sched = results["schedule"]
    peak = max(sched["steps"], key=lambda s: s["vcpus"])
    print("", file=out)
    print(f"simulated day: {a['hours']:g} h, 1 h = {S:g} s real, step {a['step_minutes']:g} min; "
          f"{sched['vmsTotal']} VMs over the day (1-4 vcpus, 1-3 GiB/vcpu, mean lifetime {a['lifetime_hours']:g} h), "
          f"demand {sched['steps'][0]['vcpus']} vcpus at midnight, peak {peak['vcpus']} vcpus / {peak['memoryGiB']:.0f} GiB "
          f"at {peak['hour']:.2f}h; cluster {LCS} LCs x {LC_CPUS} vcpus / {LC_MEMORY_GIB} GiB", file=out)
    print(f"placement policy (groupmanager.placement_policy): {a['placement']} in both runs "
          f"(dispatch_policy {a['dispatch']}); ON: consolidation every {a['consolidation_hours']:g} h ({a['consolidation_policy']}), "
          f"idle_time {a['idle_hours']:g} h = {a['idle_hours'] * S:g} s, "
          f"reserved_nodes {a['reserved_nodes']} per GM ({sm['reservedTotal']} in all), wakeup_time {a['wakeup_time']:g} s", file=out)
    print("", file=out)

    def hh(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def lat(d: dict[str, float] | None) -> str:
        if not d:
            return "-"
        return f"median {d['median']:.2f}s ({d['median'] / S * 60:.0f} sim min), max {d['max']:.2f}s ({d['max'] / S * 60:.0f} sim min)"

    rows = [
        ("host-hours, energy management OFF", hh(sm.get("offHostHours"))),
        ("host-hours, energy management ON", hh(sm.get("onHostHours"))),
        ("host-hours, lower bound", hh(sm.get("lowerBoundHostHours"))),
        ("ON over the lower bound", "-" if sm.get("excessPercent") is None else
         f"{sm['excessPercent']:+.1f} %  target <= {TARGET_EXCESS:.0f} %  {'MET' if sm.get('met') else 'MISSED'}"),
        ("ON saving vs OFF", "-" if not sm.get("offHostHours") or sm.get("onHostHours") is None else
         f"{100 * (1 - sm['onHostHours'] / sm['offHostHours']):.1f} %"),
        ("ON host-hours with >= 1 VM on the host", hh(sm.get("occupiedHostHours"))),
        ("reference: FFD repack of every step from scratch", hh(sm.get("repackHostHours")) + (
            "" if not sm.get("lowerBoundHostHours") else
            f"  ({100 * (sm['repackHostHours'] / sm['lowerBoundHostHours'] - 1):+.1f} % over the bound)")),
        ("wake-ups (logged 'woke lc-')", str(sm.get("wakeups", "-")) + (f"  ({sm['wakeFailures']} failed)" if sm.get("wakeFailures") else "")),
        ("power-downs (logged 'powered lc- down')", str(sm.get("powerDowns", "-"))),
        ("wake-up itself (IPMI power on -> LC re-joined)", lat(sm.get("wakeSeconds"))),
        (f"submission needing a sleeping host -> RUNNING (x{sm.get('wakeSubmissions', 0)})", lat(sm.get("wakeLatency"))),
        ("other submissions, ON", lat(sm.get("plainLatency"))),
        ("submissions, OFF", lat(sm.get("offLatency"))),
    ]
    for label in ("OFF", "ON"):
        r = results["runs"].get(label)
        if r is None:
            continue
        codes: dict[str, int] = {}
        for f in r["failed"]:
            codes[f["errorCode"]] = codes.get(f["errorCode"], 0) + 1
        rows.append((f"VMs failed to start, {label} (must be 0)",
                     str(len(r["failed"])) + ("  " + ", ".join(f"{k} x{n}" for k, n in sorted(codes.items())) if codes else "")))
        if r.get("destroyFailures"):
            rows.append((f"destroys refused, {label}", str(len(r["destroyFailures"]))))
    table(("measurement", "value"), rows, out)

    on = results["runs"].get("ON")
    if on and "statusHours" in on:
        print("\nON: host-hours by status (sampled): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(on["statusHours"].items()))
              + f"; status transitions seen by the sampler: {on['transitionsWake']} PASSIVE->on, "
              f"{on['transitionsDown']} on->PASSIVE", file=out)
    # Per 2 simulated hours: lower bound vs measured on-hosts (ON).
    if on and results.get("profile"):
        print("\nper period (simulated hours): demand at the end, mean hosts needed (bound; FFD repack), "
              "mean hosts on (OFF / ON), mean hosts with a VM (ON):", file=out)
        table(("hours", "vcpus", "GiB", "bound", "FFD", "OFF", "ON", "with VM"), results["profile"], out)
    for label in ("OFF", "ON"):
        r = results["runs"].get(label)
        if r and r.get("slippageSeconds", 0) > 0.5:
            print(f"note: {label}: a step started up to {r['slippageSeconds']:.1f}s late (a submission took longer than a step)", file=out)


def profile(results: dict[str, Any], period_h: float = 2.0) -> list[list[str]]:
    """Per period: demand, bound, mean powered-on hosts in each run (from the raw samples)."""
    a = results["args"]
    steps = results["schedule"]["steps"]
    reserved = results["summary"]["reservedTotal"]
    rows = []
    n = int(math.ceil(a["hours"] / period_h))
    for p in range(n):
        lo, hi = p * period_h, min((p + 1) * period_h, a["hours"])
        in_p = [st for st in steps if lo <= st["hour"] < hi]
        if not in_p:
            continue
        bound = sum(max(st["hostsNeeded"], reserved) for st in in_p) / len(in_p)
        repack = sum(max(st["repackHosts"], reserved) for st in in_p) / len(in_p)
        cells = []
        for label, key in (("OFF", "on"), ("ON", "on"), ("ON", "vm")):
            prof = (results["runs"].get(label) or {}).get("_profile") or []
            vals = [x[key] for x in prof if lo <= x["h"] < hi]
            cells.append("-" if not vals else f"{sum(vals) / len(vals):.1f}")
        last = in_p[-1]
        rows.append([f"{lo:04.1f}-{hi:04.1f}", str(last["vcpus"]), f"{last['memoryGiB']:.0f}", f"{bound:.1f}", f"{repack:.1f}",
                     *cells])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    ap.add_argument("--seconds-per-hour", type=float, default=5.0, help="real seconds per simulated hour (default 5)")
    ap.add_argument("--step-minutes", type=float, default=15.0, help="simulated minutes between workload steps (default 15)")
    ap.add_argument("--idle-hours", type=float, default=0.25, help="ON: idle_time in simulated hours (default 0.25)")
    ap.add_argument("--reserved-nodes", type=int, default=1, help="ON: reserved_nodes per group manager (default 1)")
    ap.add_argument("--wakeup-time", type=float, default=30.0, help="ON: groupmanager.wakeup_time, real seconds (default 30)")
    ap.add_argument("--consolidation-hours", type=float, default=0.25,
                    help="ON: consolidation every this many simulated hours, 0 = never (default 0.25)")
    ap.add_argument("--consolidation-policy", default="cost-aware", help="ON: groupmanager.consolidation_policy (default cost-aware)")
    ap.add_argument("--placement", default="dot-product", help="groupmanager.placement_policy for both runs (default dot-product)")
    ap.add_argument("--dispatch", default="first-fit", help="groupmanager.dispatch_policy for both runs (default first-fit)")
    ap.add_argument("--low", type=float, default=4.0, help="requested vcpus at night (default 4)")
    ap.add_argument("--peak", type=float, default=44.0, help="requested vcpus at 13:00 (default 44 of 64)")
    ap.add_argument("--lifetime-hours", type=float, default=3.0, help="mean VM lifetime, simulated hours (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=("OFF", "ON"), help="run one of the two only")
    ap.add_argument("--timeout", type=float, default=90.0, help="give up on one submission after this long (default 90 s)")
    add_output_options(ap, "the state dirs")
    args = ap.parse_args(argv)

    interruptible()

    step_h = args.step_minutes / 60.0
    schedule = make_schedule(args.hours, step_h, args.low, args.peak, args.lifetime_hours, args.seed)
    results: dict[str, Any] = {"args": vars(args), "schedule": schedule, "runs": {}, "cpus": os.cpu_count()}
    print(f"energy benchmark: {args.hours:g} simulated hours at {args.seconds_per_hour:g} s/h "
          f"({len(schedule['steps'])} steps), {schedule['vmsTotal']} VMs; placement {args.placement}", flush=True)
    status = 0
    started = time.monotonic()
    try:
        for label, energy in (("OFF", False), ("ON", True)):
            if args.only and args.only != label:
                continue
            r = run_day(label, energy, args, schedule, args.keep)
            results["runs"][label] = r
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        status = 130
    except (BenchError, ClusterError) as exc:
        print(f"\nthe cluster failed to run: {exc}", file=sys.stderr, flush=True)
        status = 1
    results["totalSeconds"] = time.monotonic() - started
    results["summary"] = summarize(results)
    results["profile"] = profile(results)
    if status:
        print("\npartial figures:")
    report(results)
    print(f"\ntotal run {results['totalSeconds']:.0f}s on a machine with {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f})")
    results["status"] = {0: "ok", 130: "interrupted"}.get(status, "cluster-failed")
    for r in results["runs"].values():
        r.pop("_profile", None)
    write_json(results, args.json, default=str)
    return status


if __name__ == "__main__":
    sys.exit(main())
