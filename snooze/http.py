"""HTTP plumbing shared by every role: the original's ``/path?verb`` routing and JSON errors.

Public endpoints look like the original Restlet API: ``GET /bootstrap?getGroupLeaderDescription``,
``POST /groupmanager?startVirtualCluster``. Internal messages go to ``POST /snooze/internal`` as
authenticated envelopes (see ``snooze.protocol``). Any problem with a request becomes a 4xx with
a JSON body ``{"error": {"code", "message", "field"}}``; an unexpected failure is logged and
answered with a JSON 500 — it is a bug, never the way bad input is reported.

Input is checked before it can hurt: ids with ``snooze.ids`` (``read_identifier``), JSON bodies
for depth, numbers msgpack and ZooKeeper can carry and text that is valid Unicode
(``parse_json``), every field named in the 400. Slow or greedy clients are bounded per
connection (``HttpLimits``, enforced by ``start_server``): the request's headers and body each
have a deadline, idle keep-alive connections close, and one client address may hold only so many
connections. Such closes are logged at most once a minute per reason, never as tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

from snooze.codes import CodedError, ErrorCode
from snooze.ids import InvalidId, check_id
from snooze.protocol import (
    DEFAULT_WINDOW,
    Envelope,
    Keyring,
    ProtocolError,
    RejectionLog,
    ReplayGuard,
    as_keyring,
    decode,
    encode,
)
from snooze.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
# Deeper JSON is refused (Python's parser and everything after it recurse); real bodies nest < 8.
MAX_JSON_DEPTH = 64
# Integers msgpack (the internal envelopes) can carry: int64 and uint64.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
INTERNAL_PATH = "/snooze/internal"


class Access(StrEnum):
    """What a public route needs when authentication is on (snooze.auth.guard)."""

    #: No token: /health, /metrics, ping, the internal endpoint (HMAC-signed).
    PUBLIC = "public"
    #: Any valid token; reads only.
    READ = "read"
    #: Any valid token; the handler lets a user touch only what they own (their VMs).
    USER = "user"
    #: An admin's token.
    ADMIN = "admin"


def default_access(verb: str) -> Access:
    """A verb's access unless its route says otherwise: reads (get*, has*) need a token, every
    other verb an admin's."""
    if verb == "ping":
        return Access.PUBLIC
    return Access.READ if verb.startswith(("get", "has")) else Access.ADMIN


MSGPACK = "application/x-snooze-msgpack"


class ApiError(CodedError):
    """A request that cannot be served; becomes a JSON error response
    ``{"error": {"code", "message", "field"}}`` with ``status``: its code's own
    (``ErrorCode.http_status``) unless one is given. Internal errors become ApiErrors through
    one mapping, ``snooze.rpc.api_error``."""

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code, field=field)
        self.status = code.http_status if status is None else status

    @property
    def api_status(self) -> int:
        return self.status

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


def bad_request(message: str, *, field: str | None = None, code: ErrorCode = ErrorCode.BAD_REQUEST) -> ApiError:
    return ApiError(code, message, field=field, status=400)


def not_found(message: str, *, field: str | None = None, code: ErrorCode = ErrorCode.NOT_FOUND) -> ApiError:
    return ApiError(code, message, field=field, status=404)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data), status=status, content_type="application/json"
    )


@dataclass
class HttpLimits:
    """Per-connection bounds; see the ``http_*`` options of ``[node]`` in ``snooze.config``."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections_per_client: int = 256

    @classmethod
    def from_settings(cls, node: Any) -> HttpLimits:
        return cls(
            header_timeout=node.http_header_timeout,
            body_timeout=node.http_body_timeout,
            idle_timeout=node.http_idle_timeout,
            max_connections_per_client=node.http_max_connections_per_client,
        )


class ConnectionGuard:
    """Counts connections per client address, closes those that stay silent, answers malformed
    HTTP in JSON.

    aiohttp's low-level ``web.Server`` tells it of every connection made and lost. A connection
    over the per-address limit gets a 429 and is closed before anything is read; one that has
    not delivered a complete request line and headers within ``header_timeout`` is closed
    (later requests on a kept-alive connection are bounded by ``idle_timeout``, which aiohttp
    enforces). The body deadline is the error middleware's, which knows the request.
    """

    REFUSAL = (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    )

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.per_address: dict[str, int] = {}
        self._address: dict[Any, str | None] = {}  # handler -> its client's address (None: refused)
        self._deadline: dict[Any, asyncio.TimerHandle] = {}
        self.closed: dict[str, int] = {"slow_headers": 0, "slow_body": 0, "too_many_connections": 0, "client_gone": 0, "malformed": 0}
        self.report = RateLimitedLog(log)

    def count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1

    def install(self, server: web.Server) -> None:
        # The runner built a plain web.Server; give it our connection hooks and our handler
        # class (same layout, only methods added, so the class can be swapped in place).
        server.__class__ = _GuardedServer
        server.snooze_guard = self  # type: ignore[attr-defined]

    def _made(self, handler: Any, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"
        limit = self.limits.max_connections_per_client
        if limit > 0 and self.per_address.get(address, 0) >= limit:
            self._address[handler] = None
            self.count("too_many_connections")
            self.report("too_many_connections", "refused a connection from %s: it already has %d open (limit %d)",
                        address, self.per_address[address], limit)
            body = json.dumps(ApiError(ErrorCode.TOO_MANY_CONNECTIONS, f"at most {limit} connections per client address").to_json()).encode()
            transport.write(self.REFUSAL % (len(body), body))
            # Closed on the next turn of the loop, once aiohttp has finished setting the
            # connection up (closing inside this callback would race its start-up).
            asyncio.get_running_loop().call_soon(transport.close)
            return
        self._address[handler] = address
        self.per_address[address] = self.per_address.get(address, 0) + 1
        if self.limits.header_timeout > 0:
            self._deadline[handler] = asyncio.get_running_loop().call_later(
                self.limits.header_timeout, self._headers_overdue, handler, address
            )

    def _lost(self, handler: Any) -> None:
        timer = self._deadline.pop(handler, None)
        if timer is not None:
            timer.cancel()
        address = self._address.pop(handler, None)
        if address is not None:
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)

    def request_started(self, handler: Any) -> None:
        """The first request's headers have arrived: its header deadline is met."""
        timer = self._deadline.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _headers_overdue(self, handler: Any, address: str) -> None:
        self._deadline.pop(handler, None)
        self.count("slow_headers")
        self.report("slow_headers", "closed a connection from %s: no complete request headers within %.0fs",
                    address, self.limits.header_timeout)
        handler.force_close()


    def malformed(self, request: web.BaseRequest, status: int, message: str) -> None:
        self.count("malformed")
        self.report("malformed", "refused a malformed HTTP request from %s (%d): %s", request.remote, status, message)


#: A request line whose target lacks the leading '/' (``POST groupmanager?startVirtualCluster
#: HTTP/1.1``, as libcloud 0.12 sent the original driver's paths), not an absolute URL or '*'.
_TARGET_WITHOUT_SLASH = re.compile(rb"^[A-Z]{3,7} (?![/*]|[A-Za-z][A-Za-z0-9+.-]*://)[^ \r\n]+ HTTP/1\.[01]\r?\n")


class _JsonErrorsHandler(web.RequestHandler):
    """aiohttp's connection handler, except that requests its HTTP parser refuses (bad request
    line, header or chunk, line too long, TLS on the HTTP port) are answered in our JSON and
    logged once a minute, instead of text and one ERROR traceback per request; and that a
    request target without its leading '/' is taken as if it had one (the original's clients
    sent ``groupmanager?VERB``; HTTP parsers refuse it as a URL with a bad scheme).

    The target is mended where a request begins in the bytes received: at the start of a read.
    Clients that send such targets (libcloud's httplib) write a request's line and headers at
    once and wait for the answer before the next one, so that is where their requests begin.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if _TARGET_WITHOUT_SLASH.match(data):
            space = data.index(b" ") + 1
            data = data[:space] + b"/" + data[space:]
        super().data_received(data)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        guard = getattr(self._manager, "snooze_guard", None)
        if status >= 500 or guard is None or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        # aiohttp's message spans lines (reason, offending bytes, a caret under them).
        lines = [line.strip() for line in (message or str(exc or "")).splitlines()]
        text = " ".join(line for line in lines if line and set(line) != {"^"})[:200] or "malformed request"
        guard.malformed(request, status, text)
        resp = json_response(ApiError(ErrorCode.MALFORMED_HTTP, f"malformed HTTP request: {text}", field="request", status=status).to_json(), status)
        resp.force_close()
        return resp


class _GuardedServer(web.Server):
    snooze_guard: ConnectionGuard

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorsHandler
        return handler

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.snooze_guard._made(handler, transport)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        self.snooze_guard._lost(handler)
        super().connection_lost(handler, exc)


GUARD = web.AppKey("connection_guard", ConnectionGuard)


def _limits(request: web.Request) -> tuple[HttpLimits, ConnectionGuard | None]:
    guard = request.app.get(GUARD)
    return (guard.limits if guard is not None else HttpLimits()), guard


def _client_gone(guard: ConnectionGuard | None, request: web.Request, exc: BaseException) -> web.Response:
    # The client hung up (or broke its framing) while we read: nobody will read an answer.
    if guard is not None:
        guard.count("client_gone")
        guard.report("client_gone", "client %s went away before sending its whole body: %r", request.remote, exc)
    resp = json_response(ApiError(ErrorCode.BODY_INCOMPLETE, "the request body was cut short", field="body").to_json(), 400)
    resp.force_close()
    return resp


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    limits, guard = _limits(request)
    try:
        if guard is not None:
            guard.request_started(request.protocol)
        if request.body_exists:
            # Read the whole body here, under one deadline, so that no handler (nor the
            # internal endpoint) can be held by a client that declares more than it sends.
            try:
                await asyncio.wait_for(request.read(), limits.body_timeout if limits.body_timeout > 0 else None)
            except TimeoutError:
                if guard is not None:
                    guard.count("slow_body")
                    guard.report("slow_body", "closed a connection from %s: request body not complete within %.0fs",
                                 request.remote, limits.body_timeout)
                err = ApiError(ErrorCode.REQUEST_TIMEOUT, f"the request body did not arrive within {limits.body_timeout:.0f}s", field="body")
                resp = json_response(err.to_json(), 408)
                resp.force_close()
                return resp
            except (ConnectionError, web.RequestPayloadError) as exc:
                return _client_gone(guard, request, exc)
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.to_json(), exc.status)
    except InvalidId as exc:
        return json_response(ApiError(ErrorCode.INVALID_ID, str(exc), field=exc.field).to_json(), 400)
    except web.HTTPRequestEntityTooLarge:
        err = ApiError(ErrorCode.BODY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes", field="body")
        resp = json_response(err.to_json(), 413)
        resp.force_close()  # the rest of the body is not worth reading
        return resp
    except web.HTTPException as exc:
        if exc.status >= 400:
            err = ApiError(ErrorCode.for_status(exc.status), exc.reason, status=exc.status)
            return json_response(err.to_json(), exc.status)
        raise
    except (ConnectionError, web.RequestPayloadError) as exc:
        return _client_gone(guard, request, exc)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path_qs)
        err = ApiError(ErrorCode.INTERNAL_ERROR, "internal error (a bug: see the server's log)")
        return json_response(err.to_json(), 500)


#: Requests served, by (path, verb, method, status): read by ``/metrics`` (snooze.metrics).
REQUESTS: web.AppKey[Counter[tuple[str, str, str, str]]] = web.AppKey("request_counts", Counter)
#: The verbs a VerbRouter knows, by route prefix (set by the router).
VERBS: web.AppKey[dict[str, Any]] = web.AppKey("verbs", dict)


def _route_of(request: web.Request) -> tuple[str, str]:
    """(path, verb) labels of bounded cardinality: a route's template (``/images/{id}``, never
    the id itself), and the ``?verb`` of a verb route when the router knows it."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "unmatched", ""
    found = verb_of(request)
    if found is None:
        return resource.canonical, ""
    prefix, verb = found
    # Both forms of a verb (``/prefix?verb``, ``/prefix/verb``) count as one.
    return f"/{prefix}", (verb if verb in request.app[VERBS].get(prefix, {}) else "unknown")


def verb_of(request: web.Request) -> tuple[str, str] | None:
    """(prefix, verb) of a request to a verb route, in either form: the original's
    ``/prefix?verb`` (any verb, known or not) or its path form ``/prefix/verb``; None for any
    other route."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    path = resource.canonical
    verbs = request.app.get(VERBS)
    if verbs is None:
        return None
    prefix = path.lstrip("/")
    if prefix in verbs:
        return prefix, request.query_string.split("&", 1)[0].split("=", 1)[0]
    prefix, _, verb = prefix.partition("/")
    if verb in verbs.get(prefix, {}):
        return prefix, verb
    return None


@web.middleware
async def count_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        counts = request.app.get(REQUESTS)
        if counts is not None:
            path, verb = _route_of(request)
            counts[(path, verb, request.method, str(status))] += 1


#: Access of plain (non-verb) routes, by (method, route template), when not the default
#: (GET and HEAD need a token, anything else an admin's): see ``set_access``.
ROUTE_ACCESS: web.AppKey[dict[tuple[str, str], Access]] = web.AppKey("route_access", dict)
_PUBLIC_PATHS = (INTERNAL_PATH, "/health", "/metrics")


def set_access(app: web.Application, method: str, path: str, access: Access) -> None:
    """``method path`` (a route template, e.g. ``/tokens/{id}``) needs ``access``."""
    app[ROUTE_ACCESS][(method, path)] = access


def route_access(request: web.Request) -> Access:
    """What the request's route needs (snooze.auth.guard enforces it)."""
    resource = request.match_info.route.resource
    if resource is None:
        return Access.READ  # 404 for those who may look
    found = verb_of(request)
    if found is not None:
        entry = request.app[VERBS][found[0]].get(found[1])
        return entry.access if entry is not None else Access.READ
    return plain_route_access(request.app, request.method, resource.canonical)


def plain_route_access(app: web.Application, method: str, path: str) -> Access:
    """What ``method path`` (a route template, not a verb route) needs."""
    if path in _PUBLIC_PATHS:
        return Access.PUBLIC
    override = app.get(ROUTE_ACCESS, {}).get((method, path))
    if override is not None:
        return override
    return Access.READ if method in ("GET", "HEAD") else Access.ADMIN


def new_app() -> web.Application:
    app = web.Application(middlewares=[count_middleware, error_middleware], client_max_size=MAX_BODY_BYTES)
    app[REQUESTS] = Counter()
    app[VERBS] = {}
    app[ROUTE_ACCESS] = {}
    return app


async def start_server(app: web.Application, host: str, port: int, limits: HttpLimits | None = None,
                       ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` under ``limits``, https only with ``ssl_context`` (``snooze.tls``);
    the runner's ``cleanup()`` stops it."""
    limits = limits or HttpLimits()
    guard = ConnectionGuard(limits)
    app[GUARD] = guard
    # keepalive_timeout: how long aiohttp keeps an idle connection, including one whose next
    # request's headers are still trickling in. Above the 15 s for which aiohttp's client (our
    # RPC) reuses an idle connection, so the server never closes one the client is reusing.
    # lingering_time: after an early answer (408, 413), read on briefly so the client sees it.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout, lingering_time=2.0)
    await runner.setup()
    assert runner.server is not None
    guard.install(runner.server)
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(ErrorCode.BODY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes", field="body")
    return await request.read()


def _join(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def check_json_value(value: Any, field: str = "") -> Any:
    """``value`` if every part of it can travel on (msgpack, ZooKeeper), else a 400 naming the
    part: at most MAX_JSON_DEPTH deep, integers within int64/uint64, finite numbers, text that
    is valid Unicode (no lone surrogates). ``field`` names ``value`` itself (empty: the body)."""
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        item, where, depth = stack.pop()
        name = where or "body"
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise bad_request(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels", field=name, code=ErrorCode.TOO_DEEP)
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise bad_request(f"{name}: keys must be text", field=name)
                    if not _encodable(key):
                        raise bad_request(f"{name}: a key is not valid Unicode (lone surrogate)", field=name, code=ErrorCode.INVALID_TEXT)
                    stack.append((sub, _join(where, key), depth + 1))
            else:
                stack.extend((sub, _join(where, i), depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise bad_request(f"{name}: integer out of range ({MIN_INT}..{MAX_INT})", field=name, code=ErrorCode.NUMBER_OUT_OF_RANGE)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise bad_request(f"{name}: numbers must be finite (no NaN, Infinity or overflow such as 1e400)",
                                  field=name, code=ErrorCode.NUMBER_OUT_OF_RANGE)
        elif isinstance(item, str):
            if not _encodable(item):
                raise bad_request(f"{name}: text is not valid Unicode (lone surrogate)", field=name, code=ErrorCode.INVALID_TEXT)
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "strict")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(raw: bytes | str, field: str = "body") -> Any:
    """Parse a JSON document and check it with ``check_json_value``; 400s name ``field``."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise bad_request(f"{field}: nested too deeply (at most {MAX_JSON_DEPTH} levels)", field=field, code=ErrorCode.TOO_DEEP) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"{field} is not valid JSON: {exc}", field=field, code=ErrorCode.MALFORMED_JSON) from exc
    return check_json_value(value, "" if field == "body" else field)


async def read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        raise bad_request("request body is empty; expected JSON", field="body", code=ErrorCode.EMPTY_BODY)
    return parse_json(raw)


async def read_identifier(request: web.Request, what: str) -> str:
    """An id sent as the whole body, bare (as the seed's curl does), as a JSON string or as
    ``{"<what>": id}``; checked with ``snooze.ids`` (400 naming ``what``) before anyone uses it."""
    raw = (await read_body(request)).decode("utf-8", "replace").strip()
    value: Any = raw
    if raw.startswith('"') or raw.startswith("{"):
        try:
            value = parse_json(raw, what)
        except ApiError as exc:  # whatever is wrong in it, the id is what is wrong
            raise bad_request(exc.message, field=what, code=exc.code) from exc
        if isinstance(value, dict):
            value = value.get(what)
    if not value:
        raise bad_request(f"{what}: expected an identifier as the request body", field=what)
    try:
        return check_id(value, what)
    except InvalidId as exc:
        raise bad_request(str(exc), field=what, code=ErrorCode.INVALID_ID) from exc


VerbHandler = Callable[[web.Request], Awaitable[Any]]


@dataclass
class _Verb:
    methods: tuple[str, ...]
    handler: VerbHandler
    access: Access = Access.ADMIN


class VerbRouter:
    """Routes ``/prefix?verb`` to handlers; a handler returns JSON-able data or a Response.

    Each verb is also served at its path form ``/prefix/verb`` (same handler, same access,
    same answers; the query string then holds only the verb's own parameters): the form the
    OpenAPI document (``snooze.openapi``) describes, since a path there cannot carry a query.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.verbs: dict[str, dict[str, _Verb]] = {}
        if VERBS in app:
            app[VERBS] = self.verbs  # the request counter labels known verbs only

    def add(self, prefix: str, verb: str, handler: VerbHandler, methods: tuple[str, ...] = ("GET", "POST"),
            access: Access | None = None) -> None:
        if prefix not in self.verbs:
            self.verbs[prefix] = {}
            self.app.router.add_route("*", f"/{prefix}", self._dispatcher(prefix))
        if verb not in self.verbs[prefix]:
            self.app.router.add_route("*", f"/{prefix}/{verb}", self._path_form(prefix, verb))
        self.verbs[prefix][verb] = _Verb(methods, handler, access or default_access(verb))

    def access(self, prefix: str, verb: str) -> Access | None:
        """The access ``/prefix?verb`` needs; None for an unknown verb (answered 404)."""
        entry = self.verbs.get(prefix, {}).get(verb)
        return entry.access if entry is not None else None

    def _dispatcher(self, prefix: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            verb = request.query_string.split("&", 1)[0].split("=", 1)[0]
            entry = self.verbs[prefix].get(verb)
            if entry is None:
                known = ", ".join(sorted(self.verbs[prefix]))
                raise not_found(
                    f"unknown method {verb!r} on /{prefix}; known: {known}", field="method", code=ErrorCode.UNKNOWN_METHOD
                )
            return await _answer(verb, entry, request)

        return dispatch

    def _path_form(self, prefix: str, verb: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await _answer(verb, self.verbs[prefix][verb], request)

        return serve


async def _answer(verb: str, entry: _Verb, request: web.Request) -> web.StreamResponse:
    if request.method not in entry.methods:
        raise ApiError(ErrorCode.METHOD_NOT_ALLOWED, f"{verb} needs {' or '.join(entry.methods)}", field="method")
    result = await entry.handler(request)
    if isinstance(result, web.StreamResponse):
        return result
    return json_response(result)


InternalHandler = Callable[[Envelope], Awaitable[Any]]


class InternalEndpoint:
    """``POST /snooze/internal``: authenticated envelopes in, authenticated envelopes out.

    ``orders`` are kinds that need the sender's epoch to be current: an order from an older
    epoch than the receiver has seen is refused (409), so a deposed leader is never obeyed.
    Every message is accepted once, within ``window`` seconds of its timestamp (``ReplayGuard``):
    a replay is refused 409 ``REPLAY``, a stale or future one 401 ``STALE_TIMESTAMP``, both in
    plain JSON and counted in ``rejected``. Replies carry the request's nonce (``reply_to``).
    """

    def __init__(
        self, app: web.Application, key: bytes | Keyring, sender: str, epoch: Callable[[], int],
        *, window: float = DEFAULT_WINDOW,
    ) -> None:
        self.keys = as_keyring(key)  # the process's keyring, shared: a reload changes it here too
        self.sender = sender
        self.epoch = epoch
        self.handlers: dict[str, tuple[InternalHandler, bool]] = {}
        self.rejected: dict[str, int] = {}
        self.guard = ReplayGuard(window)
        self._log_refusal = RejectionLog(log)
        app.router.add_post(INTERNAL_PATH, self._serve)

    def on(self, kind: str, handler: InternalHandler, *, order: bool = False) -> None:
        self.handlers[kind] = (handler, order)

    def _reply(self, request: Envelope, kind: str, body: Any, status: int = 200) -> web.Response:
        data = encode(self.keys.signing, kind, self.sender, self.epoch(), body, reply_to=request.nonce)
        return web.Response(body=data, status=status, content_type=MSGPACK)

    def _reject(self, request: Envelope, code: ErrorCode, message: str) -> web.Response:
        reason = code.lower()  # the counter's name, like a ProtocolError's reason
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return self._reply(request, "error", {"code": code, "message": message}, code.http_status)

    def _refuse(self, exc: ProtocolError, source: str) -> web.Response:
        # Unauthenticated, or authentic but not to be obeyed (replayed, stale): answer plainly,
        # never with a signed envelope that could pass for an answer to a live request.
        self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
        self._log_refusal(exc, source)
        return json_response(ApiError(exc.code, str(exc), status=exc.status).to_json(), exc.status)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        try:
            env = decode(self.keys.accepted, await read_body(request))
        except ProtocolError as exc:
            return self._refuse(exc, str(request.remote))
        try:
            self.guard.check(env)
        except ProtocolError as exc:
            return self._refuse(exc, f"{env.sender} at {request.remote} ({env.kind})")
        entry = self.handlers.get(env.kind)
        if entry is None:
            return self._reject(env, ErrorCode.UNKNOWN_KIND, f"no handler for {env.kind}")
        handler, order = entry
        if order and env.epoch < self.epoch():
            return self._reject(env, ErrorCode.STALE_EPOCH, f"epoch {env.epoch} is older than {self.epoch()}")
        try:
            result = await handler(env)
        except (ApiError, ProtocolError) as exc:  # ProtocolError: a body it cannot read (BadMessage)
            status = exc.status if isinstance(exc, ApiError) else exc.code.http_status
            return self._reply(env, "error", {"code": exc.code, "message": exc.message, "field": exc.field}, status)
        return self._reply(env, env.kind + ".reply", result)
