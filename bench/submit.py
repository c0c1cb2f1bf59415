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
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snooze.localcluster import ClusterError, ClusterOptions, LocalCluster, _alive  # noqa: E402

HOST = "127.0.0.1"
POLL = 0.05  # seconds between getVirtualClusterResponse polls
GMS, LCS = 2, 8
LC_CPUS, LC_MEMORY_GIB = 128, 256
VM_VCPUS, VM_MEMORY_KIB = 1, 256 * 1024
SUBNET = "10.64.0.0/16"
TARGET_VMS, TARGET_SECONDS = 500, 10.0
NOVA_2012 = (100, 26.0)  # (VMs, seconds) -- the Nova scheduler of 2012
TIMING: dict[str, Any] = {"heartbeat_interval": 1.0, "monitoring_interval": 1.0}
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """The cluster could not be driven (not a missed target)."""


# -- HTTP to the bootstrap (keep-alive) --------------------------------------------------------
class Bootstrap:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, verb: str, body: str | None = None, timeout: float | None = None) -> tuple[int, bytes]:
        """(status, raw body) of ``METHOD /bootstrap?verb``; retried once on a broken connection."""
        last: Exception | None = None
        for _attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout or self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, f"/bootstrap?{verb}", body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                self.close()
        raise BenchError(f"{method} ?{verb} failed: {last!r}")

    def get_json(self, verb: str) -> Any | None:
        try:
            status, raw = self.call("GET", verb)
        except BenchError:
            return None
        if status != 200:
            return None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


# -- helpers -----------------------------------------------------------------------------------
def port_range(count: int) -> int:
    """A base port with ``count`` consecutive free ports (TCP and UDP) on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 40000)
        ok = True
        for p in range(base, base + count):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind((HOST, p))
                    except OSError:
                        ok = False
            if not ok:
                break
        if ok:
            return base
    raise BenchError("no free port range on 127.0.0.1")


def template(name: str) -> dict[str, Any]:
    return {"vcpus": VM_VCPUS, "memory": VM_MEMORY_KIB, "name": name, "imageId": "debian.qcow2"}


def wait_ready(c: LocalCluster, bs: Bootstrap, timeout: float = 60.0) -> tuple[dict[str, Any], float]:
    """Until a leader is known and every LC is assigned to the other group manager."""
    t0 = time.monotonic()
    want = {p["id"] for p in c.processes if p["role"] == "localcontroller"}
    why = "no answer"
    while time.monotonic() - t0 < timeout:
        for spec in c.processes:
            if not _alive(spec.get("pid")):
                raise BenchError(f"{spec['id']} is not running; see {spec['log']}")
        gl = bs.get_json("getGroupLeaderDescription")
        h = bs.get_json("getCompleteHierarchy") if gl else None
        if gl and h:
            assigned = {lc["id"] for gm in h.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", []) or []}
            if assigned >= want:
                return gl, time.monotonic() - t0
            why = f"LCs assigned: {sorted(assigned)}"
        time.sleep(0.1)
    raise BenchError(f"the hierarchy did not form within {timeout:.0f}s ({why}); logs in {c.state_dir / 'logs'}")


def sample(c: LocalCluster) -> dict[str, dict[str, float]]:
    """id -> {cpu: user+system seconds (with children), rss: MiB} for every group manager,
    the sums over the local controllers, the bootstrap and ZooKeeper."""
    import psutil

    out: dict[str, dict[str, float]] = {}
    for spec in c.processes:
        if spec["role"] == "zookeeper" or not _alive(spec.get("pid")):
            continue
        try:
            proc = psutil.Process(spec["pid"])
            procs = [proc, *proc.children(recursive=True)]
            cpu = rss = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss
        except psutil.Error:
            continue
        key = spec["id"] if spec["role"] == "groupmanager" else {"localcontroller": "all LCs", "bootstrap": "bootstrap"}[spec["role"]]
        slot = out.setdefault(key, {"cpu": 0.0, "rss": 0.0})
        slot["cpu"] += cpu
        slot["rss"] += rss / MIB
    if c.zk is not None and c.zk.pid and _alive(c.zk.pid):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(c.zk.pid)
            t = proc.cpu_times()
            out["zookeeper"] = {"cpu": t.user + t.system, "rss": proc.memory_info().rss / MIB}
    return out


def submit_and_wait(bs: Bootstrap, names: list[str], timeout: float) -> dict[str, Any]:
    """Submit one virtual cluster and poll its response; returns timings and the response."""
    body = json.dumps({"virtualMachineTemplates": [template(n) for n in names]})
    started_at = time.time()
    t0 = time.monotonic()
    status, raw = bs.call("POST", "startVirtualCluster", body, timeout=max(30.0, timeout))
    t_task = time.monotonic() - t0
    if status != 200:
        raise BenchError(f"startVirtualCluster answered {status}: {raw[:300]!r}")
    # The original answers the bare task id (text); accept a JSON string as well.
    text = raw.decode("utf-8", "replace").strip()
    try:
        task = json.loads(text)
    except ValueError:
        task = text
    if not isinstance(task, str) or not task:
        raise BenchError(f"startVirtualCluster answered no task id: {raw[:300]!r}")
    polls = 0
    resp: dict[str, Any] | None = None
    t_done: float | None = None
    while time.monotonic() - t0 < timeout:
        time.sleep(POLL)
        polls += 1
        try:
            status, raw = bs.call("POST", "getVirtualClusterResponse", task)
        except BenchError:
            continue  # e.g. the bootstrap was busy; try again
        if status == 200 and raw.strip():
            try:
                resp = json.loads(raw)
            except ValueError as exc:
                raise BenchError(f"getVirtualClusterResponse answered no JSON: {raw[:300]!r}") from exc
            if resp:
                t_done = time.monotonic() - t0
                break
        elif status != 200:
            raise BenchError(f"getVirtualClusterResponse answered {status}: {raw[:300]!r}")
    return {"task": task, "startedAt": started_at, "taskSeconds": t_task, "responseSeconds": t_done,
            "polls": polls, "response": resp}


def leader_phases(c: LocalCluster, leader_id: str, task: str, started_at: float) -> dict[str, float | None]:
    """Seconds from the POST until the leader logged 'accepted' and 'done' for ``task`` (its log
    lines carry wall-clock milliseconds)."""
    from datetime import datetime

    out: dict[str, float | None] = {"acceptedSeconds": None, "dispatchedSeconds": None}
    try:
        lines = Path(c.process(leader_id)["log"]).read_text(errors="replace").splitlines()
    except (OSError, ClusterError):
        return out
    for line in lines:
        if task not in line:
            continue
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
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
        listed = {vm for gm in h.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", []) or []
                  for vm in lc.get("assignedVirtualMachines") or []}
        seen = len(want & listed)
        if seen == len(want) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def summarize(vms: int, r: dict[str, Any]) -> dict[str, Any]:
    meta = (r.get("response") or {}).get("virtualMachineMetaData") or []
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
def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def table(heads: Sequence[str], rows: Sequence[Sequence[str]], out: Any) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
    line = "  ".join(f"{{:>{w}}}" if i else f"{{:<{w}}}" for i, w in enumerate(widths))
    print(line.format(*heads).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line.format(*r).rstrip(), file=out)


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default=[10, 100, 500], help="virtual cluster sizes (default 10,100,500)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also dump machine-readable results (to FILE, or to stdout after the table)")
    ap.add_argument("--keep", action="store_true", help="keep the state dir (configs, logs) afterwards")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on one submission after this long (default 120 s)")
    args = ap.parse_args(argv)

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

    state_dir = Path(tempfile.mkdtemp(prefix="snooze-bench-submit-"))
    opts = ClusterOptions(gms=GMS, lcs=LCS, lc_cpus=LC_CPUS, lc_memory_gib=LC_MEMORY_GIB,
                          base_port=port_range(1 + GMS + LCS), extra={"groupmanager.virtual_machine_subnet": SUBNET},
                          **TIMING)
    cluster = LocalCluster(state_dir, opts)
    bs = Bootstrap(opts.base_port)
    run_tag = f"{int(time.time()) % 100000:05d}{random.randint(0, 99):02d}"
    results: dict[str, Any] = {
        "options": {k: v for k, v in opts.__dict__.items() if k != "key"},
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
        gl, _ = wait_ready(cluster, bs)
        results["formedSeconds"] = time.monotonic() - t
        results["leader"] = gl["id"]
        print(f"hierarchy formed in {results['formedSeconds']:.1f}s; leader {gl['id']} epoch {gl['epoch']}", flush=True)
        # Warm-up: one VM, retried until it runs (the leader needs a first summary from its GM).
        deadline = time.monotonic() + 30
        for attempt in range(1, 100):
            r = submit_and_wait(bs, [f"warm-{run_tag}-{attempt}"], 30)
            meta = (r.get("response") or {}).get("virtualMachineMetaData") or []
            if meta and meta[0].get("status") == "RUNNING":
                print(f"warm-up VM RUNNING after {attempt} attempt(s) ({r['responseSeconds']:.2f}s for the last)", flush=True)
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the warm-up VM never ran: {meta}")
            time.sleep(1.0)
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
        # Ctrl-C during the clean-up must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.down()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        results["totalSeconds"] = time.monotonic() - started
        if status == 0 and not args.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"state dir (configs, logs) kept in {state_dir}", file=sys.stderr)

    if status:
        print("\npartial figures:")
    report(results)
    results["status"] = {0: "ok", 130: "interrupted"}.get(status, "cluster-failed")
    if args.json == "-":
        print("\n" + json.dumps(results, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nJSON results written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
