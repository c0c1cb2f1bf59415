#!/usr/bin/env python3
"""Dashboard benchmark (issue 15): what the web dashboard (``/ui/``) shows for a cluster of
1,000 hosts, and how fast. It PRINTS figures; not a test.

    .venv/bin/python bench/dashboard.py                       # 1,000 LCs, 20 GMs, 500 VMs
    .venv/bin/python bench/dashboard.py --lcs 200 --gms 5 --vms 50   # a quick look

A local cluster (``--lcs`` local controllers ``--lcs-per-process`` to a process, ``--gms``
group managers, the default timings of ``snooze cluster up``), ``--vms`` VMs started, then a
real headless Chromium (Debian's, through Selenium, as the tests drive it) opens the
dashboard. Measured in the page (its ``performance`` timeline):

1. first paint: the tree first drawn (``snooze:first-tree``, ms after navigation), and the
   browser's first contentful paint; what the first read of the cluster cost (the hierarchy's
   and the VM list's size, the reads' and the drawing's milliseconds);
2. updates: ``--probes`` VMs started one after the other from the page (a ``fetch`` of
   ``?startVirtualCluster``): ms from the submission until its row shows RUNNING, and from
   the RUNNING event's arrival (``/events``) until the row shows it;
3. a refresh's cost over the whole run: reads and drawing (median, max);
4. the page's JavaScript heap.

Exit status 0 whatever the figures are; 1 if the cluster or the browser could not be driven.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: snooze, tests
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common

from common import (  # noqa: E402
    BenchError,
    Bootstrap,
    add_output_options,
    arg_parser,
    interruptible,
    logger,
    port_range,
    remove_state_dir,
    start_virtual_cluster,
    stop_cluster,
    table,
    vm_metadata,
    wait_ready,
    write_json,
)

from snooze.dev.localcluster import ClusterOptions, LocalCluster  # noqa: E402
from tests.browser import chromium  # noqa: E402

#: In the page: the time each probe VM's row first shows RUNNING in the VM table.
WATCH = """
window.__shown = {};
const look = () => {
  for (const row of document.querySelectorAll('#vm-table tr[data-vm^="probe-"][data-status="RUNNING"]')) {
    if (!(row.dataset.vm in window.__shown)) window.__shown[row.dataset.vm] = performance.now();
  }
};
new MutationObserver(look).observe(document.getElementById('vm-table'), {childList: true, subtree: true, attributes: true});
"""
#: In the page: submit one probe VM, answer the page's clock at the submission.
SUBMIT = """
const [name, done] = [arguments[0], arguments[arguments.length - 1]];
const t = performance.now();
fetch('/bootstrap?startVirtualCluster', {method: 'POST', headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({virtualMachineTemplates: [{name, vcpus: 1, memory: 262144}]})})
  .then((r) => done({t, status: r.status}), (e) => done({t, error: String(e)}));
"""


def measures(d: Any, name: str) -> list[float]:
    return [float(x) for x in d.execute_script(f"return performance.getEntriesByName('{name}').map(e => e.duration)")]


def run(args: Any, log: Any) -> dict[str, Any]:
    opts = ClusterOptions(gms=args.gms, lcs=args.lcs, lcs_per_process=args.lcs_per_process,
                          base_port=port_range(2 + args.gms + args.lcs), ec2=False,
                          extra={"groupmanager.virtual_machine_subnet": "10.64.0.0/16"})
    state = Path(tempfile.mkdtemp(prefix="snooze-dashboard-"))
    c = LocalCluster(state, opts)
    out: dict[str, Any] = {"lcs": args.lcs, "gms": args.gms, "vms": args.vms}
    try:
        log(f"starting {args.lcs} LCs, {args.gms} GMs (state dir {state})")
        c.up(wait=False)
        bs = Bootstrap(opts.base_port, timeout=30.0)
        _gl, _h, formed = wait_ready(c, bs, timeout=args.form_timeout)
        log(f"formed in {formed:.1f}s")
        if args.vms:
            r = start_virtual_cluster(bs, [{"name": f"vm-{i}", "vcpus": 1, "memory": 262144} for i in range(args.vms)],
                                      args.submit_timeout, interval=0.5, start_timeout=120.0, strict=False)
            out["vmsRunning"] = sum(1 for m in vm_metadata(r) if m.get("status") == "RUNNING")
            log(f"{out['vmsRunning']} VMs running")
        time.sleep(args.settle)
        ui = f"http://127.0.0.1:{opts.base_port}/ui/#vms"
        with chromium() as d:
            d.get(ui)
            t0 = time.monotonic()
            while not d.execute_script("return document.body.dataset.ready === 'true'"):
                if time.monotonic() - t0 > 60:
                    raise BenchError("the dashboard drew no tree within 60 s")
                time.sleep(0.05)
            first = d.execute_script("""
              const nav = performance.getEntriesByType('navigation')[0];
              const fcp = performance.getEntriesByName('first-contentful-paint')[0];
              const res = (s) => performance.getEntriesByType('resource').filter((e) => e.name.includes(s))
                .map((e) => ({ms: e.duration, bytes: e.encodedBodySize}))[0] || null;
              return {tree: performance.getEntriesByName('snooze:first-tree')[0].startTime,
                      fcp: fcp ? fcp.startTime : null, html: nav.responseEnd,
                      hierarchy: res('getCompleteHierarchy'), vms: res('getVirtualMachineDescriptions'),
                      read: performance.getEntriesByName('snooze:read')[0].duration,
                      render: performance.getEntriesByName('snooze:render')[0].duration,
                      hosts: document.querySelectorAll('#lc-table tbody tr').length,
                      gms: document.querySelectorAll('#tree li.gm').length};""")
            out["first"] = first
            log(f"first tree at {first['tree']:.0f} ms")
            d.find_element("css selector", "#vm-filter").send_keys("probe-")
            d.execute_script(WATCH)
            updates: list[dict[str, float]] = []
            for i in range(args.probes):
                name = f"probe-{i}"
                sent = d.execute_async_script(SUBMIT, name)
                if "error" in sent or sent.get("status") != 200:
                    raise BenchError(f"submitting {name} from the page failed: {sent}")
                t1 = time.monotonic()
                while name not in d.execute_script("return window.__shown"):
                    if time.monotonic() - t1 > 60:
                        raise BenchError(f"{name} never showed RUNNING in the dashboard")
                    time.sleep(0.02)
                shown = float(d.execute_script(f"return window.__shown['{name}']"))
                arrived = d.execute_script(
                    "return performance.getEntriesByName('snooze:event').filter((e) => e.detail && e.detail.vm === arguments[0]"
                    " && e.detail.status === 'RUNNING').map((e) => e.startTime)[0] ?? null", name)
                updates.append({"submitToShownMs": shown - float(sent["t"]),
                                "eventToShownMs": shown - float(arrived) if arrived is not None else float("nan")})
                time.sleep(args.pause)
            out["updates"] = updates
            out["readMs"] = measures(d, "snooze:read")
            out["renderMs"] = measures(d, "snooze:render")
            out["heapMiB"] = d.execute_script("return performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null")
    finally:
        stop_cluster(c)
        remove_state_dir(state, not args.keep)
    return out


def report(r: dict[str, Any]) -> None:
    f = r.get("first") or {}

    def kib(x: dict[str, Any] | None) -> str:
        return f"{x['bytes'] / 1024:.0f} KiB in {x['ms']:.0f} ms" if x else "-"

    def med(xs: list[float]) -> str:
        xs = [x for x in xs if x == x]
        return f"{statistics.median(xs):.0f} (max {max(xs):.0f})" if xs else "-"

    print(f"dashboard: {r['lcs']} local controllers, {r['gms']} group managers, {r.get('vmsRunning', 0)} VMs running")
    rows = [
        ["tree first drawn (ms after navigation)", f"{f.get('tree', float('nan')):.0f}"],
        ["first contentful paint (ms)", f"{f['fcp']:.0f}" if f.get("fcp") is not None else "-"],
        ["hierarchy read", kib(f.get("hierarchy"))],
        ["VM list read", kib(f.get("vms"))],
        ["first refresh: reads / drawing (ms)", f"{f.get('read', 0):.0f} / {f.get('render', 0):.0f}"],
        ["hosts in the table / group managers in the tree", f"{f.get('hosts')} (a page) / {f.get('gms')}"],
        ["submission -> row RUNNING (ms, median)", med([u["submitToShownMs"] for u in r.get("updates", [])])],
        ["RUNNING event -> row RUNNING (ms, median)", med([u["eventToShownMs"] for u in r.get("updates", [])])],
        ["refresh reads (ms, median)", med(r.get("readMs", []))],
        ["refresh drawing (ms, median)", med(r.get("renderMs", []))],
        ["JavaScript heap (MiB)", f"{r['heapMiB']:.1f}" if r.get("heapMiB") else "-"],
    ]
    table(["figure", "value"], rows)


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--lcs", type=int, default=1000, help="local controllers (1000)")
    ap.add_argument("--gms", type=int, default=20, help="group managers, one of them the group leader (20)")
    ap.add_argument("--lcs-per-process", type=int, default=250, metavar="N", help="local controllers per process (250)")
    ap.add_argument("--vms", type=int, default=500, help="VMs started before the page opens (500)")
    ap.add_argument("--probes", type=int, default=5, help="VMs started from the page, one at a time (5)")
    ap.add_argument("--pause", type=float, default=1.0, metavar="S", help="seconds between probes")
    ap.add_argument("--settle", type=float, default=5.0, metavar="S", help="seconds after the VMs before the page opens")
    ap.add_argument("--form-timeout", type=float, default=300.0, metavar="S")
    ap.add_argument("--submit-timeout", type=float, default=300.0, metavar="S")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    add_output_options(ap)
    args = ap.parse_args()
    interruptible()
    log = logger(args.verbose)
    try:
        r = run(args, log)
    except BenchError as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return 1
    report(r)
    write_json(r, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
