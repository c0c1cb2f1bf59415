"""The network model's resource endpoints on the bootstrap, over the bootstrap's own ZooKeeper
session and cluster root (``snooze.network.store``).

For each kind — ``networks``, ``subnets``, ``flavors``, ``fwgroups``, ``vlans`` (by tag),
``vlangroups``, ``guests`` — in Loch Ness's JSON field names:

* ``GET /{kind}`` → ``{"<kind>": [OBJ, ...]}`` sorted by id (VLANs by tag);
* ``POST /{kind}`` OBJ → 201 OBJ, ``ETag: "0"``, ``Location``; 409 NETWORK_OBJECT_EXISTS if the
  id is taken. A guest is created with its address, record and links in one transaction
  (``NetworkStore.create_guest``): it must not name an ``ip``, one is reserved for it;
* ``GET /{kind}/{id}`` → OBJ with ``ETag: "<version>"`` (the znode's version);
* ``PUT /{kind}/{id}`` OBJ with ``If-Match: "<version>"`` (or ``?version=N``) → OBJ with its new
  ETag. Without a version: 428 VERSION_REQUIRED (a blind overwrite would lose another writer's
  update); at a version that is no longer current: 409 CONFLICT, nothing written;
* ``DELETE /{kind}/{id}`` (``If-Match`` optional) → ``true``; 409 NETWORK_OBJECT_IN_USE naming
  the users (also as ``error.users``).

And ``GET /hypervisors[/{id}]`` (the local controllers as Loch Ness hypervisors: registered ones
from ``localcontrollers/`` merged with the store's records), ``PUT|DELETE
/hypervisors/{id}/subnets/{subnet}`` (``{"bridge": NAME}``), and a subnet's addresses:
``GET|POST /subnets/{id}/addresses`` (``{"guest": ID}`` → 201 ``{"address": IP, ...}``),
``DELETE /subnets/{id}/addresses/{ip}``.

Every bad input is a 4xx whose JSON names the field: ids in paths are checked (``snooze.ids``)
before they reach ZooKeeper, bodies are bounded (MAX_BODY_BYTES) and must be JSON objects with
known fields of the right types (``snooze.network.model``). The store is blocking (kazoo's
synchronous API): each call runs off the loop through ``Coordinator.call``, which also turns a
lost ZooKeeper into 503 ZOOKEEPER_UNAVAILABLE; a bootstrap without a ZooKeeper session answers
the same 503 at once.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from snooze.codes import CodedError, ErrorCode
from snooze.coordination import CoordinationError, Coordinator
from snooze.http import ApiError, bad_request, json_response, parse_json
from snooze.ids import check_id
from snooze.network.model import (
    Guest,
    Hypervisor,
    NetworkObject,
    NetworkObjectError,
    Subnet,
    check_bridge,
    object_from_json,
)
from snooze.network.store import SINGULAR, InUse, NetworkStore
from snooze.rpc import api_error

if TYPE_CHECKING:
    from bootstrap.service import Bootstrap

log = logging.getLogger(__name__)

T = TypeVar("T")
#: The kinds with the five generic endpoints (hypervisors have their own).
RESOURCES = ("networks", "subnets", "flavors", "fwgroups", "vlans", "vlangroups", "guests")
#: The largest body accepted: a firewall group of 1,024 rules is about 150 KB.
MAX_BODY_BYTES = 512 * 1024
#: Seconds one store call may take (a reservation retried under contention included).
CALL_TIMEOUT = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InUseError(ApiError):
    """409 NETWORK_OBJECT_IN_USE, with the users as a list too (``error.users``)."""

    def __init__(self, exc: InUse) -> None:
        super().__init__(ErrorCode.NETWORK_OBJECT_IN_USE, exc.message, field="id")
        self.users = list(exc.users)

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        body["error"]["users"] = self.users
        return body


def _path_key(request: web.Request, kind: str, name: str = "id") -> str:
    """The object id in the path, checked: a VLAN's is its tag (1-4094), others' an id."""
    raw = request.match_info[name]
    if kind == "vlans":
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= 4094):
            shown = ascii(raw)[:40]
            raise bad_request(f"tag: {shown} is not a VLAN tag (1-4094)", field="tag", code=ErrorCode.INVALID_ID)
        return str(int(raw))
    return check_id(raw, name)


def _version(value: str | None, where: str) -> int | None:
    """A version from ``If-Match`` (``"7"``, ``W/"7"``, ``7``) or ``?version=7``; None if not given."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        raise bad_request(f"{where}: {ascii(value)[:40]} is not a version (the ETag of a GET, e.g. \"3\")", field=where)
    return int(text)


def _etag(version: int) -> str:
    return f'"{version}"'


async def _body(request: web.Request) -> Any:
    """The request's JSON body, bounded and checked (400/413 naming ``body``)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(ErrorCode.BODY_TOO_LARGE, f"body: over {MAX_BODY_BYTES} bytes", field="body")
    raw = await request.read()  # already read whole by the error middleware, under its deadline
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(ErrorCode.BODY_TOO_LARGE, f"body: over {MAX_BODY_BYTES} bytes", field="body")
    if not raw.strip():
        raise bad_request("body: empty; expected a JSON object", field="body", code=ErrorCode.EMPTY_BODY)
    return parse_json(raw)


def _fields(body: Any, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request(f"body: {what} is a JSON object, not {type(body).__name__}", field="body")
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field (known: {', '.join(allowed)})", field=unknown[0])
    return body


def _ip(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        if "%" in raw or len(raw) > 64:
            raise ValueError(raw)
        return ipaddress.ip_address(raw)
    except ValueError:
        raise bad_request(f"ip: {ascii(raw)[:80]} is not an IP address", field="ip") from None


class NetworkApi:
    """The endpoints, mounted on the bootstrap's application at construction."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.b = bootstrap
        self._store: NetworkStore | None = None
        r = bootstrap.app.router
        for kind in RESOURCES:
            r.add_get(f"/{kind}", self._handler(self.list_objects, kind))
            r.add_post(f"/{kind}", self._handler(self.create_object, kind))
            r.add_get(f"/{kind}/{{id}}", self._handler(self.get_object, kind))
            r.add_put(f"/{kind}/{{id}}", self._handler(self.update_object, kind))
            r.add_delete(f"/{kind}/{{id}}", self._handler(self.delete_object, kind))
        r.add_get("/subnets/{id}/addresses", self.list_addresses)
        r.add_post("/subnets/{id}/addresses", self.reserve_address)
        r.add_delete("/subnets/{id}/addresses/{ip}", self.release_address)
        r.add_get("/hypervisors", self.list_hypervisors)
        r.add_get("/hypervisors/{id}", self.get_hypervisor)
        r.add_put("/hypervisors/{id}/subnets/{subnet}", self.serve_subnet)
        r.add_delete("/hypervisors/{id}/subnets/{subnet}", self.unserve_subnet)

    @staticmethod
    def _handler(fn: Callable[[web.Request, str], Awaitable[web.StreamResponse]], kind: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await fn(request, kind)

        return handle

    # -- the store, through the bootstrap's ZooKeeper session --------------------------------
    def _coord(self) -> Coordinator:
        coord = self.b.coord
        if coord is None or not coord.connected:
            raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE,
                           "the network model lives in ZooKeeper, and this bootstrap has no ZooKeeper session now; retry shortly")
        return coord

    def store(self) -> NetworkStore:
        coord = self._coord()
        if self._store is None or self._store.client is not coord.client or self._store.root != coord.root:
            self._store = NetworkStore(coord.client, coord.root)
        return self._store

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a blocking store call) off the loop; the project's errors become the
        API's (the store's codes keep their statuses: 400, 404, 409; ZooKeeper's 503)."""
        coord = self._coord()
        try:
            return await coord.call(fn, *args, timeout=CALL_TIMEOUT)
        except InUse as exc:
            raise InUseError(exc) from exc
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper" if exc.code is ErrorCode.ZOOKEEPER_UNAVAILABLE else "") from exc
        except CodedError as exc:
            raise api_error(exc) from exc

    # -- the generic endpoints -----------------------------------------------------------------
    async def list_objects(self, _request: web.Request, kind: str) -> web.Response:
        store = self.store()
        objects: list[NetworkObject] = await self._call(store.objects, kind)
        return json_response({kind: [o.to_json() for o in objects]})

    def _answer(self, obj: NetworkObject, version: int, status: int = 200) -> web.Response:
        resp = json_response(obj.to_json(), status)
        resp.headers["ETag"] = _etag(version)
        return resp

    async def get_object(self, request: web.Request, kind: str) -> web.Response:
        key = _path_key(request, kind)
        obj, version = await self._call(self.store().get, kind, key)
        return self._answer(obj, version)

    def _read_object(self, kind: str, body: Any, key: str | None = None) -> NetworkObject:
        """The body as an object of ``kind``; on a PUT its id (or tag) may be left out, and must
        otherwise be the path's."""
        id_field = "tag" if kind == "vlans" else "id"
        if key is not None and isinstance(body, dict):
            given = body.get(id_field)
            if given in (None, ""):
                body = {**body, id_field: int(key) if kind == "vlans" else key}
            elif str(given) != key:
                raise bad_request(f"{id_field}: {ascii(given)[:80]} is not the {id_field} in the path ({key})", field=id_field)
        try:
            return object_from_json(kind, body)
        except NetworkObjectError as exc:
            raise api_error(exc) from exc

    async def create_object(self, request: web.Request, kind: str) -> web.Response:
        obj = self._read_object(kind, await _body(request))
        store = self.store()
        await self._hypervisor_of(obj)
        created: NetworkObject = await self._call(store.create, obj)
        resp = self._answer(created, 0, 201)
        resp.headers["Location"] = f"/{kind}/{created.key}"
        log.info("%s %s created", SINGULAR[kind], created.key)
        return resp

    async def _hypervisor_of(self, obj: NetworkObject) -> None:
        """A guest placed on a registered local controller: its hypervisor record made if it
        has none yet (a local controller is a hypervisor before anything was said about it)."""
        if isinstance(obj, Guest) and obj.hypervisor and await self._registered(self._coord(), obj.hypervisor):
            await self._call(self.store().ensure_hypervisor, obj.hypervisor)

    async def update_object(self, request: web.Request, kind: str) -> web.Response:
        key = _path_key(request, kind)
        version = _version(request.headers.get("If-Match"), "If-Match")
        if version is None:
            version = _version(request.query.get("version"), "version")
        if version is None:
            raise ApiError(ErrorCode.VERSION_REQUIRED,
                           f"If-Match: say which version of {SINGULAR[kind]} {key} this replaces (the ETag of its GET, "
                           "or ?version=N): a blind overwrite could undo another writer's change", field="If-Match")
        obj = self._read_object(kind, await _body(request), key)
        await self._hypervisor_of(obj)
        new = await self._call(self.store().update, obj, version)
        log.info("%s %s updated (version %d)", SINGULAR[kind], key, new)
        return self._answer(obj, new)

    async def delete_object(self, request: web.Request, kind: str) -> web.Response:
        key = _path_key(request, kind)
        version = _version(request.headers.get("If-Match"), "If-Match")
        store = self.store()
        if kind == "guests":
            if not await self._call(store.delete_guest, key, version):
                raise ApiError(ErrorCode.NETWORK_OBJECT_NOT_FOUND, f"no guest {key}", field="id")
        else:
            await self._call(store.delete, kind, key, version)
        log.info("%s %s deleted", SINGULAR[kind], key)
        return json_response(True)

    # -- a subnet's addresses ------------------------------------------------------------------
    async def _subnet(self, request: web.Request) -> str:
        key = _path_key(request, "subnets")
        await self._call(self.store().get, "subnets", key)  # 404 if there is no such subnet
        return key

    async def list_addresses(self, request: web.Request) -> web.Response:
        subnet = await self._subnet(request)
        held: dict[str, str] = await self._call(self.store().ipam.addresses, subnet)
        rows = sorted(held.items(), key=lambda item: int(ipaddress.ip_address(item[0])))
        return json_response({"subnet": subnet, "addresses": [{"address": ip, "guest": g} for ip, g in rows]})

    async def reserve_address(self, request: web.Request) -> web.Response:
        subnet = await self._subnet(request)
        body = _fields(await _body(request), ("guest",), "a reservation")
        if body.get("guest") in (None, ""):
            raise bad_request("guest: missing (the id the address is reserved for)", field="guest")
        guest = check_id(body["guest"], "guest")
        address = await self._call(self.store().ipam.reserve, subnet, guest)
        log.info("address %s of subnet %s reserved for %s", address, subnet, guest)
        return json_response({"address": str(address), "subnet": subnet, "guest": guest}, 201)

    async def release_address(self, request: web.Request) -> web.Response:
        subnet = await self._subnet(request)
        ip = _ip(request.match_info["ip"])
        store = self.store()
        owner: str | None = await self._call(store.ipam.owner, subnet, ip)
        if owner is None:
            raise ApiError(ErrorCode.NETWORK_OBJECT_NOT_FOUND, f"ip: {ip} is not reserved in subnet {subnet}", field="ip")
        guest = await self._call(store.find, "guests", owner)
        if guest is not None and getattr(guest, "ip", None) == ip and getattr(guest, "subnet", None) == subnet:
            # Releasing it alone would leave the guest with an address someone else may get.
            raise InUseError(InUse(f"address {ip} of subnet {subnet}", [f"guest:{owner}"]))
        # At the owner read: a release never frees an address reserved again meanwhile.
        await self._call(store.ipam.release, subnet, ip, owner)
        log.info("address %s of subnet %s released (was %s's)", ip, subnet, owner)
        return json_response(True)

    # -- hypervisors: the local controllers ------------------------------------------------------
    async def _registered(self, coord: Coordinator, lc_id: str | None = None) -> dict[str, Any]:
        """Registered local controllers (their descriptions), read now (never cached: Loch
        Ness's IsAlive was): all of them, or the one named (absent if it is not registered)."""
        try:
            if lc_id is not None:
                found = await coord.get_json(coord.path("localcontrollers", lc_id))
                return {lc_id: found} if found is not None else {}
            return dict(await coord.children_json(coord.path("localcontrollers")))
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc

    @staticmethod
    def _hypervisor_json(hv_id: str, record: Hypervisor | None, registered: Any) -> dict[str, Any]:
        out = (record or Hypervisor(hv_id)).to_json()
        lc = registered if isinstance(registered, dict) else None
        out["alive"] = lc is not None
        address = lc.get("controlDataAddress") if lc else None
        out["ip"] = address.get("address") if isinstance(address, dict) else None
        out["hostname"] = lc.get("hostname") if lc else None
        total = lc.get("totalCapacity") if lc else None
        out["total_resources"] = (dict(zip(("cpu", "memory", "rx", "tx"), total, strict=True))
                                  if isinstance(total, list) and len(total) == 4 else None)
        return out

    async def list_hypervisors(self, _request: web.Request) -> web.Response:
        coord = self._coord()
        records = {h.key: h for h in await self._call(self.store().objects, "hypervisors") if isinstance(h, Hypervisor)}
        registered = await self._registered(coord)
        ids = sorted(set(records) | {k for k in registered if isinstance(k, str)})
        return json_response({"hypervisors": [self._hypervisor_json(i, records.get(i), registered.get(i)) for i in ids]})

    async def _hypervisor(self, request: web.Request) -> tuple[str, Hypervisor | None, Any]:
        hv_id = check_id(request.match_info["id"], "id")
        coord = self._coord()
        record = await self._call(self.store().find, "hypervisors", hv_id)
        registered = (await self._registered(coord, hv_id)).get(hv_id)
        if record is None and registered is None:
            raise ApiError(ErrorCode.NETWORK_OBJECT_NOT_FOUND,
                           f"no hypervisor {hv_id} (no local controller of that id is registered or recorded)", field="id")
        return hv_id, record if isinstance(record, Hypervisor) else None, registered

    async def get_hypervisor(self, request: web.Request) -> web.Response:
        hv_id, record, registered = await self._hypervisor(request)
        out = self._hypervisor_json(hv_id, record, registered)
        users = await self._call(self.store().users, "hypervisors", hv_id)
        out["guests"] = [u.split(":", 1)[1] for u in users if u.startswith("guest:")]
        return json_response(out)

    async def serve_subnet(self, request: web.Request) -> web.Response:
        hv_id, _record, _registered = await self._hypervisor(request)
        subnet = check_id(request.match_info["subnet"], "subnet")
        body = _fields(await _body(request), ("bridge",), "a subnet's bridge")
        try:
            bridge = check_bridge(body.get("bridge"), "bridge")
        except NetworkObjectError as exc:
            raise api_error(exc) from exc
        store = self.store()
        found = await self._call(store.find, "subnets", subnet)
        if not isinstance(found, Subnet):
            raise ApiError(ErrorCode.NETWORK_OBJECT_NOT_FOUND, f"subnet: no subnet {subnet}", field="subnet")
        hv = await self._call(store.serve_subnet, hv_id, subnet, bridge)
        log.info("hypervisor %s serves subnet %s on bridge %s", hv_id, subnet, bridge)
        return json_response(hv.to_json())

    async def unserve_subnet(self, request: web.Request) -> web.Response:
        hv_id, record, _registered = await self._hypervisor(request)
        subnet = check_id(request.match_info["subnet"], "subnet")
        if record is None or subnet not in record.subnets:
            raise ApiError(ErrorCode.NETWORK_OBJECT_NOT_FOUND, f"subnet: hypervisor {hv_id} does not serve subnet {subnet}",
                           field="subnet")
        try:
            hv = await self._call(self.store().unserve_subnet, hv_id, subnet)
        except ApiError as exc:
            if exc.code is ErrorCode.NETWORK_OBJECT_NOT_FOUND:  # its record went meanwhile
                raise ApiError(exc.code, exc.message, field="id") from exc
            raise
        log.info("hypervisor %s no longer serves subnet %s", hv_id, subnet)
        return json_response(hv.to_json())


__all__ = ["MAX_BODY_BYTES", "RESOURCES", "InUseError", "NetworkApi"]
