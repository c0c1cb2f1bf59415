"""``snooze cluster up``, ``down`` and ``rotate-key``: run a complete local cluster, stop it, and
replace its HMAC key while it runs (``snooze.dev.keyrotation``).

The cluster itself is development tooling (``snooze.dev.localcluster``), imported only when
one of these commands runs: the rest of the ``snooze`` command, like all runtime code,
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
import ssl
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

    lcs = args.lcs if args.lcs is not None else (2 if args.hypervisor == "qemu" else 4)
    return localcluster.ClusterOptions(
        gms=args.gms, lcs=lcs, base_port=args.base_port, zk_port=args.zk_port,
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        session_timeout=args.session_timeout, monitoring_interval=args.monitoring_interval,
        lc_cpus=args.lc_cpus, lc_memory_gib=args.lc_memory_gib,
        energy=args.energy, idle_time=args.idle_time, reserved_nodes=args.reserved_nodes,
        netns=args.netns or args.hypervisor == "qemu" or bool(args.vif), multicast=args.multicast, ec2=args.ec2, extra=_overrides(args.set),
        hypervisor=args.hypervisor, lcs_per_process=args.lcs_per_process, zookeeper_ensemble=args.zookeeper_ensemble,
        cni=args.cni, vif=args.vif, auth=args.auth, events=args.events, tls=args.tls,
    )


#: What the local cluster sets for each process itself; --set may not change it.
OWN_OPTIONS = ("node.id", "node.port", "node.listen_address", "node.advertise_address", "cluster.key",
               "cluster.accept_keys", "cluster.key_file", "cluster.zookeeper", "node.tls_cert", "node.tls_key",
               "node.tls_ca")


def _overrides(items: list[str]) -> dict[str, Any]:
    """``--set SECTION.OPTION=VALUE`` items, each checked as a role's config would check it."""
    from snooze import config as cfg

    out: dict[str, Any] = {}
    for item in items:
        try:
            key, value = cfg.parse_override(item)
            if key in OWN_OPTIONS:
                raise cfg.ConfigError(f"--set {key}: the local cluster sets it for each process")
            section, option = key.split(".", 1)
            cfg.from_dict({section: {option: value}})  # unknown names, wrong types, bad values
        except cfg.ConfigError as exc:
            raise CliError(f"configuration error: {exc}") from exc
        out[key] = value
    return out


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

    options = _options(args)
    if options.lcs < 0 or args.gms < 1 or (options.lcs and args.gms < 2):
        raise CliError("need --gms >= 2 when there are local controllers: one group manager becomes the leader, which manages none")
    qemu = options.hypervisor == "qemu"
    cluster = localcluster.LocalCluster(new_cluster_state_dir(getattr(args, "state_dir", None)), options)
    # Stale record, ports: all checked before anything starts (and before saying it starts).
    if cluster.prepare():
        say(f"cleaned up a stale cluster record in {cluster.state_dir} (its processes were gone)")
    if stop():
        return stop.exit_code
    zookeeper = f"a ZooKeeper ensemble of {options.zookeeper_ensemble}" if options.zookeeper_ensemble > 1 else "ZooKeeper"
    per_process = (f" ({options.lcs_per_process} per process, {-(-options.lcs // options.lcs_per_process)} processes)"
                   if options.lcs_per_process > 1 and options.lcs else "")
    say(f"starting {zookeeper}, 1 bootstrap, {args.gms} group managers, {options.lcs} local controllers{per_process}"
        + (" on private libvirtd + QEMU hosts, and uploading the guest image snooze-tiny (built when missing)" if qemu else "")
        + " ...")
    detached = False
    t0 = time.monotonic()
    try:
        manifest = cluster.up(wait=True, timeout=args.timeout, stop=stop)
        try:
            record_last_cluster(cluster.state_dir)
        except OSError as exc:  # the cluster runs; only guessing it later will not work
            print(f"snooze: cannot record this as the cluster you started last: {exc}", file=sys.stderr)
        say(f"hierarchy formed in {time.monotonic() - t0:.1f}s")
        curl = f"curl --cacert {manifest['caCert']}" if manifest.get("caCert") else "curl"
        say(f"bootstrap:  {manifest['bootstrapUrl']}   (try: {curl} '{manifest['bootstrapUrl']}/bootstrap?getCompleteHierarchy')")
        say(f"dashboard:  {manifest['bootstrapUrl']}/ui/" + ("   (give it the adminToken of cluster.json)" if manifest.get("adminToken") else ""))
        if manifest.get("ec2"):
            e = manifest["ec2"]
            say(f"ec2 API:    {e['url']}  region {e['region']}, access key {e['accessKey']} (its secret: cluster.json)")
        say(f"zookeeper:  {manifest['zookeeper']}" + (f"  (namespace {manifest['zookeeperNetns']})" if options.netns else ""))
        if qemu:
            say(f"images:     {manifest['images']}/images   (snooze images list; guests boot snooze-tiny under TCG)")
            for spec in manifest["processes"]:
                if spec["role"] == "localcontroller":
                    say(f"host {spec['id']}: namespace {spec['netns']}, libvirt {spec['hypervisorUri']}")
            say(f"            a guest answers its name: ip netns exec NETNS curl http://ADDRESS/   "
                f"(bridge br-vm, gateway {cluster.vm_gateway}); serial console: snooze console VM")
        if options.netns:
            fabric = manifest["fabric"]
            say(f"fabric:     namespace {fabric['netns']}, subnet {fabric['subnet']}, bridge address {fabric['address']}"
                + (f", multicast heartbeats on {manifest['multicastGroup']}" if manifest.get("multicastGroup") else ""))
            say(f"            cut a process off: ip -n {fabric['netns']} link set INTERFACE down "
                f"(INTERFACE: cluster.json fabric.links, e.g. {next(iter(fabric['links'].values()))})")
        say(f"events:     {manifest['bootstrapUrl']}/events   (server-sent events; curl -N)"
            + (f", and RabbitMQ {manifest['rabbitmq']['url']} exchange snooze" if manifest.get("rabbitmq") else ""))
        if manifest.get("adminToken"):
            say("auth:       the API needs a token; cluster.json's adminToken is an admin's, which the snooze command uses")
        if manifest.get("caCert"):
            say(f"tls:        https only; certificates signed by {manifest['caCert']} (cluster.json caCert, which the "
                "snooze command checks them with)")
        say(f"state dir:  {manifest['stateDir']}  (cluster.json, logs/, config/)")
        h = cluster.hierarchy(timeout=30.0)
        if h:
            say(format_hierarchy(h) if options.lcs <= TREE_MAX_LCS else format_hierarchy_summary(h))
        if args.detach:
            detached = not stop()
            return stop.exit_code
        if args.demo and not stop():
            if qemu:
                run_guest_demo(cluster, stop)
            else:
                run_demo(manifest["bootstrapUrl"], stop, cluster.admin_token, cluster.client_tls())
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


#: Above this many local controllers ``up`` prints one line per group manager, not the whole tree.
TREE_MAX_LCS = 64


def format_hierarchy_summary(h: dict[str, Any]) -> str:
    """The leader and each group manager with how many local controllers it holds."""
    gl = h.get("groupLeaderDescription") or {}
    gms = h.get("groupManagerDescriptions", [])
    counts = [len(gm.get("localControllers") or []) for gm in gms]
    lines = [f"group leader {gl.get('id')}  epoch {gl.get('epoch')};  {len(gms)} group managers hold {sum(counts)} local "
             f"controllers ({min(counts, default=0)} to {max(counts, default=0)} each; snooze hierarchy prints the tree)"]
    lines += [f"  {gm.get('id')}: {n}" for gm, n in zip(gms, counts, strict=True)]
    return "\n".join(lines)


def run_demo(bootstrap_url: str, stop: StopRequest | None = None, token: str | None = None,
             context: ssl.SSLContext | None = None) -> None:
    from snooze.dev import demo

    try:
        demo.submit_demo(bootstrap_url, stop=stop, token=token, context=context)
    except (OSError, ValueError, KeyError) as exc:
        print(f"demo virtual cluster failed: {exc}", file=sys.stderr)


def run_guest_demo(cluster: Any, stop: StopRequest | None = None) -> None:
    """Two guests from snooze-tiny; once each answers over HTTP, where and how to reach it."""
    from snooze.dev import localcluster

    say("starting 2 guests from snooze-tiny ...")
    try:
        namespaces = cluster.guest_namespaces()
        guests = localcluster.start_guests(cluster.bootstrap_url, 2, namespaces=namespaces, prefix="demo", stop=stop,
                                           token=cluster.admin_token)
    except (OSError, ValueError, KeyError, localcluster.ClusterError) as exc:
        print(f"demo guests failed: {exc}", file=sys.stderr)
        return
    for guest in guests:
        where = cluster.process(guest["localControllerId"])
        say(f"  {guest['id']:<16} {guest['status']:<8} {guest['ipAddress'] or '-':<16} on {guest['localControllerId']}"
            + (f"  answered {guest['answer'].strip()!r} {guest['seconds']:.1f}s after submission" if guest.get("answer")
               else "  (no answer yet)"))
        ns = namespaces.get(guest["localControllerId"]) or where["netns"]
        say(f"      ip netns exec {ns} curl http://{guest['ipAddress']}/    snooze console {guest['id']}")


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


def cmd_cluster_rotate_key(args: argparse.Namespace) -> int:
    from snooze.dev import keyrotation

    state, source = resolve_state_dir(getattr(args, "state_dir", None))
    if source == "last started":
        print(f"snooze: rotating the key of the cluster in {state}, the one you started last", file=sys.stderr)
    if not (state / "cluster.json").exists():
        raise CliError(f"no cluster running from {state} (no cluster.json there)", NO_CLUSTER)
    try:
        keyrotation.rotate_key(state, timeout=args.timeout, say=say)
    except keyrotation.RotationError as exc:
        raise CliError(str(exc)) from exc
    say("the cluster signs and accepts the new key only (its config files hold it)")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cluster up``, ``cluster down`` and ``cluster rotate-key`` to the ``snooze`` command's subparsers."""
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
    up.add_argument("--lcs", type=int, default=None,
                    help="local controllers, each with its own simulated libvirt host (default: 4; 2 with --hypervisor qemu)")
    up.add_argument("--lcs-per-process", type=int, default=1, metavar="N",
                    help="run the local controllers N to a process (python -m localcontroller.many), each still a whole "
                         "local controller with its own id, port, libvirt test host, ZooKeeper session and heartbeats: "
                         "for clusters of thousands of simulated hosts, e.g. 2000 of them 250 to a process with 41 group "
                         "managers (default: 1, a process each)")
    up.add_argument("--zookeeper-ensemble", type=int, default=1, metavar="N",
                    help="run ZooKeeper as a replicated ensemble of N servers (odd: 3, 5) on 127.0.0.1, each role "
                         "given the full connection string; cluster.json lists them as zookeeperServers "
                         "(default: 1, one standalone server)")
    up.add_argument("--hypervisor", choices=("test", "qemu"), default="test",
                    help="test: libvirt's test driver, nothing runs (fast); qemu: every local controller on its own "
                         "private libvirtd + QEMU host in its own network namespace (implies --netns; needs root, libvirtd "
                         "and QEMU), with the image repository holding the tiny guest image, and guests that boot "
                         "under TCG and answer their name over HTTP")
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
    up.add_argument("--netns", action="store_true",
                    help="run every process (ZooKeeper too) in its own network namespace, joined by a bridge in a "
                         "fabric namespace on a private 10.213.N.0/24 subnet that exists only inside them; the "
                         "bootstrap stays reachable at 127.0.0.1:BASE_PORT through a forwarder (needs root; "
                         "default: every process on 127.0.0.1)")
    up.add_argument("--multicast", action="store_true",
                    help="with --netns: heartbeats also go to a multicast group on the fabric (default: unicast only)")
    up.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                    help="pass an option to every role that has its section, as the roles' own --set does "
                         "(repeatable), e.g. --set groupmanager.virtual_machine_subnet=10.64.0.0/16")
    up.add_argument("--no-ec2", dest="ec2", action="store_false",
                    help="do not serve the EC2-compatible API (default: on the port after the last local controller's, "
                         "with a demo key pair in cluster.json; never with --netns)")
    up.add_argument("--auth", action="store_true",
                    help="require a token on the public API, as a deployment does (docs/auth.md): an admin token is "
                         "made and written into cluster.json as adminToken, which the snooze command then uses "
                         "(default: off, anyone who reaches the bootstrap may do anything)")
    up.add_argument("--events", choices=["rabbitmq"], default="",
                    help="also publish the event stream to a private RabbitMQ broker started with the cluster "
                         "(docs/events.md; its URL in cluster.json as rabbitmq.url; not with --netns) "
                         "(default: the bootstrap's /events only)")
    up.add_argument("--no-cni", dest="cni", action="store_false",
                    help="do not serve a CNI agent on each local controller (default: served, its URL and a ready "
                         "snooze-cni network configuration list in cluster.json as cniAgent and cniConfig; "
                         "never with --lcs-per-process above 1)")
    up.add_argument("--vif", choices=["linux_bridge", "ovs"], default="",
                    help="plug every VM's network card with this VIF plugin (docs/networking.md) before "
                         "libvirt starts it; with ovs each host runs its own Open vSwitch (userspace datapath) in its "
                         "namespace, its OVSDB socket in cluster.json as ovsdb; implies --netns (default: none, a "
                         "domain's interface is its template's)")
    up.add_argument("--tls", action="store_true",
                    help="serve every HTTP listener over https with a certificate for 127.0.0.1 signed by an authority "
                         "made for this cluster (in the state dir's tls/; the bootstrap's URL in cluster.json is https "
                         "and the authority's certificate its caCert, which the snooze command checks it with); the "
                         "processes call each other over https too (not with --netns) (default: plain http)")
    up.add_argument("--no-demo", dest="demo", action="store_false",
                    help="do not submit the demo virtual cluster of 3 VMs (default: submit it)")
    up.set_defaults(func=reports_errors(cmd_cluster_up))
    down = c.add_parser("down", help="stop every process of a local cluster")
    down.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                      help="the cluster's state dir (default: $SNOOZE_STATE_DIR, else the cluster you started last)")
    down.set_defaults(func=reports_errors(cmd_cluster_down))
    rotate = c.add_parser("rotate-key", formatter_class=HelpFormatter,
                          help="replace a running local cluster's HMAC key, without a restart",
                          description="Replace the key of a running local cluster in three phases, each written into "
                                      "every process's config and taken on SIGHUP, the next one started once every "
                                      "process shows it on GET /health (the keys' fingerprints): every process accepts "
                                      "the new key; every process signs with it; every process forgets the old one. "
                                      "No message is refused on the way (docs/deploy.md).")
    rotate.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="the cluster's state dir (default: $SNOOZE_STATE_DIR, else the cluster you started last)")
    rotate.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="give up a phase if a process has not confirmed it by then (the cluster keeps working)")
    rotate.set_defaults(func=reports_errors(cmd_cluster_rotate_key))
