#!/usr/bin/env python3
"""Submission benchmark: how fast a local Snooze cluster starts virtual clusters of 10, 100 and
500 small VMs, and what it costs the group leader and the group managers. It PRINTS figures
(with the target next to them); it is not a pass/fail test.

    .venv/bin/python bench/submit.py                  # sizes 10,100,500
    .venv/bin/python bench/submit.py --sizes 10,50    # other sizes
    .venv/bin/python bench/submit.py --json           # also print machine-readable results
    .venv/bin/python bench/submit.py --json out.json

The cluster, all on 127.0.0.1: ZooKeeper, a bootstrap, 2 group managers (one becomes the group
leader) and 8 local controllers on libvirt's test driver, each host 128 vcpus / 256 GiB (room
for every VM of every size), heartbeat and monitoring every 1 s, VM subnet 10.64.0.0/16 (the
default /24 holds only 253 addresses). Each virtual cluster (VMs of 1 vcpu and 256 MiB, names
unique per run) is submitted through the bootstrap (``?startVirtualCluster``) and
``?getVirtualClusterResponse`` is polled every ~50 ms until it answers. VMs of earlier sizes
keep running while the next size is submitted.

Printed per size: time until the task id came back, time until the response said every VM
RUNNING, VMs per second, VMs not RUNNING (with their errorCodes), and CPU seconds (user+system)
and RSS of the group leader and of each group manager before and after the submission.

Target: 500 VMs RUNNING in under 10 s. Reference: the OpenStack Nova scheduler of 2012 took
26 s to schedule 100 VMs.

The exit status is 0 whatever the figures are; it is 1 only if the cluster could not be
started or driven (then the figures are partial), 130 if interrupted.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: snooze
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common

from common import (  # noqa: E402
    BenchError,
    Bootstrap,
    add_output_options,
    arg_parser,
    fmt_s,
    hierarchy_lcs,
    interruptible,
    log_time,
    port_range,
    public_options,
    remove_state_dir,
    start_virtual_cluster,
    stop_cluster,
    table,
    usage,
    vm_metadata,
    wait_ready,
    warm_up,
    write_json,
)

from snooze.dev.localcluster import ClusterError, ClusterOptions, LocalCluster, _alive  # noqa: E402

POLL = 0.05  # seconds between getVirtualClusterResponse polls
GMS, LCS = 2, 8
LC_CPUS, LC_MEMORY_GIB = 128, 256
VM_VCPUS, VM_MEMORY_KIB = 1, 256 * 1024
SUBNET = "10.64.0.0/16"
TARGET_VMS, TARGET_SECONDS = 500, 10.0
NOVA_2012 = (100, 26.0)  # (VMs, seconds) -- the Nova scheduler of 2012
TIMING: dict[str, Any] = {"heartbeat_interval": 1.0, "monitoring_interval": 1.0}


# -- helpers -----------------------------------------------------------------------------------
def template(name: str) -> dict[str, Any]:
    return {"vcpus": VM_VCPUS, "memory": VM_MEMORY_KIB, "name": name, "imageId": "debian.qcow2"}


def sample(c: LocalCluster) -> dict[str, dict[str, float]]:
    """id -> {cpu: user+system seconds (with children), rss: MiB} for every group manager,
    the sums over the local controllers, the bootstrap and ZooKeeper."""
    out: dict[str, dict[str, float]] = {}
    for spec in c.processes:
        used = None if spec["role"] == "zookeeper" or not _alive(spec.get("pid")) else usage(spec["pid"])
        if used is None:
            continue
        key = spec["id"] if spec["role"] == "groupmanager" else {"localcontroller": "all LCs", "bootstrap": "bootstrap"}[spec["role"]]
        slot = out.setdefault(key, {"cpu": 0.0, "rss": 0.0})
        slot["cpu"] += used[0]
        slot["rss"] += used[1]
    if c.zk is not None and c.zk.pid and _alive(c.zk.pid) and (used := usage(c.zk.pid, children=False)):
        out["zookeeper"] = {"cpu": used[0], "rss": used[1]}
    return out


def submit_and_wait(bs: Bootstrap, names: list[str], timeout: float) -> dict[str, Any]:
    """Submit one virtual cluster and poll its response; returns timings and the response."""
    return start_virtual_cluster(bs, [template(n) for n in names], timeout, interval=POLL, start_timeout=max(30.0, timeout))


def leader_phases(c: LocalCluster, leader_id: str, task: str, started_at: float) -> dict[str, float | None]:
    """Seconds from the POST until the leader logged 'accepted' and 'done' for ``task`` (its log
    lines carry wall-clock milliseconds)."""
    out: dict[str, float | None] = {"acceptedSeconds": None, "dispatchedSeconds": None}
    try:
        lines = Path(c.process(leader_id)["log"]).read_text(errors="replace").splitlines()
    except (OSError, ClusterError):
        return out
    for line in lines:
        if task not in line:
            continue
        at = log_time(line)
        if at is None:
            continue
        if "accepted virtual cluster" in line:
            out["acceptedSeconds"] = at - started_at
        elif " done: " in line:
            out["dispatchedSeconds"] = at - started_at
    return out


def domains_listed(bs: Bootstrap, names: list[str], timeout: float = 5.0) -> int:
    """How many of ``names`` the hierarchy lists on some local controller (waits up to ``timeout``)."""
    want = set(names)
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        h = bs.get_json("getCompleteHierarchy") or {}
        listed = {vm for _gm, lc in hierarchy_lcs(h) for vm in lc.get("assignedVirtualMachines") or []}
        seen = len(want & listed)
        if seen == len(want) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def summarize(vms: int, r: dict[str, Any]) -> dict[str, Any]:
    meta = vm_metadata(r)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for m in meta:
        statuses[m.get("status")] = statuses.get(m.get("status"), 0) + 1
        if m.get("status") != "RUNNING":
            code = m.get("errorCode") or m.get("status") or "?"
            errors[code] = errors.get(code, 0) + 1
    running = statuses.get("RUNNING", 0)
    not_running = vms - running
    if r.get("response") is None:
        errors["NO_RESPONSE"] = vms
    all_running = r.get("responseSeconds") if not_running == 0 else None
    return {
        "vms": vms, "taskSeconds": r["taskSeconds"], "responseSeconds": r.get("responseSeconds"),
        "allRunningSeconds": all_running, "running": running, "notRunning": not_running, "errorCodes": errors,
        "vmsPerSecond": (running / r["responseSeconds"]) if r.get("responseSeconds") else None,
        "responseErrorCode": (r.get("response") or {}).get("errorCode"), "taskId": r["task"],
        "startedAt": r["startedAt"], "polls": r["polls"],
    }


# -- reporting ---------------------------------------------------------------------------------
def report(results: dict[str, Any], out: Any = sys.stdout) -> None:
    runs = results["runs"]
    print("", file=out)
    rows: list[Sequence[str]] = []
    for r in runs:
        errs = ", ".join(f"{k} x{n}" for k, n in sorted(r["errorCodes"].items()))
        rows.append((str(r["vms"]), fmt_s(r["taskSeconds"]),
                     fmt_s(r["allRunningSeconds"]) if r["notRunning"] == 0 else f"({fmt_s(r['responseSeconds'])} answered)",
                     "-" if r["vmsPerSecond"] is None else f"{r['vmsPerSecond']:.1f}",
                     str(r["notRunning"]) + (f"  {errs}" if errs else "")))
    table(("VMs", "task id", "all RUNNING", "VMs/s", "not RUNNING"), rows, out)
    print("\nwhere the time went (from the POST; leader times from its log, ms resolution):", file=out)
    rows = [[str(r["vms"]), fmt_s(r.get("acceptedSeconds")), fmt_s(r.get("dispatchedSeconds")), fmt_s(r["responseSeconds"]),
             f"{r.get('listedInHierarchy', '-')}/{r['vms']}",
             "-" if not r.get("loadAverage") else "{:.1f} -> {:.1f}".format(*r["loadAverage"])] for r in runs]
    table(("VMs", "leader accepted", "leader dispatch done", "response answered", "listed on LCs", "load avg"), rows, out)

    target = next((r for r in runs if r["vms"] == TARGET_VMS), None)
    if target is None:
        verdict = f"(no {TARGET_VMS}-VM run)"
    elif target["allRunningSeconds"] is not None and target["allRunningSeconds"] < TARGET_SECONDS:
        verdict = f"MET ({target['allRunningSeconds']:.2f}s)"
    else:
        got = target["allRunningSeconds"] or target["responseSeconds"]
        verdict = f"MISSED ({fmt_s(got)}, {target['notRunning']} not RUNNING)"
    print(f"\ntarget: {TARGET_VMS} VMs RUNNING in under {TARGET_SECONDS:.0f}s  {verdict}", file=out)
    n, s = NOVA_2012
    print(f"reference: OpenStack Nova scheduler (2012) took {s:.0f}s to schedule {n} VMs ({n / s:.1f} VMs/s)", file=out)

    # Per process: CPU seconds and RSS before and after each submission.
    leader = results.get("leader")
    print("\nCPU (user+system, s) and RSS (MiB) before -> after each submission:", file=out)
    rows = []
    for r in runs:
        before, after = r.get("before") or {}, r.get("after") or {}
        order = {"all LCs": 0, "bootstrap": 1, "zookeeper": 2}
        keys = sorted(set(before) | set(after), key=lambda k: (k != leader, not k.startswith("gm-"), order.get(k, -1), k))
        for k in keys:
            b, a = before.get(k), after.get(k)
            if not b or not a:
                continue
            who = f"{k} (leader)" if k == leader else (f"{k} (manager)" if k.startswith("gm-") else k)
            rows.append((str(r["vms"]), who, f"{b['cpu']:.2f}", f"{a['cpu']:.2f}", f"{a['cpu'] - b['cpu']:+.2f}",
                         f"{b['rss']:.1f}", f"{a['rss']:.1f}"))
    table(("VMs", "process", "CPU before", "CPU after", "delta CPU", "RSS before", "RSS after"), rows, out)

    o = results["options"]
    print(f"\ncluster: {o['gms']} GMs ({leader} leads), {o['lcs']} LCs x {o['lc_cpus']} vcpus / {o['lc_memory_gib']} GiB "
          f"(libvirt test driver), heartbeat {o['heartbeat_interval']}s, monitoring {o['monitoring_interval']}s; "
          f"VMs {VM_VCPUS} vcpu / {VM_MEMORY_KIB // 1024} MiB, poll {POLL * 1000:.0f} ms; "
          f"machine: {results.get('cpus')} CPUs (1-min load average in the table: other work on the machine "
          f"slows every figure); formed in {results.get('formedSeconds', 0):.1f}s, "
          f"total run {results.get('totalSeconds', 0):.0f}s", file=out)


# -- main --------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--sizes", type=parse_sizes, default=[10, 100, 500], help="virtual cluster sizes (default 10,100,500)")
    add_output_options(ap)
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on one submission after this long (default 120 s)")
    args = ap.parse_args(argv)

    interruptible()

    state_dir = Path(tempfile.mkdtemp(prefix="snooze-bench-submit-"))
    opts = ClusterOptions(gms=GMS, lcs=LCS, lc_cpus=LC_CPUS, lc_memory_gib=LC_MEMORY_GIB,
                          base_port=port_range(1 + GMS + LCS, udp=True), extra={"groupmanager.virtual_machine_subnet": SUBNET},
                          **TIMING)
    cluster = LocalCluster(state_dir, opts)
    bs = Bootstrap(opts.base_port)
    run_tag = f"{int(time.time()) % 100000:05d}{random.randint(0, 99):02d}"
    results: dict[str, Any] = {
        "options": public_options(opts),
        "sizes": args.sizes, "runs": [], "cpus": os.cpu_count(),
        "target": {"vms": TARGET_VMS, "seconds": TARGET_SECONDS},
        "reference": {"name": "OpenStack Nova scheduler 2012", "vms": NOVA_2012[0], "seconds": NOVA_2012[1]},
    }
    status = 0
    started = time.monotonic()
    print(f"submission benchmark: sizes {','.join(map(str, args.sizes))}; cluster in {state_dir} on "
          f"127.0.0.1:{opts.base_port}-{opts.base_port + GMS + LCS}", flush=True)
    try:
        t = time.monotonic()
        cluster.up(wait=True, timeout=90)
        gl, _, _ = wait_ready(cluster, bs)
        results["formedSeconds"] = time.monotonic() - t
        results["leader"] = gl["id"]
        print(f"hierarchy formed in {results['formedSeconds']:.1f}s; leader {gl['id']} epoch {gl['epoch']}", flush=True)
        # Warm-up: one VM, retried until it runs (the leader needs a first summary from its GM).
        attempts, r = warm_up(bs, lambda attempt: template(f"warm-{run_tag}-{attempt}"), within=30, pause=1.0)
        print(f"warm-up VM RUNNING after {attempts} attempt(s) ({r['responseSeconds']:.2f}s for the last)", flush=True)
        time.sleep(2.0)  # let monitoring settle before the first measurement

        for size in args.sizes:
            gl_now = bs.get_json("getGroupLeaderDescription") or {}
            if gl_now.get("id") and gl_now["id"] != results["leader"]:
                print(f"  note: the group leader changed: {results['leader']} -> {gl_now['id']}", flush=True)
                results["leader"] = gl_now["id"]
            names = [f"b{run_tag}-{size}-{i}" for i in range(size)]
            load_before = os.getloadavg()[0]
            before = sample(cluster)
            r = submit_and_wait(bs, names, args.timeout)
            after = sample(cluster)
            s = summarize(size, r)
            s.update(before=before, after=after, leader=results["leader"])
            s.update(leader_phases(cluster, results["leader"], r["task"], r["startedAt"]))
            s["listedInHierarchy"] = domains_listed(bs, names)
            s["loadAverage"] = [load_before, os.getloadavg()[0]]
            results["runs"].append(s)
            print(f"  {size:>4} VMs: task id {fmt_s(s['taskSeconds'])}, answered {fmt_s(s['responseSeconds'])}, "
                  f"{s['running']} RUNNING, {s['notRunning']} not", flush=True)
            time.sleep(2.0)  # let the next monitoring round pass
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the cluster", file=sys.stderr, flush=True)
        status = 130
    except (BenchError, ClusterError) as exc:
        print(f"\nthe cluster failed to run: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        bs.close()
        stop_cluster(cluster)
        results["totalSeconds"] = time.monotonic() - started
        remove_state_dir(state_dir, status == 0 and not args.keep)

    if status:
        print("\npartial figures:")
    report(results)
    results["status"] = {0: "ok", 130: "interrupted"}.get(status, "cluster-failed")
    write_json(results, args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
