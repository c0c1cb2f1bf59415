#!/usr/bin/env python3
"""Failover benchmark: how fast a local Snooze cluster heals after kill -9, and how much memory
each role uses. It PRINTS figures (with the targets next to them); it is not a pass/fail test.

    .venv/bin/python bench/failover.py            # 5 rounds of each scenario
    .venv/bin/python bench/failover.py --quick    # 2 rounds
    .venv/bin/python bench/failover.py --json     # also print machine-readable results
    .venv/bin/python bench/failover.py --json out.json

Scenarios, on a fast-timing cluster (3 group managers, 4 local controllers, one domain per
local controller, heartbeat 0.5 s / timeout 2 s, ZooKeeper session timeout 2 s), all on
127.0.0.1, polling the bootstrap every ~20 ms:

1. kill -9 the group leader: time until (a) a new leader (other id, higher epoch) answers at
   the bootstrap and (b) every local controller is assigned to a live group manager that is
   not the leader; then the killed one is restarted and the hierarchy made whole again.
2. kill -9 a non-leader group manager that manages local controllers: time until all of them
   are assigned again; then it is restarted.
3. kill -9 a local controller: time until its group manager drops it from the hierarchy; then
   it is restarted.

After every round each local controller must still list its domain (``lc-N-vm-1``); the count
of lost domains is printed. Resident memory (RSS) of every process is sampled after warm-up
and at the end.

The exit status is 0 whatever the figures are; it is 1 only if the cluster could not be
started or could not be made whole again between rounds (then the figures are partial).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
    check_running,
    fmt_s,
    hierarchy_lcs,
    interruptible,
    logger,
    poll,
    port_range,
    public_options,
    remove_state_dir,
    role_ids,
    stop_cluster,
    table,
    usage,
    write_json,
)

from snooze.dev.localcluster import ClusterError, ClusterOptions, LocalCluster, _alive  # noqa: E402

POLL = 0.02  # seconds between polls
ROUND_TIMEOUT = 20.0  # give up on one measurement after this long
WHOLE_TIMEOUT = 45.0  # the cluster must be whole again within this long between rounds

GMS, LCS = 3, 4


# -- helpers -----------------------------------------------------------------------------------
def lc_ids(c: LocalCluster) -> list[str]:
    return role_ids(c, "localcontroller")


def gm_ids(c: LocalCluster) -> list[str]:
    return role_ids(c, "groupmanager")


def alive(c: LocalCluster, node_id: str) -> bool:
    return _alive(c.process(node_id).get("pid"))


def placement(h: dict[str, Any]) -> dict[str, list[str]]:
    """LC id -> the group managers that list it (normally exactly one)."""
    out: dict[str, list[str]] = {}
    for gm, lc in hierarchy_lcs(h):
        out.setdefault(lc["id"], []).append(gm["id"])
    return out


def lc_domains(h: dict[str, Any]) -> dict[str, list[str]]:
    return {lc["id"]: list(lc.get("assignedVirtualMachines") or []) for _gm, lc in hierarchy_lcs(h)}


def all_rehomed(c: LocalCluster, h: dict[str, Any] | None, leader_id: str, lcs: list[str]) -> bool:
    """Every LC is under some group manager whose process is alive and which is not the leader."""
    if not h:
        return False
    if (h.get("groupLeaderDescription") or {}).get("id") != leader_id:
        return False
    where = placement(h)
    for lc in lcs:
        homes = [g for g in where.get(lc, []) if g != leader_id and g in gm_ids(c) and alive(c, g)]
        if not homes:
            return False
    return True


def lost_domains(c: LocalCluster, h: dict[str, Any]) -> list[str]:
    """Expected domains (``lc-N-vm-k``) that their local controller no longer lists."""
    doms = lc_domains(h)
    per_lc = c.options.domains_per_lc
    return [f"{lc}-vm-{k}" for lc in lc_ids(c) for k in range(1, per_lc + 1) if f"{lc}-vm-{k}" not in doms.get(lc, [])]


def wait_whole(c: LocalCluster, bs: Bootstrap, timeout: float = WHOLE_TIMEOUT) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Until: a leader is known; every other group manager is alive and in the hierarchy; every LC
    is assigned to one of them and lists its domains. Returns (leader, hierarchy, seconds)."""
    t0 = time.monotonic()
    why = "no answer"

    def whole() -> tuple[dict[str, Any], dict[str, Any]] | None:
        nonlocal why
        check_running(c)
        gl = bs.leader()
        h = bs.hierarchy() if gl else None
        if gl and h:
            managers = {g["id"] for g in h.get("groupManagerDescriptions", [])}
            want = set(gm_ids(c)) - {gl["id"]}
            if managers != want:
                why = f"group managers in hierarchy {sorted(managers)} != {sorted(want)}"
            elif not all_rehomed(c, h, gl["id"], lc_ids(c)):
                why = f"LCs placed {placement(h)}"
            elif lost_domains(c, h):
                why = f"domains not (yet) listed: {lost_domains(c, h)}"
            else:
                return gl, h
        return None

    found = poll(whole, timeout, 0.1, since=t0)
    if found is None:
        raise BenchError(f"the hierarchy was not whole again within {timeout:.0f}s ({why}); logs in {c.state_dir / 'logs'}")
    return found[0], found[1], time.monotonic() - t0


def rss_sample(c: LocalCluster, leader_id: str | None) -> dict[str, list[float]]:
    """RSS in MiB of each process (with its children), grouped by role."""
    out: dict[str, list[float]] = {}
    for spec in c.processes:
        used = usage(spec["pid"]) if _alive(spec.get("pid")) else None
        if used is None:
            continue
        role = spec["role"]
        if role == "groupmanager":
            role = "group leader" if spec["id"] == leader_id else "group manager"
        elif role == "localcontroller":
            role = "local controller"
        out.setdefault(role, []).append(used[1])
    return out


# -- the scenarios -----------------------------------------------------------------------------
def seconds_until(done: Callable[[], bool], t0: float) -> float | None:
    """Seconds from ``t0`` until ``done()`` (polled every POLL), None after ROUND_TIMEOUT."""
    return None if poll(done, ROUND_TIMEOUT, POLL, since=t0) is None else time.monotonic() - t0


def round_kill_leader(c: LocalCluster, bs: Bootstrap, log: Any) -> dict[str, Any]:
    old, h0, _ = wait_whole(c, bs)
    lcs = lc_ids(c)
    killed_at = time.time()  # wall clock, to line up with the processes' logs
    t0 = time.monotonic()
    c.kill(old["id"])
    t_kill_done = time.monotonic() - t0

    def promoted() -> dict[str, Any] | None:
        gl = bs.leader()
        return gl if gl and gl.get("id") != old["id"] and int(gl.get("epoch", 0)) > int(old["epoch"]) else None

    new = poll(promoted, ROUND_TIMEOUT, POLL, since=t0)
    t_leader = None if new is None else time.monotonic() - t0
    t_rehomed = None
    if new is not None:
        new_id = new["id"]
        t_rehomed = seconds_until(lambda: all_rehomed(c, bs.hierarchy(), new_id, lcs), t0)
    result: dict[str, Any] = {
        "killed": old["id"], "killedAt": killed_at, "oldEpoch": old["epoch"], "newLeader": new and new["id"],
        "newEpoch": new and new["epoch"], "killSeconds": t_kill_done,
        "newLeaderSeconds": t_leader, "rehomedSeconds": t_rehomed,
        "lcsOfPromoted": sum(1 for homes in placement(h0).values() if new and new["id"] in homes),
    }
    c.restart(old["id"])
    _, h, back = wait_whole(c, bs)
    result["lostDomains"] = lost_domains(c, h)
    result["wholeAgainAfterRestartSeconds"] = back
    log(f"  leader round: killed {old['id']} (epoch {old['epoch']}) -> {result['newLeader']} "
        f"(epoch {result['newEpoch']}): leader {fmt(t_leader)}, LCs re-homed {fmt(t_rehomed)} "
        f"[{result['lcsOfPromoted']} LCs were on the promoted GM]")
    return result


def round_kill_manager(c: LocalCluster, bs: Bootstrap, log: Any) -> dict[str, Any]:
    gl, h0, _ = wait_whole(c, bs)
    where = placement(h0)
    counts: dict[str, int] = {}
    for homes in where.values():
        for g in homes:
            counts[g] = counts.get(g, 0) + 1
    candidates = sorted((n, g) for g, n in counts.items() if g != gl["id"])
    if not candidates:
        raise BenchError(f"no non-leader group manager manages a local controller: {where}")
    orphans, victim = candidates[-1]
    lcs = lc_ids(c)
    killed_at = time.time()  # wall clock, to line up with the processes' logs
    t0 = time.monotonic()
    c.kill(victim)
    t_rehomed = seconds_until(lambda: all_rehomed(c, bs.hierarchy(), gl["id"], lcs), t0)
    result: dict[str, Any] = {"killed": victim, "killedAt": killed_at, "orphans": orphans, "rehomedSeconds": t_rehomed}
    c.restart(victim)
    _, h, back = wait_whole(c, bs)
    result["lostDomains"] = lost_domains(c, h)
    result["wholeAgainAfterRestartSeconds"] = back
    log(f"  manager round: killed {victim} ({orphans} LCs): re-homed {fmt(t_rehomed)}")
    return result


def round_kill_lc(c: LocalCluster, bs: Bootstrap, victim: str, log: Any) -> dict[str, Any]:
    gl, h0, _ = wait_whole(c, bs)
    home = (placement(h0).get(victim) or ["?"])[0]
    killed_at = time.time()  # wall clock, to line up with the processes' logs
    t0 = time.monotonic()
    c.kill(victim)

    def dropped() -> bool:
        h = bs.hierarchy()
        return h is not None and victim not in placement(h)

    t_dropped = seconds_until(dropped, t0)
    result: dict[str, Any] = {"killed": victim, "killedAt": killed_at, "groupManager": home, "droppedSeconds": t_dropped}
    t1 = time.monotonic()
    c.restart(victim)
    _, h, back = wait_whole(c, bs)
    result["rejoinedSeconds"] = time.monotonic() - t1
    result["lostDomains"] = lost_domains(c, h)
    log(f"  LC round: killed {victim} (on {home}): dropped {fmt(t_dropped)}, back after restart {fmt(back)}")
    return result


# -- reporting ---------------------------------------------------------------------------------
def fmt(v: float | None) -> str:
    return fmt_s(v, missing="timeout")


def stats(values: list[float | None]) -> dict[str, Any]:
    done = [v for v in values if v is not None]
    return {
        "n": len(values), "timeouts": len(values) - len(done),
        "median": statistics.median(done) if done else None,
        "max": None if len(done) < len(values) or not done else max(done),
        "min": min(done) if done else None,
        "values": values,
    }


def verdict(value: float | None, target: float) -> str:
    return "MISS" if value is None or value > target else "PASS"


def report(results: dict[str, Any], opts: ClusterOptions, out: Any = sys.stdout) -> None:
    leader_target = opts.session_timeout + 1.0
    rehome_target = opts.heartbeat_timeout + 2.0
    rss_target = 80.0
    rows: list[tuple[str, str, str, str, str, str]] = []

    def row(name: str, s: dict[str, Any], target: float | None, target_text: str) -> None:
        med = fmt_s(s["median"])
        mx = "timeout" if s["max"] is None and s["n"] else fmt_s(s["max"])
        ok = "" if target is None else verdict(s["max"] if s["timeouts"] == 0 else None, target)
        rows.append((name, str(s["n"]), med, mx, target_text, ok))

    lr, mr, cr = results["leaderRounds"], results["managerRounds"], results["lcRounds"]
    if lr:
        row("leader killed -> new leader at bootstrap", stats([r["newLeaderSeconds"] for r in lr]),
            leader_target, f"<= {leader_target:.1f}s (session timeout + 1 s)")
        row("leader killed -> every LC re-homed", stats([r["rehomedSeconds"] for r in lr]),
            rehome_target, f"<= {rehome_target:.1f}s (heartbeat timeout + 2 s)")
    if mr:
        row("group manager killed -> its LCs re-homed", stats([r["rehomedSeconds"] for r in mr]),
            rehome_target, f"<= {rehome_target:.1f}s (heartbeat timeout + 2 s)")
    if cr:
        row("LC killed -> dropped by its GM", stats([r["droppedSeconds"] for r in cr]),
            None, f"(info; heartbeat timeout {opts.heartbeat_timeout:.1f}s)")
        row("LC restarted -> back in hierarchy", stats([r["rejoinedSeconds"] for r in cr]), None, "(info)")

    print("", file=out)
    table(("measurement", "n", "median", "max", "target", ""), rows, out, align="<<<<<<")

    lost = results["lostDomains"]
    rounds = len(lr) + len(mr) + len(cr)
    print(f"\ndomains lost: {len(lost)} over {rounds} rounds "
          f"({opts.lcs} LCs x {opts.domains_per_lc} domain checked after every round)  "
          f"target 0  {'PASS' if not lost else 'MISS ' + ', '.join(sorted(set(lost)))}", file=out)

    for label, key in (("after warm-up", "rssWarm"), ("at the end", "rssEnd")):
        sample = results.get(key)
        if not sample:
            continue
        print(f"\nresident memory (RSS, MiB) {label}:", file=out)
        for role in ("bootstrap", "group leader", "group manager", "local controller"):
            vals = sample.get(role)
            if not vals:
                continue
            extra = ""
            if role == "local controller" and key == "rssWarm":
                extra = f"   target < {rss_target:.0f} MiB  {'PASS' if max(vals) < rss_target else 'MISS'}"
            print(f"  {role:<17} n={len(vals)}  min {min(vals):6.1f}  max {max(vals):6.1f}{extra}", file=out)

    print(f"\ncluster: {opts.gms} GMs, {opts.lcs} LCs, heartbeat {opts.heartbeat_interval}s/"
          f"timeout {opts.heartbeat_timeout}s, session timeout {opts.session_timeout}s, "
          f"poll {POLL * 1000:.0f} ms; total run {results.get('totalSeconds', 0):.0f}s", file=out)


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each scenario (default 5)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of each scenario")
    add_output_options(ap)
    ap.add_argument("--verbose", "-v", action="store_true", help="print each round as it happens")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else max(1, args.rounds)
    lc_rounds = min(rounds, 5)

    log = logger(args.verbose)
    interruptible()

    state_dir = Path(tempfile.mkdtemp(prefix="snooze-bench-failover-"))
    opts = ClusterOptions(gms=GMS, lcs=LCS, domains_per_lc=1, base_port=port_range(1 + GMS + LCS), **FAST_TIMING)
    cluster = LocalCluster(state_dir, opts)
    bs = Bootstrap(opts.base_port, timeout=2.0)
    results: dict[str, Any] = {
        "options": public_options(opts),
        "rounds": rounds, "leaderRounds": [], "managerRounds": [], "lcRounds": [], "lostDomains": [],
        "targets": {"leaderFailoverSeconds": opts.session_timeout + 1.0,
                    "rehomeSeconds": opts.heartbeat_timeout + 2.0, "lcRssMiB": 80.0},
    }
    status = 0
    started = time.monotonic()
    print(f"failover benchmark: {rounds} rounds; cluster in {state_dir} on 127.0.0.1:{opts.base_port}-"
          f"{opts.base_port + GMS + LCS}", flush=True)
    try:
        t = time.monotonic()
        cluster.up(wait=True, timeout=60)
        gl, _, _ = wait_whole(cluster, bs)
        results["formedSeconds"] = time.monotonic() - t
        print(f"hierarchy formed in {results['formedSeconds']:.1f}s; leader {gl['id']} epoch {gl['epoch']}", flush=True)
        time.sleep(3.0)  # let it run a few seconds before sampling memory
        results["rssWarm"] = rss_sample(cluster, gl["id"])

        print(f"[1/3] killing the group leader {rounds}x ...", flush=True)
        for _ in range(rounds):
            r = round_kill_leader(cluster, bs, log)
            results["leaderRounds"].append(r)
            results["lostDomains"] += r["lostDomains"]
        print(f"[2/3] killing a non-leader group manager {rounds}x ...", flush=True)
        for _ in range(rounds):
            r = round_kill_manager(cluster, bs, log)
            results["managerRounds"].append(r)
            results["lostDomains"] += r["lostDomains"]
        print(f"[3/3] killing a local controller {lc_rounds}x ...", flush=True)
        lcs = lc_ids(cluster)
        for i in range(lc_rounds):
            r = round_kill_lc(cluster, bs, lcs[i % len(lcs)], log)
            results["lcRounds"].append(r)
            results["lostDomains"] += r["lostDomains"]
        gl, _, _ = wait_whole(cluster, bs)
        results["rssEnd"] = rss_sample(cluster, gl["id"])
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
    report(results, opts)
    results["status"] = {0: "ok", 130: "interrupted"}.get(status, "cluster-failed")
    for s_key, rs, f in (("leaderNewLeader", "leaderRounds", "newLeaderSeconds"), ("leaderRehomed", "leaderRounds", "rehomedSeconds"),
                         ("managerRehomed", "managerRounds", "rehomedSeconds"), ("lcDropped", "lcRounds", "droppedSeconds"),
                         ("lcRejoined", "lcRounds", "rejoinedSeconds")):
        results.setdefault("summary", {})[s_key] = {k: v for k, v in stats([r[f] for r in results[rs]]).items() if k != "values"}
    write_json(results, args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
