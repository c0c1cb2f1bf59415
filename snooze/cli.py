"""``snooze``: the command line — run a local cluster and look at a running one.

Errors are one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from snooze.client.cli import register as register_client_commands
from snooze.localcluster import ClusterError, ClusterOptions, LocalCluster, stop_manifest

DEFAULT_STATE_DIR = ".state/cluster"


class CliError(Exception):
    pass


def _gib(kib: float) -> str:
    return f"{kib / 1024 / 1024:.1f} GiB"


def format_hierarchy(h: dict[str, Any]) -> str:
    gl = h.get("groupLeaderDescription") or {}
    addr = gl.get("listenSettings", {}).get("controlDataAddress", {})
    lines = [f"group leader {gl.get('id')}  {addr.get('address')}:{addr.get('port')}  epoch {gl.get('epoch')}"]
    gms = h.get("groupManagerDescriptions", [])
    for i, gm in enumerate(gms):
        last_gm = i == len(gms) - 1
        a = gm.get("listenSettings", {}).get("controlDataAddress", {})
        lcs = gm.get("localControllers", [])
        lines.append(f"{'└─' if last_gm else '├─'} group manager {gm.get('id')}  {a.get('address')}:{a.get('port')}  {len(lcs)} local controllers")
        for j, lc in enumerate(lcs):
            c = lc.get("controlDataAddress", {})
            cap = lc.get("totalCapacity", [0, 0, 0, 0])
            vms = lc.get("assignedVirtualMachines", [])
            lines.append(
                f"{'   ' if last_gm else '│  '}{'└─' if j == len(lcs) - 1 else '├─'} {lc.get('id')}  {c.get('address')}:{c.get('port')}"
                f"  {lc.get('status')}  {cap[0]:g} vcpus  {_gib(cap[1])}  {len(vms)} VMs"
            )
    return "\n".join(lines)


def _options(args: argparse.Namespace) -> ClusterOptions:
    return ClusterOptions(
        gms=args.gms, lcs=args.lcs, base_port=args.base_port, zk_port=args.zk_port,
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        session_timeout=args.session_timeout, monitoring_interval=args.monitoring_interval,
        lc_cpus=args.lc_cpus, lc_memory_gib=args.lc_memory_gib,
        energy=args.energy, idle_time=args.idle_time, reserved_nodes=args.reserved_nodes,
    )


def cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.lcs < 0 or args.gms < 1 or (args.lcs and args.gms < 2):
        raise CliError("need --gms >= 2 when there are local controllers: one group manager becomes the leader, which manages none")
    cluster = LocalCluster(Path(args.state_dir), _options(args))
    print(f"starting ZooKeeper, 1 bootstrap, {args.gms} group managers, {args.lcs} local controllers ...", flush=True)
    t0 = time.monotonic()
    manifest = cluster.up(wait=True, timeout=args.timeout)
    print(f"hierarchy formed in {time.monotonic() - t0:.1f}s")
    print(f"bootstrap:  {manifest['bootstrapUrl']}   (try: curl '{manifest['bootstrapUrl']}/bootstrap?getCompleteHierarchy')")
    print(f"zookeeper:  {manifest['zookeeper']}")
    print(f"state dir:  {manifest['stateDir']}  (cluster.json, logs/, config/)")
    h = cluster.hierarchy()
    if h:
        print(format_hierarchy(h))
    if args.detach:
        return 0
    if args.demo:
        run_demo(manifest["bootstrapUrl"])
    print("running; Ctrl-C stops everything", flush=True)
    stop = {"now": False}

    def on_signal(_sig: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        print("stopping ...", flush=True)
        cluster.down()
        print("stopped")
    return 0


def run_demo(bootstrap_url: str) -> None:
    from snooze.demo import submit_demo

    try:
        submit_demo(bootstrap_url)
    except OSError as exc:
        print(f"demo virtual cluster failed: {exc}", file=sys.stderr)


def cmd_cluster_down(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    if not (state / "cluster.json").exists():
        raise CliError(f"no cluster.json in {state}")
    n = stop_manifest(state)
    print(f"stopped {n} processes")
    return 0


def _get(url: str) -> Any:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read()).get("error", {})
            raise CliError(f"{err.get('code')}: {err.get('message')}") from exc
        except ValueError:
            raise CliError(f"HTTP {exc.code} from {url}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from exc


def _bootstrap(args: argparse.Namespace) -> str:
    if args.bootstrap:
        return str(args.bootstrap).rstrip("/")
    manifest = Path(args.state_dir) / "cluster.json"
    if manifest.exists():
        return str(json.loads(manifest.read_text())["bootstrapUrl"])
    return "http://127.0.0.1:5000"


def cmd_hierarchy(args: argparse.Namespace) -> int:
    h = _get(_bootstrap(args) + "/bootstrap?getCompleteHierarchy")
    print(json.dumps(h, indent=2) if args.json else format_hierarchy(h))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    data = _get(_bootstrap(args) + "/bootstrap?getLocalControllerList")
    lcs = data.get("localControllers", [])
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "ADDRESS", "STATUS", "VCPUS", "MEMORY", "VMS", "GROUP MANAGER")]
    for lc in lcs:
        a = lc["controlDataAddress"]
        rows.append((lc["id"], f"{a['address']}:{a['port']}", lc["status"], f"{lc['totalCapacity'][0]:g}",
                     _gib(lc["totalCapacity"][1]), str(len(lc.get("assignedVirtualMachines", []))), str(lc.get("groupManagerId"))))
    print(table(rows))
    return 0


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snooze", description="Snooze: a self-organising, energy-aware VM cluster manager.")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="local cluster state dir (default: %(default)s)")
    p.add_argument("--bootstrap", help="bootstrap URL (default: the local cluster's, else http://127.0.0.1:5000)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cluster", help="run a complete local cluster").add_subparsers(dest="action", required=True)
    up = c.add_parser("up", help="start ZooKeeper, bootstrap, group managers and local controllers")
    up.add_argument("--state-dir", default=argparse.SUPPRESS)
    up.add_argument("--detach", action="store_true", help="return once the hierarchy has formed")
    up.add_argument("--gms", type=int, default=3)
    up.add_argument("--lcs", type=int, default=4)
    up.add_argument("--base-port", type=int, default=5000, help="bootstrap port; GMs and LCs follow")
    up.add_argument("--zk-port", type=int, default=0, help="ZooKeeper port (default: a free one)")
    up.add_argument("--heartbeat-interval", type=float, default=3.0)
    up.add_argument("--heartbeat-timeout", type=float, default=10.0)
    up.add_argument("--session-timeout", type=float, default=10.0, help="ZooKeeper session timeout (s)")
    up.add_argument("--monitoring-interval", type=float, default=3.0)
    up.add_argument("--lc-cpus", type=int, default=8)
    up.add_argument("--lc-memory-gib", type=int, default=16)
    up.add_argument("--timeout", type=float, default=90.0, help="give up if the hierarchy has not formed by then")
    up.add_argument("--energy", action="store_true",
                    help="energy management: idle LCs are powered down and woken over IPMI (each LC runs under a simulated BMC)")
    up.add_argument("--idle-time", type=float, default=120.0, help="with --energy: seconds idle before a host is powered down")
    up.add_argument("--reserved-nodes", type=int, default=1, help="with --energy: hosts per group manager always kept on")
    up.add_argument("--no-demo", dest="demo", action="store_false", help="do not submit the demo virtual cluster")
    up.set_defaults(func=cmd_cluster_up)
    down = c.add_parser("down", help="stop every process of the local cluster")
    down.add_argument("--state-dir", default=argparse.SUPPRESS)
    down.set_defaults(func=cmd_cluster_down)

    h = sub.add_parser("hierarchy", help="show the group leader, group managers and local controllers")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_hierarchy)
    hosts = sub.add_parser("hosts", help="list local controllers")
    hosts.add_argument("--json", action="store_true")
    hosts.set_defaults(func=cmd_hosts)
    register_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ClusterError) as exc:
        print(f"snooze: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
