#!/usr/bin/env python3
"""Scale benchmark (issue 16): a local cluster of 1,000 and 2,000 local controllers, 40 group
managers and a 3-server ZooKeeper ensemble, measured as it forms, idles, takes a big
submission and loses its group leader and a group manager. It PRINTS figures; not a test.

    .venv/bin/python bench/scale.py                          # 1,000 then 2,000 LCs (heavy: ~10 min)
    .venv/bin/python bench/scale.py --lcs 200 --gms 5 --steady 10 --vms 100   # a quick look
    .venv/bin/python bench/scale.py --steady 300             # the issue's 5-minute steady state
    .venv/bin/python bench/scale.py --json out.json --keep   # results as JSON; keep state and logs

Per size, on 127.0.0.1 with the deployment's default timings (heartbeat 3 s, timeout 10 s,
ZooKeeper session 10 s; the local controllers ``--lcs-per-process`` to a process,
``localcontroller.many``), and ``groupmanager.virtual_machine_subnet`` 10.64.0.0/16:

1. formation: seconds from the first role's start (ZooKeeper ready) until every local
   controller is assigned (``getCompleteHierarchy``), polled every second;
2. memory: RSS of each LC process divided by its LCs, of each group manager and of the
   leader; ZooKeeper's znode count (``mntr`` on the ensemble's leader);
3. steady state: CPU (% of one core) of the group leader, the group managers (median, max),
   the ZooKeeper servers and the LC processes over ``--steady`` seconds; the time one
   ``getCompleteHierarchy`` answer takes;
4. a submission of ``--vms`` VMs (1 vcpu, 256 MiB) as one virtual cluster (above 5,000, the
   API's limit per virtual cluster, as several at once): seconds until the
   response, VMs RUNNING;
5. kill -9 of the group leader: seconds until another one answers, and until every LC is
   assigned again (none under the dead one);
6. kill -9 of a group manager with LCs: seconds until all its LCs are assigned elsewhere.

The exit status is 0 whatever the figures are; 1 if a cluster could not be started or driven
(the figures so far are printed), 130 if interrupted.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    logger,
    poll,
    port_range,
    public_options,
    remove_state_dir,
    role_ids,
    start_virtual_cluster,
    stop_cluster,
    table,
    usage,
    vm_metadata,
    wait_until,
    write_json,
)

from snooze.dev.localcluster import ClusterOptions, LocalCluster  # noqa: E402
from snooze.virtualcluster import MAX_TEMPLATES  # noqa: E402

#: Issue 16's targets.
TARGET_FORMED = 60.0  # s, 2,000 LCs assigned
TARGET_LC_RSS = 2.0  # MiB per local controller (many to a process)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user+system) of ``pids`` together; a gone process counts 0."""
    return sum((usage(p, children=False) or (0.0, 0.0))[0] for p in pids)


def rss_of(pid: int) -> float:
    return (usage(pid, children=False) or (0.0, 0.0))[1]


def assignment(bs: Bootstrap) -> tuple[Counter[str], dict[str, str]] | None:
    """How often each LC appears in the hierarchy, and the group manager of each; None if no answer."""
    h = bs.hierarchy()
    if not h:
        return None
    counts: Counter[str] = Counter()
    where: dict[str, str] = {}
    for gm, lc in hierarchy_lcs(h):
        counts[lc["id"]] += 1
        where[lc["id"]] = gm["id"]
    return counts, where


def all_assigned(bs: Bootstrap, want: set[str], dead: str | None = None) -> dict[str, str] | None:
    """LC id -> its GM once every LC of ``want`` is assigned exactly once, none under ``dead``."""
    got = assignment(bs)
    if got is None:
        return None
    counts, where = got
    if set(counts) >= want and max(counts.values(), default=0) == 1 and dead not in where.values():
        return where
    return None


def zk_servers(c: LocalCluster) -> list[Any]:
    """The cluster's ZooKeeper servers: the ensemble's, or the one server."""
    return list(c.ensemble.servers) if c.ensemble is not None else [c.zk] if c.zk is not None else []


def zk_stat(c: LocalCluster, word: str, prefix: str, *, leader_only: bool = False) -> str | None:
    """The value of the first line starting with ``prefix`` in the answer of the four-letter
    ``word`` of the first server that answers (``leader_only``: of the ensemble's leader)."""
    for server in zk_servers(c):
        try:
            text = server.four_letter(word)
        except OSError:
            continue
        if leader_only and "Mode: leader" not in text and "Mode: standalone" not in text:
            continue
        for line in text.splitlines():
            if line.startswith(prefix):
                return str(line.split()[-1])
    return None


def zk_znodes(c: LocalCluster) -> int | None:
    value = zk_stat(c, "mntr", "zk_znode_count")
    return int(value) if value is not None else None


def zk_pids(c: LocalCluster) -> list[int]:
    return [s.pid for s in zk_servers(c) if s.pid is not None]


def zk_zxid(c: LocalCluster) -> int | None:
    """The ensemble's last transaction counter (the low 32 bits of the leader's zxid): each write,
    session open and close is one, so a difference is the writes in between (within one epoch)."""
    value = zk_stat(c, "srvr", "Zxid:", leader_only=True)
    return int(value, 16) & 0xFFFFFFFF if value is not None else None


def vm_records(bs: Bootstrap) -> list[dict[str, Any]]:
    """Every VM record, by pages of 1,000 (``getVirtualMachineDescriptions``, v=2)."""
    out: list[dict[str, Any]] = []
    while True:
        page = bs.get_json(f"getVirtualMachineDescriptions&v=2&limit=1000&start={len(out)}")
        if not isinstance(page, dict):
            raise BenchError("getVirtualMachineDescriptions did not answer")
        got = page.get("virtualMachines") or []
        out += got
        if len(got) < 1000:
            return out


def invariants(bs: Bootstrap, names: list[str]) -> dict[str, Any]:
    """Issue 16's: VMs lost (no record, or not RUNNING), on more than one LC, addresses twice."""
    h = bs.hierarchy() or {}
    seen: Counter[str] = Counter(vm for _gm, lc in hierarchy_lcs(h) for vm in lc.get("assignedVirtualMachines") or [])
    records = {v.get("virtualMachineId"): v for v in vm_records(bs)}
    addresses = Counter(v.get("ipAddress") for v in records.values() if v.get("ipAddress"))
    return {"vms": len(names), "notRunning": sum(1 for n in names if (records.get(n) or {}).get("status") != "RUNNING"),
            "onNoLc": sum(1 for n in names if seen[n] == 0), "onTwoLcs": sum(1 for n in names if seen[n] > 1),
            "addressesTwice": sum(1 for k in addresses.values() if k > 1)}


def submit(bs: Bootstrap, prefix: str, count: int, timeout: float) -> dict[str, Any]:
    """``count`` VMs as one virtual cluster, or, above the API's MAX_TEMPLATES per virtual
    cluster, as several submitted at the same time: seconds until the last one answered."""
    templates = [{"name": f"{prefix}-{i}", "vcpus": 1, "memory": 262144} for i in range(count)]
    parts = [templates[i:i + MAX_TEMPLATES] for i in range(0, count, MAX_TEMPLATES)]
    if len(parts) == 1:
        results = [start_virtual_cluster(bs, templates, timeout, interval=0.5, start_timeout=120.0, strict=False)]
    else:
        def one(part: list[dict[str, Any]]) -> dict[str, Any]:
            own = Bootstrap(bs.port, timeout=bs.timeout)
            try:
                return start_virtual_cluster(own, part, timeout, interval=0.5, start_timeout=120.0, strict=False)
            finally:
                own.close()

        with ThreadPoolExecutor(len(parts)) as pool:
            results = list(pool.map(one, parts))
        first = min(r["startedAt"] for r in results)
        for r in results:  # seconds from the first submission, not from each part's own
            if r["responseSeconds"] is not None:
                r["responseSeconds"] = r["startedAt"] - first + r["responseSeconds"]
    meta = [m for r in results for m in vm_metadata(r)]
    seconds = [r["responseSeconds"] for r in results]
    return {"vms": count, "virtualClusters": len(parts),
            "seconds": None if None in seconds else max(s for s in seconds if s is not None),
            "task": ",".join(str(r["task"]) for r in results),
            "running": sum(1 for m in meta if m.get("status") == "RUNNING"),
            "errors": dict(Counter(m.get("errorCode") for m in meta if m.get("status") != "RUNNING"))}


def run_size(lcs: int, args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    gms = args.gms
    opts = ClusterOptions(gms=gms, lcs=lcs, lcs_per_process=args.lcs_per_process, zookeeper_ensemble=args.zookeeper_ensemble,
                          base_port=port_range(2 + gms + lcs), ec2=False,
                          extra={"groupmanager.virtual_machine_subnet": "10.64.0.0/16"})
    state = Path(tempfile.mkdtemp(prefix=f"snooze-scale-{lcs}-"))
    c = LocalCluster(state, opts)
    out: dict[str, Any] = {"lcs": lcs, "gms": gms, "options": public_options(opts), "stateDir": str(state)}
    try:
        log(f"[{lcs}] starting (state dir {state})")
        c.up(wait=False)
        t0 = time.monotonic()  # every process spawned (ZooKeeper was ready before the first)
        bs = Bootstrap(opts.base_port, timeout=30.0)  # the bootstrap listens on the first port
        want = set(role_ids(c, "localcontroller"))
        wait_until(f"all {lcs} LCs assigned", args.form_timeout, lambda: all_assigned(bs, want), interval=1.0)
        out["formedSeconds"] = time.monotonic() - t0
        log(f"[{lcs}] formed in {out['formedSeconds']:.1f}s")

        gm_pids = {p["id"]: p["pid"] for p in c.processes if p["role"] == "groupmanager"}
        lc_pids = sorted({p["pid"] for p in c.processes if p["role"] == "localcontroller"})
        leader = wait_until("a group leader", 30, bs.leader)
        lead = leader["id"]
        out["leader"] = lead
        time.sleep(args.settle)  # the join storm's last answers, monitoring's first rounds
        per_lc = [rss_of(pid) / len(members) for pid, members in
                  ((m[0]["pid"], m) for m in c.groups().values())] if c.groups() else [rss_of(p) for p in lc_pids]
        gm_rss = [rss_of(pid) for gid, pid in gm_pids.items() if gid != lead]
        out["rss"] = {"perLcMiB": statistics.median(per_lc), "gmMiBMedian": statistics.median(gm_rss),
                      "gmMiBMax": max(gm_rss), "leaderMiB": rss_of(gm_pids[lead]),
                      "zookeeperMiB": [rss_of(p) for p in zk_pids(c)]}
        out["znodes"] = zk_znodes(c)

        # Steady state: CPU over --steady seconds.
        before = {"leader": cpu_of([gm_pids[lead]]), "lcs": cpu_of(lc_pids),
                  **{f"zk-{i}": cpu_of([p]) for i, p in enumerate(zk_pids(c))},
                  **{g: cpu_of([p]) for g, p in gm_pids.items() if g != lead}}
        z_s = zk_zxid(c)
        t_s = time.monotonic()
        time.sleep(args.steady)
        span = time.monotonic() - t_s
        after = {"leader": cpu_of([gm_pids[lead]]), "lcs": cpu_of(lc_pids),
                 **{f"zk-{i}": cpu_of([p]) for i, p in enumerate(zk_pids(c))},
                 **{g: cpu_of([p]) for g, p in gm_pids.items() if g != lead}}
        z_e = zk_zxid(c)
        pct = {k: 100.0 * (after[k] - before[k]) / span for k in before}
        gm_pct = [v for k, v in pct.items() if k.startswith("gm-")]
        out["steady"] = {"seconds": span, "leaderPct": pct["leader"], "gmPctMedian": statistics.median(gm_pct),
                         "gmPctMax": max(gm_pct), "zookeeperPct": [v for k, v in pct.items() if k.startswith("zk-")],
                         "lcProcessesPct": pct["lcs"],
                         "zkWritesPerSecond": (z_e - z_s) / span if z_s is not None and z_e is not None and z_e >= z_s else None}
        t_h = time.monotonic()
        bs.hierarchy()
        out["hierarchySeconds"] = time.monotonic() - t_h
        log(f"[{lcs}] steady state measured")

        # Submissions: --vms each, as one virtual cluster (those that do not fit are skipped).
        names: list[str] = []
        out["submissions"] = []
        for k, count in enumerate(args.vms):
            if count > lcs * opts.lc_cpus - len(names):
                out["submissions"].append({"vms": count, "skipped": f"more vcpus than {lcs} hosts have left"})
                continue
            z0 = zk_zxid(c)
            try:
                sub = submit(bs, f"v{k}", count, args.submit_timeout)
            except BenchError as exc:  # recorded; the failovers below are still measured
                out["submissions"].append({"vms": count, "error": str(exc)})
                log(f"[{lcs}] submission of {count} VMs failed: {exc}")
                continue
            z1 = zk_zxid(c)
            sub["zkWritesPerVm"] = (z1 - z0) / count if z0 is not None and z1 is not None and z1 >= z0 else None
            out["submissions"].append(sub)
            names += [f"v{k}-{i}" for i in range(count)]
            log(f"[{lcs}] submission: {sub}")

        # The ensemble's leader, kill -9, during a submission: the pause, then nothing lost or twice.
        ensemble = c.ensemble
        if args.zk_kill_vms and ensemble is not None:
            try:
                count = args.zk_kill_vms
                templates = json.dumps({"virtualMachineTemplates": [{"name": f"zk-{i}", "vcpus": 1, "memory": 262144}
                                                                    for i in range(count)]})
                t_z = time.monotonic()
                status, raw = bs.call("POST", "startVirtualCluster", templates, timeout=120.0)
                if status != 200:
                    raise BenchError(f"startVirtualCluster answered {status}: {raw[:300]!r}")
                task = raw.decode().strip().strip('"')
                victim_zk = ensemble.leader()
                t_kill = time.monotonic()
                if victim_zk is not None:
                    ensemble.kill(victim_zk)
                wait_until("a new ZooKeeper leader", 60, lambda: (lambda i: i is not None and i != victim_zk)(ensemble.leader()))
                wait_until("the group leader answering", 60, bs.leader, interval=0.2)
                pause = time.monotonic() - t_kill
                retried = False

                def response_of() -> dict[str, Any] | None:
                    try:
                        status, raw = bs.call("POST", "getVirtualClusterResponse", task)
                        return json.loads(raw) if status == 200 and raw.strip() else None
                    except (BenchError, ValueError):
                        return None

                resp = poll(response_of, args.zk_retry_after, interval=0.5)
                if resp is None:
                    # A client's retry of the same submission (the same task, nothing twice): a
                    # leader whose session lived on leaves an interrupted dispatch PENDING until then.
                    retried = True
                    bs.call("POST", "startVirtualCluster", templates, timeout=120.0)
                    resp = wait_until(f"the response of {task}", args.submit_timeout, response_of, interval=0.5)
                meta = resp.get("virtualMachineMetaData") or []
                names += [f"zk-{i}" for i in range(count)]
                out["zkKill"] = {"vms": count, "pauseSeconds": pause, "retried": retried,
                                 "seconds": time.monotonic() - t_z,
                                 "running": sum(1 for m in meta if m.get("status") == "RUNNING")}
                log(f"[{lcs}] ZooKeeper leader kill: {out['zkKill']}")
            except BenchError as exc:  # recorded; the group leader and GM kills are still measured
                out["zkKill"] = {"vms": args.zk_kill_vms, "error": str(exc)}
                log(f"[{lcs}] ZooKeeper leader kill failed: {exc}")
        if names:
            # The hierarchy shows a VM once its LC's next summary has it: give them a while.
            out["invariants"] = (poll(lambda: (lambda v: v if v["onNoLc"] == 0 else None)(invariants(bs, names)), 120, 2.0)
                                 or invariants(bs, names))
            log(f"[{lcs}] invariants: {out['invariants']}")

        # The group leader, kill -9: the one leading now (a ZooKeeper failover above may have
        # moved the leadership since formation), once every LC is assigned.
        wait_until("every LC assigned before the leader's kill", args.form_timeout, lambda: all_assigned(bs, want),
                   interval=1.0)
        lead = wait_until("the group leader", 30, bs.leader)["id"]
        t_k = time.monotonic()
        c.kill(lead)
        new = wait_until("a new group leader", 120,
                         lambda: (lambda d: d if d and d.get("id") != lead else None)(bs.leader()), interval=0.2)
        answered = time.monotonic() - t_k
        wait_until("every LC re-homed after the leader's loss", args.form_timeout, lambda: all_assigned(bs, want, lead), interval=1.0)
        out["leaderKill"] = {"killed": lead, "newLeader": new["id"], "answeredSeconds": answered,
                             "rehomedSeconds": time.monotonic() - t_k}
        log(f"[{lcs}] leader kill: {out['leaderKill']}")

        # A group manager with local controllers, kill -9.
        # The answer that showed every LC re-homed may be followed by one that did not answer
        # (a group manager busy): wait for one that does, not an empty map.
        where = wait_until("the hierarchy after re-homing", 60, lambda: all_assigned(bs, want, lead), interval=1.0)
        mine = Counter(where.values())
        victim = max((g for g in mine if g != new["id"]), key=lambda g: mine[g])
        t_g = time.monotonic()
        c.kill(victim)
        wait_until(f"the LCs of {victim} re-homed", args.form_timeout, lambda: all_assigned(bs, want, victim), interval=1.0)
        out["gmKill"] = {"killed": victim, "lcs": mine[victim], "rehomedSeconds": time.monotonic() - t_g}
        log(f"[{lcs}] GM kill: {out['gmKill']}")
    except BenchError as exc:
        out["error"] = str(exc)
    finally:
        stop_cluster(c)
        remove_state_dir(state, not args.keep)
    return out


def failures(r: dict[str, Any]) -> list[str]:
    """What failed in one size's run: its submissions, its ZooKeeper leader kill, the run itself."""
    out = [f"submission {i + 1} ({one['vms']} VMs): {one['error']}"
           for i, one in enumerate(r.get("submissions") or []) if one.get("error")]
    if (r.get("zkKill") or {}).get("error"):
        out.append(f"ZooKeeper leader kill: {r['zkKill']['error']}")
    if r.get("error"):
        out.append(f"stopped early: {r['error']}")
    return out


def report(results: list[dict[str, Any]]) -> None:
    def g(r: dict[str, Any], *path: str) -> Any:
        v: Any = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    def pct(v: Any) -> str:
        return "-" if v is None else (" / ".join(f"{x:.1f}" for x in v) if isinstance(v, list) else f"{v:.1f}") + " %"

    def mib(v: Any) -> str:
        return "-" if v is None else (" / ".join(f"{x:.0f}" for x in v) if isinstance(v, list) else f"{v:.1f}") + " MiB"

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    def sub(r: dict[str, Any], i: int, key: str) -> str:
        subs = r.get("submissions") or []
        if i >= len(subs):
            return "-"
        one = subs[i]
        if one.get("skipped"):
            return f"skipped ({one['vms']} VMs)"
        if one.get("error"):
            return f"failed ({one['vms']} VMs; below)" if key == "running" else "-"
        if key == "running":
            return f"{one['running']} / {one['vms']}" + (f" {one['errors']}" if one.get("errors") else "")
        if key == "seconds":
            return fmt_s(one.get("seconds"), 1)
        if key == "rate":
            return num(one["vms"] / one["seconds"]) if one.get("seconds") else "-"
        return num(one.get(key))

    nsubs = max((len(r.get("submissions") or []) for r in results), default=0)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("all LCs assigned (target 60 s)", lambda r: fmt_s(g(r, "formedSeconds"), 1)),
        ("RSS per LC (target < 2 MiB)", lambda r: mib(g(r, "rss", "perLcMiB"))),
        ("RSS per GM (median / max)", lambda r: f"{mib(g(r, 'rss', 'gmMiBMedian'))} / {mib(g(r, 'rss', 'gmMiBMax'))}"),
        ("RSS of the leader", lambda r: mib(g(r, "rss", "leaderMiB"))),
        ("RSS of each ZooKeeper", lambda r: mib(g(r, "rss", "zookeeperMiB"))),
        ("ZooKeeper znodes", lambda r: str(g(r, "znodes"))),
        ("steady state: seconds measured", lambda r: fmt_s(g(r, "steady", "seconds"), 0)),
        ("steady CPU, leader", lambda r: pct(g(r, "steady", "leaderPct"))),
        ("steady CPU, GM (median / max)", lambda r: f"{pct(g(r, 'steady', 'gmPctMedian'))} / {pct(g(r, 'steady', 'gmPctMax'))}"),
        ("steady CPU, each ZooKeeper", lambda r: pct(g(r, "steady", "zookeeperPct"))),
        ("steady CPU, all LC processes", lambda r: pct(g(r, "steady", "lcProcessesPct"))),
        ("getCompleteHierarchy answer", lambda r: fmt_s(g(r, "hierarchySeconds"))),
        ("ZooKeeper writes/s at steady state", lambda r: num(g(r, "steady", "zkWritesPerSecond"))),
        *((f"submission {i + 1}: RUNNING / asked", lambda r, i=i: sub(r, i, "running")) for i in range(nsubs)),
        *((f"submission {i + 1}: until the response", lambda r, i=i: sub(r, i, "seconds")) for i in range(nsubs)),
        *((f"submission {i + 1}: VMs per second", lambda r, i=i: sub(r, i, "rate")) for i in range(nsubs)),
        *((f"submission {i + 1}: ZooKeeper writes per VM", lambda r, i=i: sub(r, i, "zkWritesPerVm")) for i in range(nsubs)),
        ("ZK leader kill -9 in a submission: pause", lambda r: fmt_s(g(r, "zkKill", "pauseSeconds"), 1)),
        ("  that submission: RUNNING / asked", lambda r: f"{g(r, 'zkKill', 'running')} / {g(r, 'zkKill', 'vms')}"),
        ("  that submission: answered after", lambda r: fmt_s(g(r, "zkKill", "seconds"), 1)
         + (" (client retried)" if g(r, "zkKill", "retried") else "")),
        ("VMs not RUNNING / on no LC / on 2 LCs", lambda r: f"{g(r, 'invariants', 'notRunning')} / {g(r, 'invariants', 'onNoLc')}"
         f" / {g(r, 'invariants', 'onTwoLcs')}"),
        ("addresses given twice", lambda r: str(g(r, "invariants", "addressesTwice"))),
        ("leader kill -9: new leader answers", lambda r: fmt_s(g(r, "leaderKill", "answeredSeconds"), 1)),
        ("leader kill -9: all LCs re-homed", lambda r: fmt_s(g(r, "leaderKill", "rehomedSeconds"), 1)),
        ("GM kill -9: its LCs re-homed", lambda r: f"{fmt_s(g(r, 'gmKill', 'rehomedSeconds'), 1)} ({g(r, 'gmKill', 'lcs')} LCs)"),
    ]
    table(["measurement", *(f"{r['lcs']} LCs, {r['gms']} GMs" for r in results)],
          [(name, *(f(r) for r in results)) for name, f in rows])
    for r in results:
        for failure in failures(r):
            print(f"\n{r['lcs']} LCs, {failure}")


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--lcs", default="1000,2000", help="cluster sizes, local controllers (default 1000,2000)")
    ap.add_argument("--gms", type=int, default=40, help="group managers, one of them the group leader (40)")
    ap.add_argument("--lcs-per-process", type=int, default=250, metavar="N", help="local controllers per process (250)")
    ap.add_argument("--zookeeper-ensemble", type=int, default=3, metavar="N", help="ZooKeeper servers (3)")
    ap.add_argument("--steady", type=float, default=60.0, metavar="S",
                    help="seconds of steady state for the CPU figures (the issue asks 300; default 60)")
    ap.add_argument("--settle", type=float, default=10.0, metavar="S", help="seconds after formation before measuring")
    ap.add_argument("--vms", default="1000", help="VMs of each submission, in order (1000; e.g. 1000,10000); 0: none")
    ap.add_argument("--zk-kill-vms", type=int, default=1000, metavar="N",
                    help="VMs of the submission during which the ZooKeeper leader is killed (1000; 0: not done)")
    ap.add_argument("--zk-retry-after", type=float, default=30.0, metavar="S",
                    help="resend that submission (a client's retry) if it has no answer S seconds after the pause")
    ap.add_argument("--form-timeout", type=float, default=300.0, metavar="S", help="give up on forming/re-homing after S")
    ap.add_argument("--submit-timeout", type=float, default=300.0, metavar="S")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    add_output_options(ap, "each size's state dir")
    args = ap.parse_args()
    args.vms = [int(x) for x in args.vms.split(",") if x.strip() and int(x) > 0]
    interruptible()
    log = logger(args.verbose)
    results: list[dict[str, Any]] = []
    try:
        for lcs in (int(x) for x in args.lcs.split(",") if x.strip()):
            results.append(run_size(lcs, args, log))
    except KeyboardInterrupt:
        report(results)
        return 130
    print(f"scale: {args.gms} GMs, {args.lcs_per_process} LCs per process, {args.zookeeper_ensemble} ZooKeeper "
          f"servers, steady state {args.steady:.0f}s")
    report(results)
    write_json({"results": results}, args.json)
    return 1 if any(failures(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
