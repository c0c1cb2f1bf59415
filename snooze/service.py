"""What every Snooze process is made of: HTTP server, heartbeat endpoint, ZooKeeper session,
internal RPC, and a supervisor of named, guarded background tasks.

The process's own tasks (``spawn``: the ZooKeeper supervisor, the election, join loops) are
*critical*: a crash in one is logged at once and stops the process (one orchestrator decides
when the process ends, as kopf does). Each role the process runs works through a child of the
process scope (``snooze.scope``), whose tasks are not critical: a failed request or a bad
record fails that request, never the process. Periodic loops catch and log their own
temporary errors per iteration. ``stop`` gives every task a bounded grace.

Start-up never waits for ZooKeeper: the HTTP port answers at once, ``GET /health`` says whether
the process is connected (200 ``{"status": "ok"}``) or what it waits for (503 ``{"status":
"waiting", "detail": "waiting for ZooKeeper at HOST:PORT"}``), and SIGTERM stops it whatever the
session's state. A start-up that cannot succeed (a hypervisor that cannot be opened, a port in
use, a live process with the same id) ends the process with one line naming the cause.

SIGHUP reads the config file again and takes its cluster keys (``[cluster] key``,
``accept_keys``, ``key_file``), nothing else: the keys can be rotated without a restart
(docs/deploy.md). ``/health`` and ``/metrics`` show the keys' fingerprints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import faulthandler
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from prometheus_client.core import Metric

from snooze import config as cfg
from snooze import metrics, tls
from snooze.auth.guard import Guard
from snooze.auth.tokens import TokenStore
from snooze.coordination import CoordinationError, Coordinator, once_reachable
from snooze.coordination.zk import DuplicateRegistration, describe_hosts
from snooze.events import EventLog
from snooze.heartbeat import HeartbeatEndpoint
from snooze.http import (
    GUARD,
    REQUESTS,
    HttpLimits,
    InternalEndpoint,
    VerbRouter,
    json_response,
    new_app,
    start_server,
)
from snooze.models import NetworkAddress
from snooze.protocol import Keyring
from snooze.rpc import RpcClient
from snooze.scope import Scope

log = logging.getLogger(__name__)

#: The ``status`` of a ``GET /health`` answer.
HEALTH_OK = "ok"
HEALTH_WAITING = "waiting"
#: Per role, znodes (under the cluster's root) besides its registration that may name a twin.
TWIN_PATHS = {"groupmanager": ("leader",)}
#: The shipped ``[cluster] key``: fine on one machine, never in production.
INSECURE_KEY = cfg.ClusterSettings().key


class StartupError(Exception):
    """The process cannot start; the message is one line naming the option or the cause."""


class Service:
    role = "service"
    #: Whether users' tokens may call this role's public HTTP (snooze.auth): only the
    #: bootstrap's; group managers' and local controllers' own verbs are for admins.
    serves_users = False

    def __init__(self, settings: cfg.Settings) -> None:
        self.settings = settings
        self.id = settings.node_id(self.role)
        self.hostname = settings.hostname()
        self.address = NetworkAddress(settings.advertise_address(), settings.node.port)
        #: The keys this process signs with and accepts, shared by the internal endpoint, the
        #: heartbeat endpoint and the RPC client: ``reload`` (SIGHUP) changes them in all three.
        self.keys = Keyring(settings.cluster.key.encode(), (k.encode() for k in settings.cluster.accept_keys))
        #: What ``reload`` reads again: the config file and the overrides given with it (main_for).
        self.config_file: str | None = None
        self.config_overrides: dict[str, Any] = {}
        #: With ``[node] tls_cert`` (loaded by ``start``): what the listeners serve with, and what
        #: peers' certificates are checked with (then they are called over https).
        self.server_tls: ssl.SSLContext | None = None
        self.client_tls: ssl.SSLContext | None = None
        self.known_epoch = 0
        self.app = new_app()
        self.routes = VerbRouter(self.app)
        window = settings.cluster.replay_window
        self.internal = InternalEndpoint(self.app, self.keys, self.id, lambda: self.known_epoch, window=window)
        self.heartbeat = HeartbeatEndpoint(
            self.keys, self.id, multicast_group=settings.heartbeat.multicast_group, ttl=settings.heartbeat.multicast_ttl,
            multicast_interface=settings.heartbeat.multicast_interface or self.address.address, window=window,
        )
        self.coord: Coordinator | None = None
        self.events: EventLog | None = None
        self.rpc = RpcClient(self.keys, self.id)
        #: Everything this process registered and started; each role gets a child of it.
        self.scope = Scope(
            self.role, node_id=self.id, address=self.address, settings=settings, rpc=self.rpc,
            internal=self.internal, heartbeat=self.heartbeat, coordinator=lambda: self.coord,
            epoch=lambda: self.known_epoch, on_critical=self._critical_failed,
        )
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.exit_code = 0
        #: Why the process stopped when it could not run (one line, printed by main_for).
        self.fatal: str | None = None
        #: The public API's gate (snooze.auth.guard): tokens checked from ZooKeeper once started.
        self.guard = Guard(None, enabled=settings.auth.enabled, audit_file=settings.auth.audit_log, users=self.serves_users)
        self.routes.add(self.role, "ping", self._ping)
        self.app.router.add_get("/health", self._health)
        self.metrics_registry = metrics.new_registry(self.metric_families)
        self.app.router.add_get("/metrics", self._metrics)
        self.routes.add(self.role, "getStatistics", self._statistics)

    # -- epochs --------------------------------------------------------------------------
    def see_epoch(self, epoch: int) -> bool:
        """Record an epoch seen from a leader; False if it is older than one already seen."""
        if epoch < self.known_epoch:
            return False
        self.known_epoch = epoch
        return True

    # -- tasks ---------------------------------------------------------------------------
    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run a critical task of the process: if it crashes, the process stops."""
        return self.scope.spawn(name, coro, critical=True)

    def cancel(self, name: str) -> None:
        self.scope.cancel(name)

    def _critical_failed(self, name: str, exc: BaseException) -> None:
        log.error("task %s crashed; stopping", name, exc_info=exc)
        self.exit_code = 1
        self._stop.set()

    def every(self, name: str, interval: Callable[[], float], fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` periodically; its errors are logged and the loop goes on."""
        self.scope.every(name, interval, fn)

    def keep_registered(self, folder: str, value: Callable[[], Any]) -> None:
        """(Re)write this process's ephemeral znode ``folder/<id>`` once ZooKeeper is connected,
        retrying until it takes it; the coordinator re-creates it after any new session. If a
        live process of the same id holds it, this process stops with exit code 2."""

        async def register() -> None:
            assert self.coord is not None
            path = self.coord.path(folder, self.id)
            while True:
                await self.coord.wait_connected()
                try:
                    await self._check_twins()
                    await self.coord.register(path, value(), owner_check=self._check_owner)
                    return
                except DuplicateRegistration as exc:
                    self.fatal = str(exc)
                    self.exit_code = 2
                    self._stop.set()
                    return
                except CoordinationError as exc:
                    log.info("cannot register in %s yet: %s", folder, exc)
                    await asyncio.sleep(0.5)

        self.spawn("register", register())

    async def _check_twins(self) -> None:
        """DuplicateRegistration if a znode other than our registration names a live process
        with our id: the leader znode, for a group manager (a leading twin has no registration
        of its own in groupmanagers/)."""
        assert self.coord is not None
        for name in TWIN_PATHS.get(self.role, ()):
            path = self.coord.path(name)
            found = await self.coord.get_json(path)
            if isinstance(found, dict) and found.get("id") == self.id:
                await self._check_owner(path, json.dumps(found).encode())

    async def _check_owner(self, path: str, found: bytes) -> None:
        """Our registration is held by another session: DuplicateRegistration if that is a live
        process with our id (it answers /health as such), else it is a previous run's."""
        other = _registered_address(found)
        if other is None or (other.address, other.port) == (self.address.address, self.address.port):
            # Nobody else can listen on our own address and port: that was this process's
            # previous run, whose session has not expired yet.
            return
        answer = await _health_of(other, self.client_tls)
        if isinstance(answer, dict) and answer.get("id") == self.id:
            raise DuplicateRegistration(
                f"refusing to start: id {self.id} is already used by a live {answer.get('role', 'process')} at "
                f"{other.address}:{other.port} (registered at {path}); give each process its own [node] id"
            )
        log.info("taking over %s from a previous session (%s:%d does not answer as %s)", path, other.address, other.port, self.id)

    # -- health --------------------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``GET /health``: 200 when the ZooKeeper session is CONNECTED,
        503 with what the process waits for otherwise."""
        s = self.settings.cluster
        # The keys' fingerprints (never the keys): what a key rotation waits to see everywhere.
        body: dict[str, Any] = {"role": self.role, "id": self.id, "keys": self.keys.describe()}
        coord = self.coord
        if coord is not None and coord.connected:
            return 200, {"status": HEALTH_OK, **body, "zookeeper": coord.state.value}
        if coord is not None:
            detail = coord.waiting_detail or ""
            state = coord.state.value
        elif not s.zookeeper and s.discovery == "zeroconf":
            detail, state = f"discovering ZooKeeper with zeroconf (cluster {s.name})", "DISCOVERING"
        else:
            detail, state = f"waiting for ZooKeeper at {describe_hosts(s.zookeeper)}", "CONNECTING"
        return 503, {"status": HEALTH_WAITING, **body, "zookeeper": state, "detail": detail}

    async def _health(self, _request: web.Request) -> web.Response:
        status, body = self.health()
        return json_response(body, status)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.cluster.key == INSECURE_KEY:
            log.warning("[cluster] key is the shipped insecure development key: anyone can sign messages to this "
                        "cluster. Set [cluster] key (or the SNOOZE_CLUSTER_KEY environment variable) to a secret of your own")
        log.info("%s %s starting: listening on %s port %d, advertised to peers as %s", self.role, self.id,
                 s.node.listen_address, s.node.port, self.address.address)
        self.guard.install(self.app)  # first of the middlewares, before the app is frozen
        if s.node.tls_cert:
            try:
                self.server_tls = tls.server_context(s.node.tls_cert, s.node.tls_key)
                self.client_tls = tls.client_context(s.node.tls_ca)
            except tls.TlsError as exc:
                raise StartupError(str(exc)) from exc
            self.rpc.tls = self.client_tls  # before any call: its connections are made on first use
        try:
            self._runner = await start_server(self.app, s.node.listen_address, s.node.port, HttpLimits.from_settings(s.node),
                                              self.server_tls)
            await self.heartbeat.start(s.node.listen_address, s.node.port)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                raise
            raise StartupError(
                f"[node] listen_address = {s.node.listen_address!r}, [node] port = {s.node.port}: cannot listen there: "
                f"{os.strerror(exc.errno)}"
            ) from exc
        zk = s.cluster.zookeeper
        if not zk and s.cluster.discovery == "zeroconf":
            from snooze.discovery import discover_zookeeper, zeroconf_interfaces

            # Until found (a group manager may start later), or SIGTERM.
            zk = await discover_zookeeper(s.cluster.name, zeroconf_interfaces(s), stop=self._stop)
        self.coord = Coordinator(zk, s.cluster.zk_root, s.cluster.session_timeout)
        await self.coord.start()
        # Restarts kazoo if its connection thread dies; when that keeps failing it crashes, and
        # so the process stops with code 1 instead of living on without ZooKeeper.
        self.spawn("zookeeper", self.coord.supervise())
        # The cluster's event stream (snooze.events): written in batches, never waited for.
        self.events = EventLog(self.coord, self.id, lambda: self.known_epoch)
        self.scope.attach_events(self.events)
        self.scope.spawn("events", self.events.run())
        if s.auth.enabled:
            self.guard.store = TokenStore(self.coord)
            # Watched once ZooKeeper answers: until then a call with a token is answered 503, not 401.
            self.scope.spawn("auth.tokens", once_reachable(self.guard.store.watch, "the API tokens"))
        await self.on_start()
        log.info("%s %s started; peers reach it at %s; ZooKeeper at %s", self.role, self.id,
                 self.address.base_url(tls=self.server_tls is not None), self.coord.where)

    async def on_start(self) -> None:
        """Role-specific start-up."""

    async def on_stop(self) -> None:
        """Role-specific shut-down (runs before the session and the sockets close)."""

    async def stop(self) -> None:
        # Without ZooKeeper, what a role does on its way out (unregistering, handing over) cannot
        # reach it anyway: a short grace, so that SIGTERM stops the process within seconds.
        connected = self.coord is None or self.coord.connected
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.on_stop(), 2 * self.scope.grace if connected else 1.0)
        if self.events is not None and connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.events.flush(), 1.0)  # what happened on the way out
        # Every task and role scope left, with a bounded grace: a hung task cannot hang the stop.
        await self.scope.close()
        if self.coord is not None:
            await self.coord.stop()
        self.heartbeat.close()
        await self.rpc.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._stop.set)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            # SIGTERM while a start-up step still waits (a hypervisor, a discovery) ends it.
            starting = asyncio.ensure_future(self.start())
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("stopped while starting")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.stop(), 10)
                return self.exit_code
            starting.result()
        except (CoordinationError, StartupError, OSError, cfg.ConfigError) as exc:
            # One line for the operator (main_for prints it); the rest of the story at debug level.
            log.debug("start-up failed", exc_info=exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.stop(), 10)
            if self._stop.is_set() and self.exit_code == 0:  # SIGTERM while starting: a normal stop
                log.info("stopped while starting (%s)", _one_line(exc))
                return 0
            raise StartupError(str(exc) if isinstance(exc, StartupError) else _one_line(exc)) from exc
        await self._stop.wait()
        await self.stop()
        return self.exit_code

    def request_stop(self) -> None:
        self._stop.set()

    # -- reload (SIGHUP) -----------------------------------------------------------------
    def reload(self) -> bool:
        """Read the config file again (with the same overrides) and take its ``[cluster] key``
        and ``accept_keys``, nothing else: a key rotation without a restart (docs/deploy.md).
        What changed is logged by fingerprint, never a key; a config that cannot be read or is
        invalid is logged and the keys stay as they were. True if the new keys were taken."""
        if self.config_file is None:
            log.warning("SIGHUP: this process was started without --config: nothing to read again; keys unchanged")
            return False
        try:
            fresh = cfg.load(self.config_file, self.role, self.config_overrides)
        except cfg.ConfigError as exc:
            log.error("SIGHUP: %s: configuration error: %s; the cluster keys stay as they were", self.config_file, exc)
            return False
        new = fresh.cluster
        changes = self.keys.replace(new.key.encode(), (k.encode() for k in new.accept_keys))
        running = self.settings.cluster
        running.key, running.accept_keys, running.key_file = new.key, list(new.accept_keys), new.key_file
        if "cluster.key" in self.config_overrides and not new.key_file:
            log.warning("SIGHUP: [cluster] key is set by SNOOZE_CLUSTER_KEY or --set, which a reload cannot change "
                        "(use [cluster] key_file to rotate keys without a restart)")
        ignored = [name for name in _changed_options(self.settings, fresh, self.role)
                   if name not in ("cluster.key", "cluster.accept_keys", "cluster.key_file")]
        if ignored:
            log.warning("SIGHUP: %s changed in %s: only the cluster keys are taken without a restart",
                        ", ".join(ignored), self.config_file)
        keys = self.keys.describe()
        log.info("SIGHUP: cluster keys %s: signing with %s, accepting %s", "; ".join(changes) if changes else "unchanged",
                 keys["signing"], ", ".join(keys["accepted"]))
        return True

    # -- metrics -------------------------------------------------------------------------
    def metric_families(self) -> Iterable[Metric]:
        """What every role reports on ``/metrics`` (snooze.metrics), then ``role_metric_families``."""
        state = self.coord.state.value if self.coord is not None else "NONE"
        yield metrics.info("snooze", "This process's role and id.", {"role": self.role, "id": self.id})
        yield metrics.gauge("snooze_zookeeper_connected", "1 while the ZooKeeper session is connected.",
                            1.0 if self.coord is not None and self.coord.connected else 0.0)
        yield metrics.gauge("snooze_zookeeper_state", "The ZooKeeper session's state (1 for the current one).",
                            {(state,): 1.0}, ("state",))
        yield metrics.gauge("snooze_leader_epoch", "The newest group leader epoch this process has seen.", self.known_epoch)
        keys = self.keys.describe()
        yield metrics.gauge("snooze_cluster_keys", "The cluster keys this process holds, by fingerprint (first 8 hex "
                            "digits of the key's SHA-256) and use: signing (also accepted), or accepted only.",
                            {(fp, "signing" if fp == keys["signing"] else "accepted"): 1.0 for fp in keys["accepted"]},
                            ("fingerprint", "use"))
        yield metrics.counter("snooze_heartbeats_sent", "Heartbeat datagrams sent, by kind (one per receiver).",
                              {(k,): v for k, v in self.heartbeat.sent.items()}, ("kind",))
        yield metrics.counter("snooze_heartbeats_received", "Heartbeat datagrams received and accepted, by kind.",
                              {(k,): v for k, v in self.heartbeat.received.items()}, ("kind",))
        yield metrics.counter("snooze_heartbeats_dropped", "Heartbeat datagrams dropped, by reason (bad signature, replay, out of order…).",
                              {(k,): v for k, v in self.heartbeat.dropped.items()}, ("reason",))
        yield metrics.counter("snooze_internal_rejected", "Internal messages refused, by reason.",
                              {(k,): v for k, v in self.internal.rejected.items()}, ("reason",))
        yield metrics.counter("snooze_task_failures", "Failures of this process's background tasks.", self.scope.failures)
        yield metrics.counter("snooze_http_requests", "HTTP requests answered, by route, verb, method and status.",
                              {k: float(v) for k, v in self.app[REQUESTS].items()}, ("path", "verb", "method", "status"))
        yield metrics.counter("snooze_auth_refused", "Public API calls refused by authentication, by reason (missing, "
                              "invalid, forbidden).", {(k,): float(v) for k, v in self.guard.refused.items()}, ("reason",))
        guard = self.app.get(GUARD)
        if guard is not None:
            yield metrics.counter("snooze_http_connections_closed", "HTTP connections closed early, by reason.",
                                  {(k,): v for k, v in guard.closed.items()}, ("reason",))
        yield from self.role_metric_families()

    def role_metric_families(self) -> Iterable[Metric]:
        """A role's own metrics (read at scrape time from its state)."""
        return ()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = metrics.render(self.metrics_registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    # -- common endpoints ----------------------------------------------------------------
    async def _ping(self, request: web.Request) -> Any:
        return {"id": self.id, "role": self.role, "epoch": self.known_epoch}

    async def _statistics(self, request: web.Request) -> Any:
        proc = psutil.Process(os.getpid())
        return {
            "id": self.id,
            "role": self.role,
            "rssBytes": proc.memory_info().rss,
            "cpuSeconds": sum(proc.cpu_times()[:2]),
            "heartbeatsDropped": dict(self.heartbeat.dropped),
            "heartbeatsReceived": dict(self.heartbeat.received),
            "internalRejected": dict(self.internal.rejected),
            "taskFailures": self.scope.failures,
            "zookeeper": self.coord.state.value if self.coord else None,
        }


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return " ".join(str(exc).split()) or type(exc).__name__


def _registered_address(found: bytes) -> NetworkAddress | None:
    """The control address in a registration's value (a bootstrap's or a local controller's
    ``controlDataAddress``, a group manager's ``listenSettings``), or None."""
    try:
        value = json.loads(found)
        where: Any = value.get("controlDataAddress") or (value.get("listenSettings") or {}).get("controlDataAddress")
        return NetworkAddress.from_json(where)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _changed_options(running: cfg.Settings, fresh: cfg.Settings, role: str) -> list[str]:
    """``SECTION.OPTION`` of every option of ``role`` whose value differs between the two."""
    out: list[str] = []
    for section in cfg.ROLE_SECTIONS[role]:
        before, after = getattr(running, section), getattr(fresh, section)
        out += [f"{section}.{f.name}" for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)]
    return out


async def _health_of(address: NetworkAddress, client_tls: ssl.SSLContext | None = None, timeout: float = 3.0) -> Any:
    """Another process's ``GET /health`` answer (200 or 503), or None if it does not answer;
    over https, checked with ``client_tls``, when the cluster runs TLS."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(address.base_url(tls=client_tls is not None) + "/health",
                                   ssl=client_tls if client_tls is not None else True) as resp:
                return await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def main_for(role: str, factory: Callable[[cfg.Settings], Service], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"snooze-{role}", description=f"Run a Snooze {role}.")
    parser.add_argument("--config", help="TOML configuration file (see configs/)")
    parser.add_argument("--id", help="override [node] id")
    parser.add_argument("--port", type=int, help="override [node] port")
    parser.add_argument("--zookeeper", help="override [cluster] zookeeper")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override one option (value parsed as TOML, else taken as a string); repeatable")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--print-example-config", action="store_true", help="print every option with its default and exit")
    args = parser.parse_args(argv)
    if args.print_example_config:
        print(cfg.example_config(role))
        return 0
    # A crash inside a C extension (libvirt, a kazoo or msgpack bug) leaves the Python stacks in
    # the role's log (its stderr) instead of a process gone without a word.
    faulthandler.enable()
    overrides: dict[str, Any] = {}
    if args.id:
        overrides["node.id"] = args.id
    if args.port:
        overrides["node.port"] = args.port
    if args.zookeeper:
        overrides["cluster.zookeeper"] = args.zookeeper
    if os.environ.get("SNOOZE_CLUSTER_KEY"):
        # The shared secret is better kept out of config files and command lines.
        overrides["cluster.key"] = os.environ["SNOOZE_CLUSTER_KEY"]
    for item in args.set:
        try:
            key, value = cfg.parse_override(item)
        except cfg.ConfigError as exc:
            print(f"snooze-{role}: {exc}", file=sys.stderr)
            return 2
        overrides[key] = value
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    try:
        settings = cfg.load(args.config, role, overrides)
    except cfg.ConfigError as exc:
        print(f"snooze-{role}: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        service = factory(settings)
    except (cfg.ConfigError, ValueError) as exc:
        print(f"snooze-{role}: configuration error: {exc}", file=sys.stderr)
        return 2
    service.config_file, service.config_overrides = args.config, overrides  # what SIGHUP reads again
    try:
        code = asyncio.run(service.run())
    except StartupError as exc:
        print(f"snooze-{role}: cannot start: {exc}", file=sys.stderr)
        return 1
    except (OSError, cfg.ConfigError) as exc:  # ConfigError: e.g. multicast with no interface
        print(f"snooze-{role}: {exc}", file=sys.stderr)
        return 1
    if service.fatal:
        print(f"snooze-{role}: {service.fatal}", file=sys.stderr)
    return code
