"""The CNI agent of a local controller: what ``snooze-cni`` asks on 127.0.0.1 (Contrail's vrouter
agent port 9091), over the network model in ZooKeeper.

A container's port is a guest of type ``container`` in the network model (``network/guests/<key>``,
``hypervisor`` this local controller), so its address comes from the same pools as the VMs' and
a container and a VM never share one; deleting the port deletes the guest, which releases the
address in the same transaction.

| method and path | answer |
|---|---|
| ``GET /vm-cfg/{key}?network=N`` | the port's configuration ``{id, ip, plen, gateway, dns, mac, bridge, network, subnet}``; a port not declared yet is made here when ``allocate`` is on, else 404 ``CNI_PORT_NOT_DECLARED`` (the plugin polls) |
| ``POST /ports/{key}`` | ``{containerId, name, ifname, netns, hostIfname}``: the plugin made the port |
| ``DELETE /ports/{key}?containerId=C`` | the port and its guest (its address) removed; ``{"deleted": bool}`` (idempotent) |
| ``GET /ports`` | the ports known, and those awaiting a replay |
| ``POST /sync`` | ``{"ports": [record, ...]}``: after a restart, the records on the host replayed |
| ``GET /status`` | ``{"ok": true, ...}`` (the plugin's STATUS) |

Restart: the agent keeps its ports in memory; ZooKeeper keeps the guests. At start every
container guest of this host awaits a replay (``POST /sync``, or a ``POST /ports`` of the
plugin); those not replayed within ``grace_period`` seconds are purged (guest deleted, address
released): their containers went away while no agent listened. With ``record_directory`` set,
the agent replays at start itself the records there whose namespace still exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from localcontroller.cni.records import Records
from snooze.codes import CodedError, ErrorCode
from snooze.coordination import CoordinationError, Coordinator
from snooze.http import ApiError, json_response, new_app, read_json
from snooze.ids import check_id
from snooze.network.model import Flavor, Guest, Subnet
from snooze.network.store import Exists, NetworkStore

__all__ = ["AgentSettings", "CniAgent"]

log = logging.getLogger(__name__)

CONTAINER = "container"
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,255}")


@dataclass(frozen=True)
class AgentSettings:
    """The agent's options (``[localcontroller] cni_*`` in a local controller's config)."""

    #: Where it listens: loopback only, the plugin runs on the same host.
    address: str = "127.0.0.1"
    #: Its port (Contrail's agent uses 9091); 0 = any free port (tests).
    port: int = 9091
    #: The network a port goes in when the plugin names none.
    network: str = "default"
    #: The flavor of containers' guests (made if absent: 1 vCPU, 64 MiB; the model requires one).
    flavor: str = CONTAINER
    #: The host bridge of a subnet this host serves with no bridge of its own in the model.
    bridge: str = "snzbr0"
    #: Make a port's guest on its first configuration request (else only declared ones are answered).
    allocate: bool = True
    #: Seconds after a start during which recorded ports may be replayed before being purged.
    grace_period: float = 30.0
    #: The plugin's record directory, replayed at start ("" = only POST /sync replays).
    record_directory: str = ""


def _api(exc: CodedError) -> ApiError:
    return ApiError(exc.code, exc.message or str(exc), field=exc.field)


def _key(request: web.Request) -> str:
    return check_id(request.match_info["key"], "key")


class CniAgent:
    def __init__(self, coord: Coordinator, hypervisor: str, settings: AgentSettings | None = None) -> None:
        self.coord = coord
        self.hypervisor = hypervisor
        self.settings = settings or AgentSettings()
        self.store = NetworkStore.of(coord)
        self.ports: dict[str, dict[str, Any]] = {}
        #: Container guests of this host awaiting a replay since the start, and when they are purged.
        self.pending: set[str] = set()
        self.purge_at = 0.0
        self.purged: list[str] = []
        self._flavor_ready = False
        self._prepared = False
        self._runner: web.AppRunner | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self.url = ""
        self.app = new_app()
        r = self.app.router
        r.add_get("/vm-cfg/{key}", self._config)
        r.add_get("/ports", self._list)
        r.add_post("/ports/{key}", self._add)
        r.add_delete("/ports/{key}", self._delete)
        r.add_post("/sync", self._sync)
        r.add_get("/status", self._status)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, sock: socket.socket | None = None) -> str:
        """Listen (on ``sock`` if given: a socket made elsewhere, e.g. in a namespace), load the
        ports awaiting a replay, replay the record directory; returns the agent's URL."""
        self.purge_at = time.monotonic() + self.settings.grace_period
        try:
            await self._prepare()
        except CoordinationError as exc:
            # Without ZooKeeper now (a local controller starting before it): the agent listens
            # anyway, answering 503 meanwhile, and loads the ports to replay once it can.
            log.warning("CNI agent: ZooKeeper not reachable at start (%s); retrying in the background", exc)
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
            host, port = sock.getsockname()[:2]
        else:
            site = web.TCPSite(runner, self.settings.address, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if sock is None:
            assert runner.addresses
            host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._purge_task = asyncio.create_task(self._purge_later(), name="cni-agent-purge")
        log.info("CNI agent of %s at %s; %d ports await a replay for %.0fs", self.hypervisor, self.url,
                 len(self.pending), self.settings.grace_period)
        return self.url

    async def stop(self) -> None:
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _prepare(self) -> None:
        """The folders, this host's hypervisor record, the ports awaiting a replay, and the
        replay of the record directory (once)."""
        if self._prepared:
            return
        await self.coord.call(self.store.ensure)
        await self.coord.call(self.store.ensure_hypervisor, self.hypervisor)
        self.pending = set(await self.coord.call(self._container_guests)) - set(self.ports)
        if self.settings.record_directory:
            self._replay(Records(self.settings.record_directory).all())
        self._prepared = True

    async def _purge_later(self) -> None:
        while not self._prepared:
            try:
                await self._prepare()
            except CoordinationError as exc:
                log.debug("CNI agent: still no ZooKeeper: %s", exc)
                await asyncio.sleep(1.0)
        await asyncio.sleep(max(0.0, self.purge_at - time.monotonic()))
        while True:
            try:
                await self.purge()
                return
            except CoordinationError as exc:
                log.warning("CNI agent: purge of unreplayed ports failed, retrying: %s", exc)
                await asyncio.sleep(1.0)

    async def purge(self) -> list[str]:
        """Delete the guests of the ports not replayed (their containers are gone)."""
        gone = []
        for key in sorted(self.pending):
            if key in self.ports:
                continue
            if await self.coord.call(self._delete_guest, key):
                gone.append(key)
            self.pending.discard(key)
        if gone:
            log.warning("CNI agent: purged %d ports not replayed within %.0fs: %s", len(gone),
                        self.settings.grace_period, ", ".join(gone))
        self.purged += gone
        self.pending.clear()
        return gone

    # -- the model (blocking: run with coord.call) ---------------------------------------------
    def _container_guests(self) -> list[str]:
        out = []
        for user in self.store.users("hypervisors", self.hypervisor):
            if user.startswith("guest:"):
                g = self.store.find("guests", user[6:])
                if isinstance(g, Guest) and g.type == CONTAINER:
                    out.append(g.id)
        return out

    def _ours(self, g: Guest) -> None:
        if g.type != CONTAINER or (g.hypervisor not in (None, self.hypervisor)):
            raise ApiError(ErrorCode.CNI_PORT_CONFLICT, f"guest {g.id} is a {g.type} on {g.hypervisor or 'no host'}, "
                           f"not a container of {self.hypervisor}", field="key")

    def _ensure_flavor(self) -> None:
        if self._flavor_ready:
            return
        if self.store.find("flavors", self.settings.flavor) is None:
            with contextlib.suppress(Exists):
                self.store.create(Flavor(self.settings.flavor, vcpus=1, memory=65536,
                                         metadata={"origin": "cni-agent"}))
        self._flavor_ready = True

    def _configure(self, key: str, network: str, meta: dict[str, str]) -> dict[str, Any]:
        g = self.store.find("guests", key)
        if g is None:
            if not self.settings.allocate:
                raise ApiError(ErrorCode.CNI_PORT_NOT_DECLARED, f"port {key} is not declared in the network model yet",
                               field="key")
            self._ensure_flavor()
            if not self._prepared:  # ZooKeeper was away at start: the guest's references first
                self.store.ensure()
                self.store.ensure_hypervisor(self.hypervisor)
            try:
                g = self.store.create_guest(Guest(key, self.settings.flavor, network, hypervisor=self.hypervisor,
                                                  type=CONTAINER, metadata=meta))
            except Exists:
                g = self.store.find("guests", key)
        assert isinstance(g, Guest)
        self._ours(g)
        sub = self.store.find("subnets", g.subnet) if g.subnet else None
        if not isinstance(sub, Subnet) or g.ip is None:
            raise ApiError(ErrorCode.CNI_PORT_NOT_DECLARED, f"port {key} has no address yet", field="key")
        return {"id": g.id, "ip": str(g.ip), "plen": sub.cidr.prefixlen,
                "gateway": str(sub.gateway) if sub.gateway is not None else None,
                "dns": [str(a) for a in sub.dns], "mac": g.mac, "bridge": g.bridge or self.settings.bridge,
                "network": g.network, "subnet": sub.id}

    def _delete_guest(self, key: str) -> bool:
        g = self.store.find("guests", key)
        if g is None:
            return False
        assert isinstance(g, Guest)
        self._ours(g)
        return self.store.delete_guest(key)

    # -- handlers --------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await self.coord.call(fn, *args, timeout=15.0)
        except ApiError:
            raise
        except CodedError as exc:
            raise _api(exc) from exc

    async def _config(self, request: web.Request) -> web.Response:
        key = _key(request)
        network = check_id(request.query.get("network") or self.settings.network, "network")
        meta = {}
        for name in ("containerId", "name", "ifname"):
            value = request.query.get(name, "")
            if len(value) > 255:
                raise ApiError(ErrorCode.BAD_REQUEST, f"{name}: at most 255 characters", field=name)
            if value:
                meta[name] = value
        return json_response(await self._call(self._configure, key, network, meta))

    @staticmethod
    def _port(body: Any, key: str, where: str = "") -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(ErrorCode.BAD_REQUEST, f"{where or 'body'}: a port is a JSON object", field=where or "body")
        cid = body.get("containerId")
        if not isinstance(cid, str) or not _CONTAINER_ID.fullmatch(cid):
            raise ApiError(ErrorCode.BAD_REQUEST, f"{where}containerId: a container id", field=f"{where}containerId")
        ifname = body.get("ifname", "")
        if not isinstance(ifname, str) or not _IFNAME.fullmatch(ifname):
            raise ApiError(ErrorCode.BAD_REQUEST, f"{where}ifname: an interface name", field=f"{where}ifname")
        host = body.get("hostIfname") or ""
        if not isinstance(host, str) or (host and not _IFNAME.fullmatch(host)):
            raise ApiError(ErrorCode.BAD_REQUEST, f"{where}hostIfname: an interface name", field=f"{where}hostIfname")
        out = {"key": key, "containerId": cid, "ifname": ifname, "hostIfname": host}
        for name in ("name", "netns"):
            value = body.get(name, "")
            if not isinstance(value, str) or len(value) > 4096:
                raise ApiError(ErrorCode.BAD_REQUEST, f"{where}{name}: a text", field=f"{where}{name}")
            out[name] = value
        return out

    async def _add(self, request: web.Request) -> web.Response:
        key = _key(request)
        port = self._port(await read_json(request), key)
        g = await self._call(self.store.find, "guests", key)
        if not isinstance(g, Guest):
            raise ApiError(ErrorCode.CNI_PORT_NOT_DECLARED, f"port {key} has no guest in the network model", field="key")
        self._ours(g)
        self.ports[key] = {**port, "ip": str(g.ip), "since": time.time()}
        self.pending.discard(key)
        return json_response({"ok": True})

    async def _delete(self, request: web.Request) -> web.Response:
        key = _key(request)
        cid = request.query.get("containerId", "")
        known = self.ports.get(key)
        if known is not None and cid and known["containerId"] != cid:
            # A newer container holds the port (the plugin's guard missed it: no record there).
            return json_response({"deleted": False, "heldBy": known["containerId"]})
        deleted = await self._call(self._delete_guest, key)
        self.ports.pop(key, None)
        self.pending.discard(key)
        return json_response({"deleted": deleted})

    async def _list(self, _request: web.Request) -> web.Response:
        return json_response({"ports": [self.ports[k] for k in sorted(self.ports)], "pending": sorted(self.pending)})

    def _replay(self, ports: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        replayed, unknown = [], []
        for p in ports:
            key = p["key"]
            netns = p.get("netns") or ""
            if key in self.pending or key in self.ports:
                if netns and not os.path.exists(netns):
                    unknown.append(key)  # its namespace is gone: left to the purge
                    continue
                self.ports[key] = {**p, "since": time.time()}
                self.pending.discard(key)
                replayed.append(key)
            else:
                unknown.append(key)
        return replayed, unknown

    async def _sync(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        raw = body.get("ports") if isinstance(body, dict) else None
        if not isinstance(raw, list):
            raise ApiError(ErrorCode.BAD_REQUEST, "ports: a list of port records", field="ports")
        ports = []
        for i, p in enumerate(raw):
            key = check_id(p.get("key") if isinstance(p, dict) else None, f"ports[{i}].key")
            ports.append(self._port(p, key, f"ports[{i}]."))
        replayed, unknown = self._replay(ports)
        return json_response({"replayed": replayed, "unknown": unknown, "pending": sorted(self.pending)})

    async def _status(self, _request: web.Request) -> web.Response:
        return json_response({"ok": True, "hypervisor": self.hypervisor, "ports": len(self.ports),
                              "pending": len(self.pending), "connected": self.coord.connected})


def settings_from(lc: Any) -> AgentSettings:
    """The agent's settings from a local controller's ``[localcontroller] cni_*`` options."""
    return replace(AgentSettings(), port=int(lc.cni_agent_port), network=str(lc.cni_network),
                   grace_period=float(lc.cni_grace_period), record_directory=str(lc.cni_record_directory),
                   allocate=bool(lc.cni_allocate))
