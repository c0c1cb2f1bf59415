"""``snooze cluster up`` and ``snooze cluster down``: run a complete local cluster, and stop it.

The cluster itself is development tooling (``snooze.dev.localcluster``), imported only when
one of these two commands runs: the rest of the ``snooze`` command, like all runtime code,
never loads ``snooze.dev`` (an import-linter contract names this module as the one exception).
The state dir is chosen by the command's one rule (``snooze.cli.target``).

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
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from snooze.cli.errors import CliError, reports_errors
from snooze.cli.hierarchy import format_hierarchy
from snooze.cli.output import HelpFormatter
from snooze.cli.target import (
    DEFAULT_STATE_DIR,
    NO_CLUSTER,
    new_cluster_state_dir,
    record_last_cluster,
    resolve_state_dir,
)

if TYPE_CHECKING:
    from snooze.dev.localcluster import ClusterOptions

__all__ = ["StopRequest", "SurvivingOutput", "register"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _options(args: argparse.Namespace) -> ClusterOptions:
    from snooze.dev import localcluster

    return localcluster.ClusterOptions(
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
    from snooze.dev import localcluster

    try:
        return _run_cluster(args, stop)
    except localcluster.ClusterError as exc:
        raise CliError(str(exc)) from exc


def _run_cluster(args: argparse.Namespace, stop: StopRequest) -> int:
    from snooze.dev import localcluster

    if args.lcs < 0 or args.gms < 1 or (args.lcs and args.gms < 2):
        raise CliError("need --gms >= 2 when there are local controllers: one group manager becomes the leader, which manages none")
    cluster = localcluster.LocalCluster(new_cluster_state_dir(getattr(args, "state_dir", None)), _options(args))
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
    except localcluster.Interrupted:
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
    from snooze.dev import demo

    try:
        demo.submit_demo(bootstrap_url, stop=stop)
    except (OSError, ValueError, KeyError) as exc:
        print(f"demo virtual cluster failed: {exc}", file=sys.stderr)


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from snooze.dev import localcluster

    state, source = resolve_state_dir(getattr(args, "state_dir", None))
    if source == "last started":
        print(f"snooze: stopping the cluster in {state}, the one you started last", file=sys.stderr)
    if not (state / "cluster.json").exists():
        raise CliError(f"no cluster running from {state} (no cluster.json there)", NO_CLUSTER)
    n = localcluster.stop_manifest(state)
    print(f"stopped {n} processes")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cluster up`` and ``cluster down`` to the ``snooze`` command's subparsers."""
    c = subparsers.add_parser("cluster", help="run a complete local cluster").add_subparsers(dest="action", required=True)
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
    up.set_defaults(func=reports_errors(cmd_cluster_up))
    down = c.add_parser("down", help="stop every process of a local cluster")
    down.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                      help="the cluster's state dir (default: $SNOOZE_STATE_DIR, else the cluster you started last)")
    down.set_defaults(func=reports_errors(cmd_cluster_down))
