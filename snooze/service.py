"""What every Snooze process is made of: HTTP server, heartbeat endpoint, ZooKeeper session,
internal RPC, and a supervisor of named, guarded background tasks.

The process's own tasks (``spawn``: the ZooKeeper supervisor, the election, join loops) are
*critical*: a crash in one is logged at once and stops the process (one orchestrator decides
when the process ends, as kopf does). Each role the process runs works through a child of the
process scope (``snooze.scope``), whose tasks are not critical: a failed request or a bad
record fails that request, never the process. Periodic loops catch and log their own
temporary errors per iteration. ``stop`` gives every task a bounded grace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import psutil
from aiohttp import web

from snooze import config as cfg
from snooze.coordination import CoordinationError, Coordinator
from snooze.heartbeat import HeartbeatEndpoint
from snooze.http import HttpLimits, InternalEndpoint, VerbRouter, new_app, start_server
from snooze.models import NetworkAddress
from snooze.rpc import RpcClient
from snooze.scope import Scope

log = logging.getLogger(__name__)


class Service:
    role = "service"

    def __init__(self, settings: cfg.Settings) -> None:
        self.settings = settings
        self.id = settings.node_id(self.role)
        self.hostname = settings.hostname()
        self.address = NetworkAddress(settings.advertise_address(), settings.node.port)
        self.key = settings.cluster.key.encode()
        self.known_epoch = 0
        self.app = new_app()
        self.routes = VerbRouter(self.app)
        window = settings.cluster.replay_window
        self.internal = InternalEndpoint(self.app, self.key, self.id, lambda: self.known_epoch, window=window)
        self.heartbeat = HeartbeatEndpoint(
            self.key, self.id, multicast_group=settings.heartbeat.multicast_group, ttl=settings.heartbeat.multicast_ttl,
            window=window,
        )
        self.coord: Coordinator | None = None
        self.rpc = RpcClient(self.key, self.id)
        #: Everything this process registered and started; each role gets a child of it.
        self.scope = Scope(
            self.role, node_id=self.id, address=self.address, settings=settings, rpc=self.rpc,
            internal=self.internal, heartbeat=self.heartbeat, coordinator=lambda: self.coord,
            epoch=lambda: self.known_epoch, on_critical=self._critical_failed,
        )
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.exit_code = 0
        self.routes.add(self.role, "ping", self._ping)
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
        """(Re)write this process's ephemeral znode ``folder/<id>``, retrying until ZooKeeper
        takes it; the coordinator re-creates it after any new session."""

        async def register() -> None:
            assert self.coord is not None
            while True:
                try:
                    await self.coord.register(self.coord.path(folder, self.id), value())
                    return
                except CoordinationError as exc:
                    log.info("cannot register in %s yet: %s", folder, exc)
                    await asyncio.sleep(0.5)

        self.spawn("register", register())

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._runner = await start_server(self.app, s.node.listen_address, s.node.port, HttpLimits.from_settings(s.node))
        await self.heartbeat.start(s.node.listen_address, s.node.port)
        zk = s.cluster.zookeeper
        if not zk and s.cluster.discovery == "zeroconf":
            from snooze.discovery import discover_zookeeper

            zk = await discover_zookeeper(s.cluster.name, s.cluster.zeroconf_interfaces)
        self.coord = Coordinator(zk, s.cluster.zk_root, s.cluster.session_timeout)
        await self.coord.start()
        # Restarts kazoo if its connection thread dies; when that keeps failing it crashes, and
        # so the process stops with code 1 instead of living on without ZooKeeper.
        self.spawn("zookeeper", self.coord.supervise())
        await self.on_start()
        log.info("%s %s listening on %s", self.role, self.id, self.address.url)

    async def on_start(self) -> None:
        """Role-specific start-up."""

    async def on_stop(self) -> None:
        """Role-specific shut-down (runs before the session and the sockets close)."""

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.on_stop(), 2 * self.scope.grace)
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
        await self.start()
        await self._stop.wait()
        await self.stop()
        return self.exit_code

    def request_stop(self) -> None:
        self._stop.set()

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
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            print(f"snooze-{role}: --set expects SECTION.OPTION=VALUE, got {item!r}", file=sys.stderr)
            return 2
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = raw
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
    try:
        return asyncio.run(service.run())
    except OSError as exc:
        print(f"snooze-{role}: {exc}", file=sys.stderr)
        return 1
