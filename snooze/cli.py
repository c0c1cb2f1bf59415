"""``snooze``: the command line — run a local cluster and look at a running one.

Errors are one clear line on stderr and a non-zero exit code. Which cluster a command talks to
is decided in one place, ``snooze.client.target`` (``--url``, ``--state-dir`` before or after
the subcommand, ``SNOOZE_URL``, ``SNOOZE_STATE_DIR``, else the cluster this user started last).

``snooze cluster up`` in the foreground (what ``./scripts/run`` runs) stops everything it
started on SIGINT, SIGTERM and SIGHUP, whatever became of its output: in
``./scripts/run | tee log`` Ctrl-C kills ``tee`` too, and a closed terminal fails every write.
Signals only set a flag that the start-up and the wait poll (so a signal never interrupts
the teardown half-way), and output that can no longer be written is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import time
from typing import Any, TextIO

from snooze.client.cli import HelpFormatter
from snooze.client.cli import bootstrap_url as _bootstrap
from snooze.client.cli import register as register_client_commands
from snooze.client.errors import SnoozeClientError
from snooze.client.target import (
    DEFAULT_STATE_DIR,
    add_target_options,
    new_cluster_state_dir,
    record_last_cluster,
    resolve_state_dir,
)
from snooze.dev.localcluster import (
    ClusterError,
    ClusterOptions,
    Interrupted,
    LocalCluster,
    stop_manifest,
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


class StopRequest:
    """Set by SIGINT, SIGTERM or SIGHUP; polled by whoever may stop, never raised from the handler."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 0


class SurvivingOutput(io.TextIOBase):
    """A stdout/stderr that outlives its reader.

    The first write or flush that fails (EPIPE once ``tee`` died, EIO once the terminal closed)
    points the file descriptor at /dev/null, so neither a later print nor the interpreter's
    final flush can raise, and the text is dropped.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self.stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except OSError:
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        with contextlib.suppress(OSError, ValueError):
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        # What the stream still buffers now goes to /dev/null instead of failing later.
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def cmd_cluster_up(args: argparse.Namespace) -> int:
    # First, before anything is started: from here on a signal means "stop what you started".
    stop = StopRequest()
    stop.install()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SurvivingOutput(sys.stdout), SurvivingOutput(sys.stderr)
    try:
        return _cluster_up(args, stop)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


def _cluster_up(args: argparse.Namespace, stop: StopRequest) -> int:
    if args.lcs < 0 or args.gms < 1 or (args.lcs and args.gms < 2):
        raise CliError("need --gms >= 2 when there are local controllers: one group manager becomes the leader, which manages none")
    cluster = LocalCluster(new_cluster_state_dir(getattr(args, "state_dir", None)), _options(args))
    # Stale record, ports: all checked before anything starts (and before saying it starts).
    if cluster.prepare():
        say(f"cleaned up a stale cluster record in {cluster.state_dir} (its processes were gone)")
    if stop():
        return stop.exit_code
    say(f"starting ZooKeeper, 1 bootstrap, {args.gms} group managers, {args.lcs} local controllers ...")
    detached = False
    t0 = time.monotonic()
    try:
        manifest = cluster.up(wait=True, timeout=args.timeout, stop=stop)
        try:
            record_last_cluster(cluster.state_dir)
        except OSError as exc:  # the cluster runs; only guessing it later will not work
            print(f"snooze: cannot record this as the cluster you started last: {exc}", file=sys.stderr)
        say(f"hierarchy formed in {time.monotonic() - t0:.1f}s")
        say(f"bootstrap:  {manifest['bootstrapUrl']}   (try: curl '{manifest['bootstrapUrl']}/bootstrap?getCompleteHierarchy')")
        say(f"zookeeper:  {manifest['zookeeper']}")
        say(f"state dir:  {manifest['stateDir']}  (cluster.json, logs/, config/)")
        h = cluster.hierarchy()
        if h:
            say(format_hierarchy(h))
        if args.detach:
            detached = not stop()
            return stop.exit_code
        if args.demo and not stop():
            run_demo(manifest["bootstrapUrl"], stop)
        say("running; Ctrl-C stops everything")
        while not stop():
            time.sleep(0.2)
    except Interrupted:
        pass  # up() has already stopped what it had started
    finally:
        if not detached:
            with contextlib.suppress(Exception):
                say("stopping ...")
            cluster.down()
            with contextlib.suppress(Exception):
                say("stopped")
    return stop.exit_code


def run_demo(bootstrap_url: str, stop: StopRequest | None = None) -> None:
    from snooze.dev.demo import submit_demo

    try:
        submit_demo(bootstrap_url, stop=stop)
    except (OSError, ValueError, KeyError) as exc:
        print(f"demo virtual cluster failed: {exc}", file=sys.stderr)


def cmd_cluster_down(args: argparse.Namespace) -> int:
    state, source = resolve_state_dir(getattr(args, "state_dir", None))
    if source == "last started":
        print(f"snooze: stopping the cluster in {state}, the one you started last", file=sys.stderr)
    if not (state / "cluster.json").exists():
        raise CliError(f"no cluster running from {state} (no cluster.json there)")
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
    add_target_options(p, top_level=True)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cluster", help="run a complete local cluster").add_subparsers(dest="action", required=True)
    up = c.add_parser("up", formatter_class=HelpFormatter,
                      help="start ZooKeeper, bootstrap, group managers and local controllers",
                      description="Start a complete local cluster (ZooKeeper, a bootstrap, group managers, local "
                                  "controllers on libvirt's test driver), submit a demo virtual cluster, and run until "
                                  "Ctrl-C, SIGTERM or SIGHUP, which stop everything it started. ./scripts/run runs "
                                  "this command with the same options.")
    up.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                    help=f"where the cluster keeps cluster.json, config/ (mode 0600: it holds the cluster's key) and "
                         f"logs/ (default: $SNOOZE_STATE_DIR, else {DEFAULT_STATE_DIR} in the current directory)")
    up.add_argument("--detach", action="store_true",
                    help="return once the hierarchy has formed and leave the cluster running; stop it with "
                         "'snooze cluster down' (default: run in the foreground)")
    up.add_argument("--gms", type=int, default=3, help="group managers; one of them becomes the group leader")
    up.add_argument("--lcs", type=int, default=4, help="local controllers, each with its own simulated libvirt host")
    up.add_argument("--base-port", type=int, default=5000,
                    help="the bootstrap's port; the group managers and local controllers take the ports after it")
    up.add_argument("--zk-port", type=int, default=0, help="ZooKeeper's port; 0 picks a free one")
    up.add_argument("--heartbeat-interval", type=float, default=3.0, metavar="S", help="seconds between heartbeats")
    up.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="S",
                    help="seconds without a heartbeat before a peer is declared dead")
    up.add_argument("--session-timeout", type=float, default=10.0, metavar="S", help="ZooKeeper session timeout, seconds")
    up.add_argument("--monitoring-interval", type=float, default=3.0, metavar="S",
                    help="seconds between monitoring reports (and group manager summaries)")
    up.add_argument("--lc-cpus", type=int, default=8, help="vcpus of each simulated host")
    up.add_argument("--lc-memory-gib", type=int, default=16, metavar="GIB", help="memory of each simulated host, GiB")
    up.add_argument("--timeout", type=float, default=90.0, metavar="S",
                    help="give up (and stop everything) if the hierarchy has not formed by then")
    up.add_argument("--energy", action="store_true",
                    help="energy management: idle hosts are powered down and woken over IPMI, each local controller "
                         "running under a simulated BMC (default: off)")
    up.add_argument("--idle-time", type=float, default=120.0, metavar="S",
                    help="with --energy: seconds idle before a host is powered down")
    up.add_argument("--reserved-nodes", type=int, default=1, metavar="N",
                    help="with --energy: hosts per group manager always kept on")
    up.add_argument("--no-demo", dest="demo", action="store_false",
                    help="do not submit the demo virtual cluster of 3 VMs (default: submit it)")
    up.set_defaults(func=cmd_cluster_up)
    down = c.add_parser("down", help="stop every process of a local cluster")
    down.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                      help="the cluster's state dir (default: $SNOOZE_STATE_DIR, else the cluster you started last)")
    down.set_defaults(func=cmd_cluster_down)

    h = sub.add_parser("hierarchy", help="show the group leader, group managers and local controllers")
    add_target_options(h, top_level=False)
    h.add_argument("--json", action="store_true", help="print the answer as JSON")
    h.set_defaults(func=cmd_hierarchy)
    hosts = sub.add_parser("hosts", help="list local controllers")
    add_target_options(hosts, top_level=False)
    hosts.add_argument("--json", action="store_true", help="print the answer as JSON")
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
    except SnoozeClientError as exc:
        print(f"snooze: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
