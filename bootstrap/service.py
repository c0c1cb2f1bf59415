"""The bootstrap: the clients' entry point.

Stateless. It learns the current group leader from ZooKeeper (a watch on the leader znode)
and from the leader's heartbeats, answers the original's bootstrap queries, and forwards the
rest to the leader.

The leader it knows may not be the leader any more: killed and restarted as a plain group
manager (``UNKNOWN_KIND``), cut off from ZooKeeper (``LEADER_SUSPENDED``), no longer leading
(``NOT_GROUP_LEADER``), or gone (``UNREACHABLE``; for a read, also ``TIMEOUT``). None of these
did anything, so the bootstrap re-reads the leader znode, waits briefly for a newer term, and
forwards once more to the new leader; failing that it answers 503 ``NO_GROUP_LEADER`` with a
``Retry-After``, never the restarted process's ``UNKNOWN_KIND``. Every 503 it answers carries a
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from aiohttp import web

from bootstrap.ec2 import Ec2Gateway, Ec2Options
from bootstrap.events import EventsApi
from bootstrap.images import ImagesApi
from bootstrap.network import NetworkApi
from bootstrap.openapi import describe_bootstrap
from bootstrap.tokens import TokensApi
from bootstrap.ui import Dashboard
from bootstrap.vms import VirtualMachineVerbs
from snooze import config as cfg
from snooze.auth.tokens import Role, TokenRecord, TokenStore, seed_record
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError, once_reachable
from snooze.http import ApiError, HttpLimits, json_response, read_identifier, start_server
from snooze.models import GroupManagerDescription, NetworkAddress
from snooze.openapi import serve as serve_openapi
from snooze.protocol import Envelope
from snooze.protocol.messages import EnergySaverSwitch, Hierarchy, VirtualClusterResponse
from snooze.rpc import RpcError, api_error
from snooze.service import Service, StartupError

log = logging.getLogger(__name__)

#: A forwarded call refused or failed with one of these did nothing, and says the process asked
#: does not (or no longer) lead: the leader is looked up again and the call sent once more.
NOT_THE_LEADER = (ErrorCode.UNKNOWN_KIND, ErrorCode.NOT_GROUP_LEADER, ErrorCode.LEADER_SUSPENDED, ErrorCode.UNREACHABLE)
#: Reads: a timed-out one did nothing either, so it is sent again to a newer leader too.
READ_KINDS = (Hierarchy.KIND, VirtualClusterResponse.KIND)
#: Codes that wait for a new group leader (a session timeout or so) rather than a heartbeat.
LEADER_CHANGE = (ErrorCode.NO_GROUP_LEADER, ErrorCode.NOT_GROUP_LEADER, ErrorCode.LEADER_SUSPENDED,
                 ErrorCode.LEADER_SETTLING)


class Bootstrap(Service):
    role = "bootstrap"
    serves_users = True

    def __init__(self, settings: cfg.Settings) -> None:
        super().__init__(settings)
        self.leader: GroupManagerDescription | None = None
        self.leader_warnings: list[str] = []  # what the leader's heartbeats say is wrong (topology)
        self._leader_changed = asyncio.Event()
        self._ec2_runner: web.AppRunner | None = None
        self.app.middlewares.append(self._retry_advice)
        self.heartbeat.on("gl.heartbeat", self._on_gl_heartbeat)
        r = self.routes
        r.add("bootstrap", "getGroupLeaderDescription", self.get_group_leader_description, ("GET",))
        r.add("bootstrap", "getCompleteHierarchy", self.get_complete_hierarchy, ("GET",))
        r.add("bootstrap", "getLocalControllerList", self.get_local_controller_list, ("GET",))
        self.vms = VirtualMachineVerbs(self)
        r.add("bootstrap", "suspendEnergySaver", self._energy_saver(False), ("POST", "GET"))
        r.add("bootstrap", "resumeEnergySaver", self._energy_saver(True), ("POST", "GET"))
        # The image repository (/images), on this same port: see bootstrap/images.
        self.images = ImagesApi(self) if settings.images.enabled else None
        # The network model (/networks, /subnets, ... /hypervisors), in this bootstrap's own
        # ZooKeeper session and root: see bootstrap/network. Always on; 503 without ZooKeeper.
        self.network = NetworkApi(self)
        # API tokens (/tokens, admins only): see bootstrap/tokens and snooze.auth.
        self.tokens = TokensApi(self)
        # The cluster's event stream (/events, server-sent events): see bootstrap/events.
        self.event_stream = EventsApi(self)
        # The OpenAPI document of the public API (GET /openapi.json): see bootstrap/openapi.
        describe_bootstrap(self.app)
        serve_openapi(self.app, title="Snooze", version=version("snooze"))
        # The web dashboard (/ui/): plain files, a client of this API: see bootstrap/ui.
        self.dashboard = Dashboard(self)

    async def on_start(self) -> None:
        assert self.coord is not None
        if self.settings.auth.seed_admin_token:
            try:
                seed = seed_record(self.settings.auth.seed_admin_token)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
            self.scope.spawn("auth.seed", self._seed_token(seed))
        self.coord.watch_json(self.coord.path("leader"), self._on_leader)
        self.scope.spawn("events.follow", self.event_stream.follow())
        self.keep_registered("bootstraps", lambda: {"id": self.id, "controlDataAddress": self.address.to_json()})
        if self.images is not None:
            await self.images.start()
        await self._start_ec2()

    async def _start_ec2(self) -> None:
        """The EC2-compatible API on ``[ec2] listen_port``, when set: a client of this bootstrap's own API."""
        ec2 = self.settings.ec2
        if not ec2.listen_port:
            return
        node = self.settings.node
        own = node.listen_address if node.listen_address not in ("0.0.0.0", "::", "") else "127.0.0.1"
        # Its calls carry a token of this process only: its clients are authenticated by their keys.
        token = self.guard.mint_local("ec2-gateway", Role.ADMIN)
        # With TLS, over https to this port too (so [node] tls_cert must name this address).
        own_url = NetworkAddress(own, node.port).base_url(tls=self.server_tls is not None)
        gateway = Ec2Gateway(Ec2Options(own_url, region=ec2.region, keys=dict(ec2.access_keys),
                                        instance_types={k: list(v) for k, v in ec2.instance_types.items()},
                                        images=list(ec2.images), token=token, ca=node.tls_ca))
        if not ec2.access_keys:
            log.warning("[ec2] listen_port is set but [ec2] access_keys is empty: the EC2 API refuses every request")
        try:
            self._ec2_runner = await start_server(gateway.app, node.listen_address, ec2.listen_port, HttpLimits.from_settings(node),
                                                  self.server_tls)
        except OSError as exc:
            raise StartupError(f"[node] listen_address = {node.listen_address!r}, [ec2] listen_port = {ec2.listen_port}: "
                               f"cannot listen there: {exc.strerror or exc}") from exc
        log.info("EC2 API on %s:%d (region %s%s)", node.listen_address, ec2.listen_port, ec2.region,
                 ", https" if self.server_tls is not None else "")

    async def on_stop(self) -> None:
        self.event_stream.closing.set()  # open /events streams end, not hold the stop up
        if self.images is not None:
            await self.images.stop()
        if self._ec2_runner is not None:
            await self._ec2_runner.cleanup()

    async def _seed_token(self, rec: TokenRecord) -> None:
        """``[auth] seed_admin_token`` in ZooKeeper, once it answers."""
        assert self.coord is not None
        store = TokenStore(self.coord)
        if await once_reachable(lambda: store.ensure(rec), "the seeded admin token"):
            log.info("seeded admin token %s ([auth] seed_admin_token)", rec.id)

    def _set_leader(self, value: Any) -> bool:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            leader = GroupManagerDescription.from_json(value)
            if self.see_epoch(leader.epoch):
                self.leader = leader
                self._leader_changed.set()
                return True
        return False

    def _on_leader(self, value: Any | None) -> None:
        if value:
            self._set_leader(value)

    def _on_gl_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if env.epoch >= self.known_epoch and self._set_leader(env.body) and isinstance(env.body, dict):
            warnings = env.body.get("warnings")
            self.leader_warnings = [str(w) for w in warnings] if isinstance(warnings, list) else []

    # -- finding the leader again --------------------------------------------------------
    def retry_after(self, code: ErrorCode) -> int:
        """Seconds a client should wait before retrying a 503 of ``code``: a new leader takes
        about a session timeout, anything else about a heartbeat."""
        wait = self.settings.cluster.session_timeout if code in LEADER_CHANGE else self.settings.heartbeat.interval
        return max(1, min(30, math.ceil(wait)))

    def resolve_wait(self) -> float:
        """How long a forwarded call waits for a newer leader before answering 503."""
        return min(5.0, max(1.0, 2 * self.settings.heartbeat.interval))

    @web.middleware
    async def _retry_advice(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            if exc.status not in (503, 429):
                raise
            resp = json_response(exc.to_json(), exc.status)
            resp.headers["Retry-After"] = str(self.retry_after(exc.code))
            return resp

    async def _newer_leader(self, stale: GroupManagerDescription) -> GroupManagerDescription | None:
        """A leader of a newer term than ``stale`` (or another process), from the leader znode
        read again or learnt within ``resolve_wait()``; None if none turns up."""

        def newer(gl: GroupManagerDescription | None) -> bool:
            return gl is not None and (gl.epoch > stale.epoch or (gl.id, gl.address) != (stale.id, stale.address))

        coord = self.coord
        if coord is not None and coord.connected:
            with contextlib.suppress(CoordinationError, TimeoutError):
                value = await asyncio.wait_for(coord.get_json(coord.path("leader")), 1.0)
                if value:
                    self._set_leader(value)
        deadline = time.monotonic() + self.resolve_wait()
        while not newer(self.leader):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), min(left, 0.2))
        return self.leader

    def _no_leader(self, asked: GroupManagerDescription, exc: RpcError) -> ApiError:
        if exc.code in (ErrorCode.UNKNOWN_KIND, ErrorCode.NOT_GROUP_LEADER):
            why = "is no longer the group leader (restarted or deposed)"
        elif exc.code is ErrorCode.LEADER_SUSPENDED:
            why = "has lost ZooKeeper"
        elif exc.code is ErrorCode.TIMEOUT:
            why = f"did not answer in time ({exc.message}): busy, or cut off and about to be replaced"
        else:
            why = f"did not answer ({exc.message})"
        return ApiError(ErrorCode.NO_GROUP_LEADER,
                        f"no group leader answered: {asked.id} at {asked.address.url} {why}; "
                        f"retry in {self.retry_after(ErrorCode.NO_GROUP_LEADER)}s", status=503)

    def require_leader(self) -> GroupManagerDescription:
        if self.leader is None:
            raise ApiError(ErrorCode.NO_GROUP_LEADER, "no group leader is known yet; retry shortly")
        return self.leader

    async def leader_rpc(self, kind: str, body: Any = None, timeout: float = 10.0, *, idempotent: bool = False) -> Any:
        """Call the group leader; RpcError on failure (callers map it). When the process asked
        turns out not to lead (``NOT_THE_LEADER``), once more to a newer leader, else 503
        NO_GROUP_LEADER (an ApiError). A read, or a call the caller made ``idempotent`` (a
        submission with its requestId), is sent again after a timeout too: a leader cut off
        from the network never answers at all."""
        leader = self.require_leader()
        again = NOT_THE_LEADER + ((ErrorCode.TIMEOUT,) if kind in READ_KINDS or idempotent else ())
        try:
            return await self.rpc.call(leader.address, kind, body, epoch=self.known_epoch, timeout=timeout)
        except RpcError as exc:
            if exc.code not in again:
                raise
            log.info("%s to group leader %s: %s; looking the leader up again", kind, leader.id, exc)
            first = exc
        newer = await self._newer_leader(leader)
        if newer is None:
            raise self._no_leader(leader, first)
        try:
            return await self.rpc.call(newer.address, kind, body, epoch=self.known_epoch, timeout=timeout)
        except RpcError as exc:
            if exc.code in again:
                raise self._no_leader(newer, exc) from exc
            raise

    async def leader_call(self, kind: str, body: Any = None, timeout: float = 10.0) -> Any:
        try:
            return await self.leader_rpc(kind, body, timeout)
        except RpcError as exc:
            raise api_error(exc, "group leader") from exc

    def _energy_saver(self, enabled: bool) -> Any:
        """Suspend or resume the energy saver of every group manager (or of the one whose id
        is the body)."""

        async def handle(request: web.Request) -> Any:
            raw = ""
            if (await request.read()).strip():
                raw = await read_identifier(request, "groupManagerId")
            hierarchy = await self.leader_call(Hierarchy.KIND)
            gms = [gm for gm in hierarchy["groupManagerDescriptions"] if not raw or gm["id"] == raw]
            if raw and not gms:
                raise ApiError(ErrorCode.GROUP_MANAGER_NOT_FOUND, f"no group manager {raw!r}", field="groupManagerId")
            done = True
            for gm in gms:
                addr = NetworkAddress.from_json(gm["listenSettings"]["controlDataAddress"])
                try:
                    await self.rpc.call(addr, EnergySaverSwitch.KIND, EnergySaverSwitch(enabled).to_wire(), epoch=self.known_epoch,
                                        timeout=5)
                except RpcError:
                    done = False
            return done

        return handle

    # -- the original's bootstrap API ----------------------------------------------------
    async def get_group_leader_description(self, _request: web.Request) -> Any:
        d = self.require_leader().to_json()
        if self.leader_warnings:
            d["warnings"] = list(self.leader_warnings)  # e.g. too few group managers
        return d

    async def get_complete_hierarchy(self, request: web.Request) -> Any:
        return await self.vms.hierarchy_for(request)

    async def get_local_controller_list(self, request: web.Request) -> Any:
        hierarchy = await self.vms.hierarchy_for(request)
        lcs = [lc for gm in hierarchy["groupManagerDescriptions"] for lc in gm.get("localControllers", [])]
        return {"localControllers": lcs}


def main(argv: list[str] | None = None) -> int:
    from snooze.service import main_for

    return main_for("bootstrap", Bootstrap, argv)
