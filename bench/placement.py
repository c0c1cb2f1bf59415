"""Placement benchmark: packing quality, placement speed, consolidation and relocation.

Prints tables; it is not a test and asserts nothing. Every workload is seeded, so two runs
print the same quality figures (timings vary with the machine). Run:

    .venv/bin/python bench/placement.py            # full run, a couple of minutes
    .venv/bin/python bench/placement.py --quick    # smaller sizes, seconds

Workloads
  hosts: homogeneous (48 vCPU, 128 GiB) or heterogeneous (a mix of 16/64, 32/128, 48/256,
  64/192 vCPU/GiB hosts). rx/tx totals are 0 (not reported), i.e. unconstrained.
  VMs (cpu, memory) drawn per mix:
    small      1-4 vCPU, 1-8 GiB, independent
    large      2-16 vCPU, 4-64 GiB, independent
    mixed      1-16 vCPU, 1-64 GiB, independent
    correlated memory ~ 4 GiB per vCPU x U(0.75, 1.25)
    anti       anti-correlated: cpu-heavy (4 vCPU per GiB... ) or memory-heavy VMs, 50/50
    flavors    12 OpenStack-like flavors (1/1 ... 8/32 vCPU/GiB)
  Demands are continuous except for 'flavors' (real clouds mostly use flavors; the
  continuous mixes exercise the packer's grid-of-classes path).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from itertools import combinations, product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from groupmanager.placement import (  # noqa: E402
    HostView,
    Plan,
    Thresholds,
    VMRequest,
    VMView,
    make_consolidation_policy,
    make_placement_policy,
    relocate_overloaded,
)
from groupmanager.placement.relocation import (  # noqa: E402
    choose_overload_victims,
    excess,
    greedy_overload_victims,
)

GIB = 1024 * 1024  # KiB
THR = Thresholds.uniform(0.2, 0.9, 1.0)
FLAVORS = [
    (1, 1),
    (1, 2),
    (2, 4),
    (2, 8),
    (4, 8),
    (4, 16),
    (8, 16),
    (8, 32),
    (1, 4),
    (2, 2),
    (4, 4),
    (2, 16),
]
HOST_TYPES = [(16, 64), (32, 128), (48, 256), (64, 192)]


def vm_mix(rng: random.Random, mix: str) -> tuple[float, float]:
    if mix == "small":
        return rng.uniform(1, 4), rng.uniform(1, 8) * GIB
    if mix == "large":
        return rng.uniform(2, 16), rng.uniform(4, 64) * GIB
    if mix == "mixed":
        return rng.uniform(1, 16), rng.uniform(1, 64) * GIB
    if mix == "correlated":
        c = rng.uniform(1, 12)
        return c, c * 4 * rng.uniform(0.75, 1.25) * GIB
    if mix == "anti":
        if rng.random() < 0.5:
            return rng.uniform(4, 16), rng.uniform(1, 8) * GIB
        return rng.uniform(1, 3), rng.uniform(16, 64) * GIB
    if mix == "flavors":
        c, m = rng.choice(FLAVORS)
        return float(c), float(m * GIB)
    raise ValueError(mix)


def make_vms(rng: random.Random, mix: str, n: int, prefix: str = "vm") -> list[VMRequest]:
    return [VMRequest(f"{prefix}{i}", (*vm_mix(rng, mix), 0.0, 0.0)) for i in range(n)]


def make_hosts(rng: random.Random, n: int, hetero: bool) -> list[HostView]:
    out = []
    for i in range(n):
        c, m = rng.choice(HOST_TYPES) if hetero else (48, 128)
        out.append(HostView(f"h{i:05d}", (float(c), float(m * GIB), 0.0, 0.0)))
    return out


def lower_bound(vms: Sequence[VMRequest], hosts: Sequence[HostView]) -> int:
    """max over resources of the fewest hosts whose MID capacities cover the total demand.

    For identical hosts this is max_d ceil(sum demand_d / (MID * capacity_d)). For mixed
    hosts each resource takes its own largest hosts first, a valid (optimistic) bound.
    """
    bound = 0
    for d in range(2):
        need = sum(v.requested[d] for v in vms)
        caps = sorted((h.total[d] * THR.mid[d] for h in hosts), reverse=True)
        acc, k = 0.0, 0
        while acc < need and k < len(caps):
            acc += caps[k]
            k += 1
        bound = max(bound, k)
    return bound


def lp_bound(vms: Sequence[VMRequest], hosts: Sequence[HostView]) -> int:
    """A tighter lower bound for mixed hosts: the fractional optimum of choosing host counts.

    Minimise the number of hosts x_t of each model t (0 <= x_t <= hosts of that model) whose
    MID capacities cover the total cpu and memory demand together. This linear programme
    has an optimum with at most two models strictly between their bounds, so every such
    choice is tried. For identical hosts it equals ``lower_bound``.
    """
    need = [sum(v.requested[d] for v in vms) for d in range(2)]
    count: dict[tuple[float, float], int] = {}
    for h in hosts:
        cap = (h.total[0] * THR.mid[0], h.total[1] * THR.mid[1])
        count[cap] = count.get(cap, 0) + 1
    models = list(count.items())
    best = math.inf
    for choice in product((0, 1, 2), repeat=len(models)):  # none, all, or a fraction
        free = [i for i, c in enumerate(choice) if c == 2]
        if len(free) > 2:
            continue
        n = float(sum(models[i][1] for i, c in enumerate(choice) if c == 1))
        rest = [
            max(
                0.0,
                need[d]
                - sum(models[i][0][d] * models[i][1] for i, c in enumerate(choice) if c == 1),
            )
            for d in range(2)
        ]
        if not free:
            if rest == [0.0, 0.0]:
                best = min(best, n)
        elif len(free) == 1:
            (cap, avail) = models[free[0]]
            x = max(r / c for r, c in zip(rest, cap, strict=True))
            if x <= avail:
                best = min(best, n + x)
        else:
            (a, na), (b, nb) = models[free[0]], models[free[1]]
            det = a[0] * b[1] - a[1] * b[0]
            if det:
                x = (rest[0] * b[1] - rest[1] * b[0]) / det
                y = (a[0] * rest[1] - a[1] * rest[0]) / det
                if 0 <= x <= na and 0 <= y <= nb:
                    best = min(best, n + x + y)
    return max(lower_bound(vms, hosts), math.ceil(best - 1e-9))


def hosts_used(plan: Plan) -> int:
    return len({p.host_id for p in plan.placements})


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    for j, r in enumerate(cells):
        print(
            "| "
            + " | ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            + " |"
        )
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


# -- 1. quality --------------------------------------------------------------------------


def quality(quick: bool) -> None:
    policies: list[tuple[str, Callable[[], object]]] = [
        ("first-fit (original)", lambda: make_placement_policy("first-fit", thresholds=THR)),
        (
            "FFD (first-fit decreasing)",
            lambda: make_placement_policy("first-fit", thresholds=THR, decreasing=True),
        ),
        (
            "BFD (best-fit decreasing)",
            lambda: make_placement_policy("best-fit", thresholds=THR, decreasing=True),
        ),
        ("dot-product (default)", lambda: make_placement_policy("dot-product", thresholds=THR)),
    ]
    seeds = range(3 if quick else 4)
    n_vms = 300 if quick else 1000
    mixes = ["small", "large", "mixed", "correlated", "anti", "flavors"]
    rows = []
    overall: dict[str, list[float]] = {name: [] for name, _ in policies}
    per_fleet: dict[str, dict[str, list[float]]] = {}
    lp_all: list[float] = []
    for hetero in (False, True):
        fleet = "hetero" if hetero else "homog"
        per_fleet[fleet] = {name: [] for name, _ in policies}
        for mix in mixes:
            excess_pct: dict[str, list[float]] = {name: [] for name, _ in policies}
            lp_pct: list[float] = []
            for seed in seeds:
                rng = random.Random(f"{mix}-{hetero}-{seed}")
                vms = make_vms(rng, mix, n_vms)
                hosts = make_hosts(
                    rng, n_vms // 2, hetero
                )  # plenty: the question is how few get used
                lb = lower_bound(vms, hosts)
                lp_pct.append(100.0 * (lp_bound(vms, hosts) - lb) / lb)
                for name, factory in policies:
                    plan = factory().place(vms, hosts)  # type: ignore[attr-defined]
                    assert not plan.unplaced, (name, mix)
                    pct = 100.0 * (hosts_used(plan) - lb) / lb
                    excess_pct[name].append(pct)
                    overall[name].append(pct)
                    per_fleet[fleet][name].append(pct)
            lp_all.extend(lp_pct)
            rows.append(
                [fleet, mix, f"{statistics.mean(lp_pct):.1f} %"]
                + [f"{statistics.mean(excess_pct[n]):.1f} %" for n, _ in policies]
            )
    for fleet, by_policy in per_fleet.items():
        rows.append(
            [fleet, "mean", ""] + [f"{statistics.mean(by_policy[n]):.1f} %" for n, _ in policies]
        )
    rows.append(
        ["all", "mean", f"{statistics.mean(lp_all):.1f} %"]
        + [f"{statistics.mean(overall[n]):.1f} %" for n, _ in policies]
    )
    table(
        f"1. Packing quality: hosts used above the lower bound (mean of {len(seeds)} seeds, {n_vms} VMs; lower is better)",
        ["hosts", "VM mix", "LP bound"] + [n for n, _ in policies],
        rows,
    )
    print(
        "\nLower bound: max over cpu/memory of the fewest hosts whose MID (90 %) capacity covers the\n"
        "total demand; for heterogeneous hosts each resource takes its own largest hosts first.\n"
        "'LP bound' is a tighter lower bound (see lp_bound) shown on the same scale: no packing\n"
        "can use fewer hosts, so on mixed fleets it is the floor the policies are measured above."
    )


# -- 2. speed ----------------------------------------------------------------------------


def original_first_fit(vms: Sequence[VMRequest], hosts: Sequence[HostView]) -> int:
    """The original Snooze FirstFit: sort hosts once by the L1 norm of their utilisation
    (decreasing), then for each VM scan linearly for the first host with room under MID."""
    order = sorted(
        hosts, key=lambda h: -sum(u / t for u, t in zip(h.used, h.total, strict=True) if t > 0)
    )
    used = {h.id: list(h.used) for h in order}
    placed = 0
    for vm in vms:
        for h in order:
            u = used[h.id]
            if all(
                u[d] + vm.requested[d] <= THR.mid[d] * h.total[d] or h.total[d] == 0
                for d in range(4)
            ):
                for d in range(4):
                    u[d] += vm.requested[d]
                placed += 1
                break
    return placed


def nova_style(vms: Sequence[VMRequest], hosts: Sequence[HostView]) -> int:
    """Nova FilterScheduler's shape: per VM, run every filter over every host, weigh the
    survivors by free RAM (normalised), pick the best, consume its capacity."""
    free = {
        h.id: [THR.mid[d] * h.total[d] - h.used[d] - h.reserved[d] for d in range(4)] for h in hosts
    }
    placed = 0
    for vm in vms:
        survivors = [h for h in hosts if h.alive]  # ComputeFilter
        survivors = [h for h in survivors if free[h.id][0] >= vm.requested[0]]  # CoreFilter
        survivors = [h for h in survivors if free[h.id][1] >= vm.requested[1]]  # RamFilter
        if not survivors:
            continue
        top = max(free[h.id][1] for h in survivors) or 1.0
        best = max(survivors, key=lambda h: free[h.id][1] / top)  # RAMWeigher
        f = free[best.id]
        for d in range(4):
            f[d] -= vm.requested[d]
        placed += 1
    return placed


def speed(quick: bool) -> None:
    n_hosts, n_vms = (2000, 20000) if quick else (10000, 100000)
    rng = random.Random("speed")
    hosts = make_hosts(rng, n_hosts, hetero=False)
    workloads = {
        "flavors": make_vms(rng, "flavors", n_vms),
        "continuous (mixed sizes, scaled to fit)": [
            VMRequest(f"c{i}", (c * 0.35, m * 0.35, 0.0, 0.0))
            for i, (c, m) in enumerate(vm_mix(rng, "mixed") for _ in range(n_vms))
        ],
    }
    rows = []
    for wname, vms in workloads.items():
        policy = make_placement_policy("dot-product", thresholds=THR)
        t0 = time.perf_counter()
        plan = policy.place(vms, hosts)
        dp = time.perf_counter() - t0
        rows.append(
            [
                wname,
                "dot-product (this engine)",
                f"{len(vms):,}",
                f"{len(plan.placements):,}",
                f"{dp:.2f} s",
                f"{len(vms) / dp:,.0f}",
                "measured, whole batch",
            ]
        )
        sample = 400 if quick else 1000
        for bname, fn in (
            ("original Snooze first-fit", original_first_fit),
            ("Nova-style filter+weigh", nova_style),
        ):
            t0 = time.perf_counter()
            fn(vms[:sample], hosts)
            dt = time.perf_counter() - t0
            est = dt * len(vms) / sample
            rows.append(
                [
                    wname,
                    bname,
                    f"{len(vms):,}",
                    "-",
                    f"~{est:.0f} s",
                    f"{sample / dt:,.0f}",
                    f"first {sample} VMs timed, extrapolated x{len(vms) // sample}",
                ]
            )
        rows.append(["", "", "", "", "", "", ""])
    table(
        f"2. Placement speed: {n_vms:,} VMs on {n_hosts:,} empty hosts (48 vCPU / 128 GiB)",
        ["workload", "policy", "VMs", "placed", "time", "VMs/s", "how"],
        rows[:-1],
    )
    print(
        "\nThe baselines are timed on the first VMs of the batch, while hosts are still empty, which\n"
        "flatters them: the original first-fit scans further as hosts fill. Speed-ups quoted from\n"
        "VMs/s are therefore conservative."
    )


# -- 3. consolidation --------------------------------------------------------------------


def consolidation_workload(rng: random.Random, n_hosts: int, n_vms: int) -> list[HostView]:
    """Hosts at 25-40 % load, 2 to 10 VMs each (6 on average), VM sizes varying."""
    mean = n_vms // n_hosts
    counts = [rng.randint(2, 2 * mean - 2) for _ in range(n_hosts)]
    counts[-1] += n_vms - sum(counts)  # exactly n_vms in all
    hosts = []
    k = 0
    for i in range(n_hosts):
        total = (48.0, 128.0 * GIB, 0.0, 0.0)
        target = rng.uniform(0.25, 0.40)
        # Split the target load among a varying number of VMs with random weights.
        ws = [rng.uniform(0.3, 1.7) for _ in range(max(1, counts[i]))]
        s = sum(ws)
        vms = []
        for w in ws:
            f = target * w / s
            skew = rng.uniform(0.6, 1.4)
            vms.append(VMView(f"v{k}", (total[0] * f * skew, total[1] * f / skew, 0.0, 0.0)))
            k += 1
        used = tuple(sum(v.requested[d] for v in vms) for d in range(4))
        hosts.append(HostView(f"h{i:05d}", total, used=used, vms=tuple(vms)))  # type: ignore[arg-type]
    return hosts


def consolidation(quick: bool) -> None:
    n_hosts, n_vms = (1000, 6000) if quick else (5000, 30000)
    rows = []
    for seed in range(2 if quick else 3):
        hosts = consolidation_workload(random.Random(f"cons-{seed}"), n_hosts, n_vms)
        demand = [sum(h.used[d] for h in hosts) for d in range(2)]
        lb = max(math.ceil(demand[d] / (THR.mid[d] * hosts[0].total[d])) for d in range(2))
        for name in ("sercon", "cost-aware"):
            t0 = time.perf_counter()
            plan = make_consolidation_policy(name).consolidate(hosts, THR)
            dt = time.perf_counter() - t0
            released = len(plan.power_down)
            migs = len(plan.migrations)
            mem = sum(m.memory for m in plan.migrations) / GIB
            rows.append(
                [
                    seed,
                    name,
                    f"{released:,}",
                    f"{n_hosts - lb:,}",
                    f"{migs:,}",
                    f"{migs / max(released, 1):.2f}",
                    f"{mem:,.0f}",
                    f"{mem / max(released, 1):.1f}",
                    f"{dt:.2f} s",
                ]
            )
    table(
        f"3. Consolidation: {n_hosts:,} hosts at 25-40 % load, {n_vms:,} VMs (MID 90 %)",
        [
            "seed",
            "policy",
            "hosts released",
            "upper bound",
            "migrations",
            "migr./released",
            "GiB moved",
            "GiB/released",
            "plan time",
        ],
        rows,
    )
    print(
        "\nUpper bound on hosts released: hosts - max_d ceil(total demand_d / (MID x capacity_d))."
    )


# -- 4. relocation -----------------------------------------------------------------------


def relocation(quick: bool) -> None:
    rng = random.Random("reloc")
    cases = 100 if quick else 400
    counts = {
        "original Snooze rule": 0,
        "greedy (engine, large hosts)": 0,
        "engine (exact <= 12 VMs)": 0,
    }
    extra = dict.fromkeys(counts, 0)
    worst = dict.fromkeys(counts, 0)
    n = 0
    minimum_total = 0
    for _ in range(cases):
        total = (32.0, 64.0 * GIB, 0.0, 0.0)
        k = rng.randint(4, 10)
        vms = tuple(
            VMView(f"v{i}", (rng.uniform(1, 8), rng.uniform(2, 16) * GIB, 0.0, 0.0))
            for i in range(k)
        )
        used = tuple(sum(v.requested[d] for v in vms) for d in range(4))
        host = HostView("src", total, used=used, vms=vms)  # type: ignore[arg-type]
        need = excess(host, THR)
        if not any(x > 0 for x in need):
            continue
        minimum = next(
            (
                size
                for size in range(1, k + 1)
                if any(
                    all(sum(v.requested[d] for v in c) >= need[d] for d in range(4))
                    for c in combinations(vms, size)
                )
            ),
            None,
        )
        if minimum is None:
            continue
        n += 1
        minimum_total += minimum
        got = {
            "original Snooze rule": len(original_overload_rule(vms, need)),
            "greedy (engine, large hosts)": len(greedy_overload_victims(vms, need, total)),
            "engine (exact <= 12 VMs)": len(choose_overload_victims(vms, need, total) or []),
        }
        for key, v in got.items():
            counts[key] += v
            extra[key] += v > minimum
            worst[key] = max(worst[key], v - minimum)
    # The engine's full path (victims + destinations) on one case, to show it plans moves.
    dests = [HostView(f"d{i}", (32.0, 64.0 * GIB, 0.0, 0.0)) for i in range(4)]
    rows = [
        [
            k,
            f"{counts[k] / n:.2f}",
            f"{minimum_total / n:.2f}",
            f"{100.0 * extra[k] / n:.0f} %",
            worst[k],
        ]
        for k in counts
    ]
    table(
        f"4. Overload relocation: VMs moved to get back under MID ({n} overloaded hosts, 4-10 VMs each)",
        [
            "method",
            "mean VMs moved",
            "mean minimum (brute force)",
            "cases above minimum",
            "worst excess",
        ],
        rows,
    )
    host = HostView(
        "src",
        (32.0, 64.0 * GIB, 0.0, 0.0),
        used=(40.0, 70.0 * GIB, 0.0, 0.0),
        vms=(VMView("a", (20.0, 30.0 * GIB, 0.0, 0.0)), VMView("b", (20.0, 40.0 * GIB, 0.0, 0.0))),
    )
    print(f"\nexample plan: {relocate_overloaded(host, dests, THR).to_dict()['migrations']}")


def original_overload_rule(vms: Sequence[VMView], need: Sequence[float]) -> list[VMView]:
    """Snooze's GreedyOverloadRelocation: VMs by increasing L1 size; the first one larger than
    the overload on every resource, else the smallest VMs until their sum exceeds it."""
    order = sorted(vms, key=lambda v: sum(v.requested))
    strict = [max(x, 0.0) for x in need]
    for v in order:
        if all(v.requested[d] > strict[d] or strict[d] == 0 for d in range(4)):
            return [v]
    acc = [0.0] * 4
    out = []
    for v in order:
        out.append(v)
        acc = [a + x for a, x in zip(acc, v.requested, strict=True)]
        if all(acc[d] >= strict[d] for d in range(4)):
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--only", choices=["quality", "speed", "consolidation", "relocation"])
    args = ap.parse_args()
    print(
        f"# snooze placement benchmark ({'quick' if args.quick else 'full'}; Python {sys.version.split()[0]})"
    )
    sections = {
        "quality": quality,
        "speed": speed,
        "consolidation": consolidation,
        "relocation": relocation,
    }
    for name, fn in sections.items():
        if args.only in (None, name):
            t0 = time.perf_counter()
            fn(args.quick)
            print(f"\n({name}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
