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
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from bootstrap.openapi import ID
from snooze import openapi as oa
from snooze.auth.guard import principal_of
from snooze.codes import CodedError, ErrorCode
from snooze.coordination import CoordinationError, Coordinator
from snooze.http import ApiError, bad_request, json_response, parse_json
from snooze.ids import check_id, is_valid_id
from snooze.network import model
from snooze.network.model import (
    Guest,
    Hypervisor,
    Network,
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


#: The largest znode version (ZooKeeper's are signed 32-bit integers).
MAX_VERSION = 2**31 - 1
#: A version as ``If-Match`` or ``?version=`` give it: ``"7"``, ``W/"7"`` or ``7``.
VERSION_RE = re.compile(r'(?:W/)?(?:"([0-9]{1,10})"|([0-9]{1,10}))')


def _version(value: str | None, where: str) -> int | None:
    """A version from ``If-Match`` (``"7"``, ``W/"7"``, ``7``) or ``?version=7``; None if not
    given, a 400 naming ``where`` if given but not a version (blank included)."""
    if value is None:
        return None
    found = VERSION_RE.fullmatch(value.strip())
    # ZooKeeper's versions are 32-bit: a larger one must never reach kazoo, whose connection
    # thread dies packing it (the bootstrap's whole session lost, for one bad header).
    if found is None or int(found.group(1) or found.group(2)) > MAX_VERSION:
        raise bad_request(f"{where}: {ascii(value)[:40]} is not a version (the ETag of a GET, e.g. \"3\")", field=where)
    return int(found.group(1) or found.group(2))


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
        _describe(bootstrap.app)

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

    async def subnet(self, key: str) -> Subnet | None:
        """Subnet ``key``, None if there is none (for the bootstrap's other checks)."""
        if not is_valid_id(key):
            return None
        try:
            obj, _version = await self._call(self.store().get, "subnets", key)
        except ApiError as exc:
            if exc.code is ErrorCode.NETWORK_OBJECT_NOT_FOUND:
                return None
            raise
        return obj if isinstance(obj, Subnet) else None

    # -- what a user's token may see ---------------------------------------------------------
    @staticmethod
    def _visible(request: web.Request, obj: NetworkObject) -> bool:
        """A network, and its subnets and guests, are seen by admins and by the users' tokens it
        is granted to (snooze.auth: ``networks``); the default network by every token."""
        principal = principal_of(request)
        if principal.admin:
            return True
        if isinstance(obj, Network):
            return principal.may_use_network(obj.id)
        if isinstance(obj, (Subnet, Guest)):
            return principal.may_use_network(obj.network)
        return True

    def _not_found(self, kind: str, key: str) -> ApiError:
        """What a missing object answers: the same for one a token may not see."""
        return ApiError(ErrorCode.NETWORK_OBJECT_NOT_FOUND, f"no {SINGULAR[kind]} {key}", field="id")

    # -- the generic endpoints -----------------------------------------------------------------
    async def list_objects(self, request: web.Request, kind: str) -> web.Response:
        store = self.store()
        objects: list[NetworkObject] = await self._call(store.objects, kind)
        return json_response({kind: [o.to_json() for o in objects if self._visible(request, o)]})

    def _answer(self, obj: NetworkObject, version: int, status: int = 200) -> web.Response:
        resp = json_response(obj.to_json(), status)
        resp.headers["ETag"] = _etag(version)
        return resp

    async def get_object(self, request: web.Request, kind: str) -> web.Response:
        key = _path_key(request, kind)
        obj, version = await self._call(self.store().get, kind, key)
        if not self._visible(request, obj):
            raise self._not_found(kind, key)
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
        subnet, _version = await self._call(self.store().get, "subnets", key)  # 404 if there is no such subnet
        if not self._visible(request, subnet):
            raise self._not_found("subnets", key)
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


# -- the OpenAPI document's declarations (snooze.openapi) -----------------------------------------
def _schemas(response: bool) -> dict[str, oa.Schema]:
    """Each kind's object, in Loch Ness's field names (``snooze.network.model``): as a request
    body (unknown fields refused; an optional field left out, null, or "" for a text, takes its
    default) or as answered (every field present, null where not set)."""

    def opt(schema: oa.Schema, *, text: bool = False, null: bool = False) -> oa.Schema:
        if response:
            return oa.nullable(schema) if null else schema
        return oa.any_of(schema, {"type": "null"}, *([oa.string(maxLength=0)] if text else []))

    text = oa.string(maxLength=model.MAX_TEXT)
    meta = opt(oa.obj(extra=text if response else oa.nullable(text), maxProperties=model.MAX_METADATA,
                      propertyNames=oa.string(minLength=1, maxLength=255)))
    address = oa.string(minLength=1, description="An IP address")
    ref = opt(ID, text=True, null=True)  # an optional reference to another object
    rate = opt(oa.integer(minimum=0, maximum=model.MAX_RATE_KIBPS))
    port = opt(oa.integer(minimum=0, maximum=65535))
    rule = oa.obj({
        "source": opt(oa.string(minLength=1, description="A CIDR"), text=True, null=True), "group": ref,
        "portStart": port, "portEnd": port, "protocol": oa.string(enum=list(model.PROTOCOLS)),
        "action": oa.string(enum=list(model.ACTIONS)),
    }, extra=response)
    kinds: dict[str, tuple[dict[str, oa.Schema], tuple[str, ...]]] = {
        "networks": ({"id": ID, "metadata": meta}, ("id",)),
        "subnets": ({"id": ID, "metadata": meta, "network": ID,
                     "cidr": oa.string(description="ADDRESS/PREFIX, host bits clear"),
                     "gateway": opt(address, text=True, null=True), "start": opt(address, text=True),
                     "end": opt(address, text=True), "dns": opt(oa.array(address, maxItems=model.MAX_DNS))},
                    ("id", "network", "cidr")),
        "flavors": ({"id": ID, "metadata": meta, "image": ref, "vcpus": oa.integer(minimum=1, maximum=model.MAX_VCPUS),
                     "memory": oa.integer(minimum=1, maximum=model.MAX_MEMORY_KIB),
                     "disk": opt(oa.integer(minimum=0, maximum=model.MAX_DISK_KIB)), "rx": rate, "tx": rate},
                    ("id", "vcpus", "memory")),
        "fwgroups": ({"id": ID, "metadata": meta, "rules": opt(oa.array(rule, maxItems=model.MAX_RULES))}, ("id",)),
        "vlans": ({"tag": oa.integer(minimum=1, maximum=4094), "description": opt(text)}, ("tag",)),
        "vlangroups": ({"id": ID, "description": opt(text), "metadata": meta,
                        "vlans": opt(oa.array(oa.integer(minimum=1, maximum=4094), maxItems=4094, uniqueItems=True))},
                       ("id",)),
        "guests": ({"id": ID, "metadata": meta, "type": opt(oa.string(enum=list(model.GUEST_TYPES)), text=True),
                    "flavor": ID, "network": ID, "subnet": ref, "fwgroup": ref, "vlangroup": ref, "hypervisor": ref,
                    "mac": opt(oa.string(pattern=r"^[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}$"), text=True, null=True),
                    "ip": opt(address, text=True, null=True),
                    "bridge": opt(oa.string(pattern=r"^[A-Za-z0-9_.-]{1,15}$"), text=True, null=True)},
                   ("id", "flavor", "network")),
    }
    return {kind: oa.obj(props, required=tuple(props) if response else required, extra=response)
            for kind, (props, required) in kinds.items()}


_COMPONENTS = {"networks": "Network", "subnets": "Subnet", "flavors": "Flavor", "fwgroups": "FirewallGroup", "vlans": "Vlan",
               "vlangroups": "VlanGroup", "guests": "Guest"}


def _describe(app: web.Application) -> None:
    requests, answers = _schemas(False), _schemas(True)
    etag = {"ETag": (oa.string(description="The object's version, for If-Match"), True)}
    version = oa.string(pattern=f"^{VERSION_RE.pattern}$")
    if_match = oa.Param("If-Match", "header", version, "The version this replaces (an ETag)")
    for kind in RESOURCES:
        name = _COMPONENTS[kind]
        oa.component(app, name, answers[kind])
        oa.component(app, f"{name}Input", requests[kind])
        one = (oa.Body(oa.ref(name), headers=etag),)
        key = (oa.Param("id", "path", oa.integer(minimum=1, maximum=4094) if kind == "vlans" else ID,
                        "The VLAN's tag" if kind == "vlans" else "The object's id"),)
        body = (oa.Body(oa.ref(f"{name}Input")),)
        what = SINGULAR[kind]
        oa.describe(app, "GET", f"/{kind}", oa.Operation(
            f"Every {what}, sorted by {'tag' if kind == 'vlans' else 'id'}",
            answers={200: (oa.Body(oa.obj({kind: oa.array(oa.ref(name))}, required=(kind,))),)}, errors=(503,)))
        oa.describe(app, "POST", f"/{kind}", oa.Operation(
            f"Make a {what}" + (" (its address is reserved for it: it must not name an ip)" if kind == "guests" else ""),
            request=body, answers={201: (oa.Body(oa.ref(name), headers={**etag, "Location": (oa.string(), True)}),)},
            errors=(404, 409, 503)))
        oa.describe(app, "GET", f"/{kind}/{{id}}", oa.Operation(f"One {what}, with its version as ETag", params=key,
                                                                answers={200: one}, errors=(404, 503)))
        oa.describe(app, "PUT", f"/{kind}/{{id}}", oa.Operation(
            f"Replace a {what} at a version (If-Match, or ?version=N)",
            "Without a version: 428 (a blind overwrite could undo another writer's change); at one that is no longer "
            "current: 409, nothing written.",
            params=(*key, if_match, oa.Param("version", "query", version, "As If-Match")),
            request=body, answers={200: one}, errors=(404, 409, 428, 503)))
        oa.describe(app, "DELETE", f"/{kind}/{{id}}", oa.Operation(
            f"Delete a {what} (409 naming its users while anything uses it)", params=(*key, if_match),
            answers={200: (oa.Body(oa.boolean(const=True)),)}, errors=(404, 409, 503)))
    subnet = (oa.Param("id", "path", ID, "The subnet's id"),)
    oa.describe(app, "GET", "/subnets/{id}/addresses", oa.Operation(
        "A subnet's reserved addresses", params=subnet,
        answers={200: (oa.Body(oa.obj({"subnet": oa.string(), "addresses": oa.array(oa.obj(
            {"address": oa.string(), "guest": oa.string()}, required=("address", "guest")))}, required=("subnet", "addresses"))),)},
        errors=(404, 503)))
    oa.describe(app, "POST", "/subnets/{id}/addresses", oa.Operation(
        "Reserve an address of a subnet for an id", params=subnet,
        request=(oa.Body(oa.obj({"guest": ID}, required=("guest",), extra=False)),),
        answers={201: (oa.Body(oa.obj({"address": oa.string(), "subnet": oa.string(), "guest": oa.string()},
                                      required=("address", "subnet", "guest"))),)},
        errors=(404, 409, 503)))
    oa.describe(app, "DELETE", "/subnets/{id}/addresses/{ip}", oa.Operation(
        "Release a reserved address (409 while a guest holds it)", params=(*subnet, oa.Param("ip", "path", oa.string())),
        answers={200: (oa.Body(oa.boolean(const=True)),)}, errors=(404, 409, 503)))
    hypervisor = oa.obj({
        "id": oa.string(), "metadata": oa.obj(), "config": oa.obj(), "subnets": oa.obj(extra=oa.string(), description="subnet id -> bridge"),
        "alive": oa.boolean(), "ip": oa.nullable(oa.string()), "hostname": oa.nullable(oa.string()),
        "total_resources": oa.nullable(oa.obj({r: oa.number() for r in ("cpu", "memory", "rx", "tx")})),
        "guests": oa.array(oa.string()),
    }, required=("id", "subnets"), description="Its record; a GET adds whether it is alive, its address and its guests")
    oa.component(app, "Hypervisor", hypervisor)
    hv = (oa.Param("id", "path", ID, "The local controller's id"),)
    oa.describe(app, "GET", "/hypervisors", oa.Operation(
        "The local controllers as hypervisors (registered ones and recorded ones)",
        answers={200: (oa.Body(oa.obj({"hypervisors": oa.array(oa.ref("Hypervisor"))}, required=("hypervisors",))),)},
        errors=(503,)))
    oa.describe(app, "GET", "/hypervisors/{id}", oa.Operation(
        "One hypervisor, with its guests", params=hv, answers={200: (oa.Body(oa.ref("Hypervisor")),)}, errors=(404, 503)))
    served = (*hv, oa.Param("subnet", "path", ID, "The subnet's id"))
    oa.describe(app, "PUT", "/hypervisors/{id}/subnets/{subnet}", oa.Operation(
        "The hypervisor serves the subnet, on a bridge", params=served,
        request=(oa.Body(oa.obj({"bridge": oa.string(pattern=r"^[A-Za-z0-9_.-]{1,15}$")}, required=("bridge",), extra=False)),),
        answers={200: (oa.Body(oa.ref("Hypervisor")),)}, errors=(404, 409, 503)))
    oa.describe(app, "DELETE", "/hypervisors/{id}/subnets/{subnet}", oa.Operation(
        "The hypervisor no longer serves the subnet", params=served,
        answers={200: (oa.Body(oa.ref("Hypervisor")),)}, errors=(404, 409, 503)))


__all__ = ["MAX_BODY_BYTES", "RESOURCES", "InUseError", "NetworkApi"]
