#!/usr/bin/env python3
"""Live-migration benchmark: how long ``?migrateVirtualMachine`` takes end to end between two
real libvirtd + QEMU hosts, and how much of that is Snooze rather than libvirt. It PRINTS
figures (with the target next to them); it is not a pass/fail test.

    .venv/bin/python bench/migration.py              # 10 migrations back and forth
    .venv/bin/python bench/migration.py --count 20   # another number of migrations
    .venv/bin/python bench/migration.py --json       # also print machine-readable results
    .venv/bin/python bench/migration.py --json out.json
    .venv/bin/python bench/migration.py --keep       # keep the state dir (configs, logs)

Two private libvirtd daemons (``snooze.dev.sim.libvirtd.LibvirtdCluster``, root needed, see
scripts/install-qemu.sh) stand in for two hypervisor hosts; a local cluster of ZooKeeper, a
bootstrap and 2 group managers (heartbeat 0.5 s, session timeout 2 s) runs on 127.0.0.1, and a
local controller is added on each daemon (``qemu-a``, ``qemu-b``). The tiny diskless domain of
``tiny_domain_xml`` is started through the bootstrap (``?startVirtualCluster``) and then moved
``--count`` times between the two local controllers with ``POST /bootstrap?migrateVirtualMachine``.

For each migration: the wall time of the API call (from sending the request until the answer is
read, a fresh HTTP connection each time), then ``?getVirtualMachineMetaData``'s
``lastMigration`` (``duration``: the local controller's migrate step; ``libvirtSeconds``: the
time inside libvirt's migrate call; ``nonLive``), and a check with libvirt on both daemons that
the domain runs at the destination and is gone from the source.

overhead = API wall time - libvirtSeconds: everything Snooze adds around libvirt's own call
(bootstrap -> group leader -> group manager routing, the destination reservation, the local
controller's look-up and the ZooKeeper record update). Target: < 0.3 s for every migration.

The exit status is 0 whatever the figures are; 1 if the hosts or the cluster could not be
started or a migration failed (then the figures are partial), 130 if interrupted.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: snooze
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common

import libvirt  # noqa: E402
from common import (  # noqa: E402
    FAST_TIMING,
    HOST,
    BenchError,
    add_output_options,
    arg_parser,
    fmt_s,
    hierarchy_lcs,
    interruptible,
    logger,
    port_range,
    public_options,
    remove_state_dir,
    table,
    uninterruptible,
    wait_until,
    write_json,
)

from snooze.dev.localcluster import ClusterError, ClusterOptions, LocalCluster  # noqa: E402
from snooze.dev.sim.libvirtd import LibvirtdCluster, LibvirtdError, LibvirtdHost, tiny_domain_xml  # noqa: E402

GMS = 2
LC_NAMES = ("qemu-a", "qemu-b")
OVERHEAD_TARGET = 0.3  # seconds of Snooze time around libvirt's migrate call, per migration
MIGRATION_TIMEOUT = 30.0  # the local controllers' migration timeout (watchdog)
API_TIMEOUT = 120.0


# -- HTTP to the bootstrap ---------------------------------------------------------------------
def call(port: int, verb: str, body: Any = None, *, method: str = "POST", timeout: float = 10.0) -> tuple[int, Any]:
    """One request on a fresh connection: (status, JSON answer or raw text)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
        conn.request(method, f"/bootstrap?{verb}", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        status = resp.status
    finally:
        conn.close()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


# -- helpers -----------------------------------------------------------------------------------
def active_domains(uri: str) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains() if d.isActive()]
    finally:
        conn.close()


def add_qemu_lc(c: LocalCluster, name: str, host: LibvirtdHost) -> None:
    c.add_process("localcontroller", name, {
        "localcontroller.hypervisor_uri": host.uri,
        "localcontroller.remote_uri": host.uri,
        "localcontroller.migration_uri": host.migration_uri,
        "localcontroller.migration_timeout": MIGRATION_TIMEOUT,
    })


def lc_homes(port: int) -> dict[str, str]:
    """LC id -> the group manager that manages it (from ``getCompleteHierarchy``)."""
    status, h = call(port, "getCompleteHierarchy", method="GET")
    if status != 200 or not isinstance(h, dict):
        return {}
    return {lc["id"]: gm["id"] for gm, lc in hierarchy_lcs(h)}


def stats(values: list[float]) -> dict[str, float | None]:
    return {"median": statistics.median(values) if values else None, "max": max(values) if values else None,
            "min": min(values) if values else None}


def fmt(v: float | None) -> str:
    return fmt_s(v, 3)


# -- one migration -----------------------------------------------------------------------------
def migrate_once(port: int, vm: str, source: str, target: str, uri: dict[str, str]) -> dict[str, Any]:
    started_at = time.time()  # wall clock, to line up with the processes' logs
    t0 = time.perf_counter()
    status, body = call(port, "migrateVirtualMachine", {"virtualMachineId": vm, "localControllerId": target}, timeout=API_TIMEOUT)
    total = time.perf_counter() - t0
    if (status, body) != (200, True):
        raise BenchError(f"migration {source} -> {target} failed: HTTP {status}: {body}")
    st, meta = call(port, "getVirtualMachineMetaData", vm)
    if st != 200 or not isinstance(meta, dict):
        raise BenchError(f"getVirtualMachineMetaData {vm}: HTTP {st}: {meta}")
    last = meta.get("lastMigration") or {}
    at_target = vm in active_domains(uri[target])
    at_source = vm in active_domains(uri[source])
    libvirt_s = last.get("libvirtSeconds")
    lc_s = last.get("duration")
    return {
        "from": source, "to": target, "startedAt": started_at, "totalSeconds": total,
        "lcSeconds": lc_s, "libvirtSeconds": libvirt_s,
        "overheadSeconds": None if libvirt_s is None else total - float(libvirt_s),
        "lcOverheadSeconds": None if libvirt_s is None or lc_s is None else float(lc_s) - float(libvirt_s),
        "outsideLcSeconds": None if lc_s is None else total - float(lc_s),
        "nonLive": last.get("nonLive"), "recordFrom": last.get("from"), "recordTo": last.get("to"),
        "recordedLocation": (meta.get("virtualMachineLocation") or {}).get("localControllerId"),
        "status": meta.get("status"),
        "runningAtDestination": at_target, "goneFromSource": not at_source,
        "lastMigration": last,
    }


def row_ok(r: dict[str, Any]) -> bool:
    return bool(r["runningAtDestination"] and r["goneFromSource"] and r["recordedLocation"] == r["to"]
                and r["recordFrom"] == r["from"] and r["recordTo"] == r["to"] and r["status"] == "RUNNING")


# -- reporting ---------------------------------------------------------------------------------
def report(results: dict[str, Any], out: Any = sys.stdout) -> None:
    rows = results["migrations"]
    print("", file=out)
    cells = []
    for i, r in enumerate(rows, 1):
        cells.append((str(i), r["from"], r["to"], fmt(r["totalSeconds"]), fmt(r["lcSeconds"]), fmt(r["libvirtSeconds"]),
                      fmt(r["overheadSeconds"]), fmt(r["lcOverheadSeconds"]), fmt(r["outsideLcSeconds"]),
                      {False: "yes", True: "NO"}.get(r["nonLive"], "?"), "ok" if row_ok(r) else "WRONG"))
    table(("#", "from", "to", "API total", "LC step", "libvirt", "overhead", "LC-libvirt", "API-LC", "live", "checked"),
          cells, out, align="<<<>>>>>><<")
    print("(overhead = API total - libvirt; LC-libvirt = the LC's step outside libvirt's call; "
          "API-LC = bootstrap + group manager + RPC + ZooKeeper)", file=out)

    s = results.get("summary") or {}
    if not rows:
        print("\nno migration completed", file=out)
        return
    print("", file=out)
    print(f"migrations: {len(rows)}  (domain {results['vm']}, {results['vmMemoryKiB'] // 1024} MiB, {results['domainType']})", file=out)
    for label, key in (("API total time", "total"), ("libvirt migrate call", "libvirt"), ("LC migrate step", "lc"),
                       ("overhead (API - libvirt)", "overhead"), ("  of which in the LC", "lcOverhead"),
                       ("  of which outside the LC", "outsideLc")):
        v = s.get(key) or {}
        print(f"  {label:<26} median {fmt(v.get('median')):>8}   max {fmt(v.get('max')):>8}   min {fmt(v.get('min')):>8}", file=out)
    ov = s.get("overhead") or {}
    met = ov.get("max") is not None and ov["max"] < OVERHEAD_TARGET and s.get("overheadMissing", 0) == 0
    print(f"\noverhead per migration: max {fmt(ov.get('max'))}, median {fmt(ov.get('median'))}   "
          f"target < {OVERHEAD_TARGET:.1f}s for every migration  {'MET' if met else 'MISSED'}", file=out)
    n_live = sum(1 for r in rows if r["nonLive"] is False)
    print(f"all migrations live (nonLive false): {'yes' if n_live == len(rows) else 'NO'} ({n_live}/{len(rows)})", file=out)
    n_ok = sum(1 for r in rows if row_ok(r))
    print(f"domain at the destination and gone from the source, record updated: {n_ok}/{len(rows)}"
          f"{'' if n_ok == len(rows) else '  WRONG'}", file=out)
    print(f"\nlocal controllers: {', '.join(f'{lc} on {gm}' for lc, gm in sorted(results.get('lcHomes', {}).items()))}; "
          f"group leader {results.get('groupLeader', '?')}; VM started in {fmt(results.get('startSeconds'))}; "
          f"load average {results.get('loadAverage', '?')}; total run {results.get('totalSeconds', 0):.0f}s", file=out)


def summarise(results: dict[str, Any]) -> None:
    rows = results["migrations"]

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    results["summary"] = {
        "total": stats(col("totalSeconds")), "libvirt": stats(col("libvirtSeconds")), "lc": stats(col("lcSeconds")),
        "overhead": stats(col("overheadSeconds")), "lcOverhead": stats(col("lcOverheadSeconds")),
        "outsideLc": stats(col("outsideLcSeconds")),
        "overheadMissing": sum(1 for r in rows if r.get("overheadSeconds") is None),
        "allLive": bool(rows) and all(r["nonLive"] is False for r in rows),
        "allChecked": bool(rows) and all(row_ok(r) for r in rows),
    }
    ov = results["summary"]["overhead"]
    results["summary"]["overheadTargetMet"] = (ov["max"] is not None and ov["max"] < OVERHEAD_TARGET
                                               and results["summary"]["overheadMissing"] == 0)


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--count", type=int, default=10, help="migrations to perform (default 10)")
    add_output_options(ap)
    ap.add_argument("--verbose", "-v", action="store_true", help="print each migration as it happens")
    args = ap.parse_args(argv)
    count = max(1, args.count)

    log = logger(args.verbose)
    interruptible()

    # Short: libvirt's socket paths must fit in sun_path (108 bytes).
    state_dir = Path(tempfile.mkdtemp(prefix="snz-mig-", dir="/tmp"))
    base_port = port_range(1 + GMS)
    opts = ClusterOptions(gms=GMS, lcs=0, base_port=base_port, **FAST_TIMING)
    cluster = LocalCluster(state_dir / "cluster", opts)
    vm = f"bench-mig-{random.randint(1000, 9999)}"
    results: dict[str, Any] = {"count": count, "vm": vm, "vmMemoryKiB": 32768, "migrations": [],
                               "options": public_options(opts),
                               "targets": {"overheadSeconds": OVERHEAD_TARGET}}
    status = 0
    started = time.monotonic()
    print(f"migration benchmark: {count} live migrations; state in {state_dir}; bootstrap on 127.0.0.1:{base_port}", flush=True)
    libvirtd = LibvirtdCluster(state_dir / "lv", count=2, keep_files=args.keep)
    try:
        t = time.monotonic()
        with libvirtd:
            hosts = libvirtd.hosts
            results["libvirtdStartSeconds"] = time.monotonic() - t
            uri = {LC_NAMES[0]: hosts[0].uri, LC_NAMES[1]: hosts[1].uri}
            print(f"2 libvirtd hosts up in {results['libvirtdStartSeconds']:.1f}s; starting the cluster ...", flush=True)
            try:
                cluster.up(wait=True, timeout=60)
                add_qemu_lc(cluster, LC_NAMES[0], hosts[0])
                add_qemu_lc(cluster, LC_NAMES[1], hosts[1])
                wait_until("both QEMU local controllers in the hierarchy", 60,
                           lambda: set(lc_homes(base_port)) >= set(LC_NAMES))
                results["lcHomes"] = lc_homes(base_port)
                st, gl = call(base_port, "getGroupLeaderDescription", method="GET")
                results["groupLeader"] = gl.get("id") if st == 200 and isinstance(gl, dict) else None

                xml = tiny_domain_xml(vm)
                results["domainType"] = "KVM" if "type='kvm'" in xml else "TCG"
                t = time.monotonic()
                st, task = call(base_port, "startVirtualCluster", {"virtualMachineTemplates": [{"libVirtTemplate": xml}]})
                if st != 200:
                    raise BenchError(f"startVirtualCluster: HTTP {st}: {task}")
                resp = wait_until("the VM to start", 60, lambda: call(base_port, "getVirtualClusterResponse", task)[1] or None)
                [meta] = resp["virtualMachineMetaData"]
                if meta.get("status") != "RUNNING":
                    raise BenchError(f"the VM did not start: {meta}")
                results["startSeconds"] = time.monotonic() - t
                source = meta["virtualMachineLocation"]["localControllerId"]
                print(f"{vm} running on {source} after {results['startSeconds']:.1f}s "
                      f"(LCs: {results['lcHomes']}); migrating {count}x ...", flush=True)

                for i in range(count):
                    target = LC_NAMES[1] if source == LC_NAMES[0] else LC_NAMES[0]
                    r = migrate_once(base_port, vm, source, target, uri)
                    results["migrations"].append(r)
                    log(f"  {i + 1}: {source} -> {target}: total {r['totalSeconds']:.3f}s, libvirt "
                        f"{fmt(r['libvirtSeconds'])}, overhead {fmt(r['overheadSeconds'])}{'' if row_ok(r) else '  WRONG'}")
                    source = target
                results["loadAverage"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
                call(base_port, "destroyVirtualMachine", vm)
            finally:
                uninterruptible()  # until the daemons are stopped too
                cluster.down()
        interruptible()
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr, flush=True)
        status = 130
    except (BenchError, ClusterError, LibvirtdError, libvirt.libvirtError, OSError, http.client.HTTPException) as exc:
        print(f"\nthe benchmark could not run: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        interruptible()
        results["totalSeconds"] = time.monotonic() - started
        remove_state_dir(state_dir, status == 0 and not args.keep, suffix=f" (logs in {state_dir / 'cluster' / 'logs'})")

    if status:
        print("\npartial figures:")
    summarise(results)
    report(results)
    results["status"] = {0: "ok", 130: "interrupted"}.get(status, "failed")
    write_json(results, args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
