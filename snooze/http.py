"""HTTP plumbing shared by every role: the original's ``/path?verb`` routing and JSON errors.

Public endpoints look like the original Restlet API: ``GET /bootstrap?getGroupLeaderDescription``,
``POST /groupmanager?startVirtualCluster``. Internal messages go to ``POST /snooze/internal`` as
authenticated envelopes (see ``snooze.protocol``). Any problem with a request becomes a 4xx with
a JSON body ``{"error": {"code", "message", "field"}}``; an unexpected failure is logged and
answered with a JSON 500 — it is a bug, never the way bad input is reported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from snooze.protocol import (
    DEFAULT_WINDOW,
    Envelope,
    ProtocolError,
    RejectionLog,
    ReplayGuard,
    decode,
    encode,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
INTERNAL_PATH = "/snooze/internal"
MSGPACK = "application/x-snooze-msgpack"


class ApiError(Exception):
    """A request that cannot be served; becomes a JSON error response."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


def bad_request(message: str, *, field: str | None = None, code: str = "BAD_REQUEST") -> ApiError:
    return ApiError(400, code, message, field=field)


def not_found(message: str, *, field: str | None = None, code: str = "NOT_FOUND") -> ApiError:
    return ApiError(404, code, message, field=field)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data), status=status, content_type="application/json"
    )


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.to_json(), exc.status)
    except web.HTTPRequestEntityTooLarge:
        err = ApiError(413, "BODY_TOO_LARGE", f"request body over {MAX_BODY_BYTES} bytes", field="body")
        return json_response(err.to_json(), 413)
    except web.HTTPException as exc:
        if exc.status >= 400:
            err = ApiError(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason)
            return json_response(err.to_json(), exc.status)
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path_qs)
        err = ApiError(500, "INTERNAL_ERROR", "internal error (a bug: see the server's log)")
        return json_response(err.to_json(), 500)


def new_app() -> web.Application:
    return web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "BODY_TOO_LARGE", f"request body over {MAX_BODY_BYTES} bytes", field="body")
    return await request.read()


async def read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        raise bad_request("request body is empty; expected JSON", field="body", code="EMPTY_BODY")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", field="body", code="MALFORMED_JSON") from exc


async def read_identifier(request: web.Request, what: str) -> str:
    """An id sent as the whole body, bare (as the seed's curl does) or as a JSON string."""
    raw = (await read_body(request)).decode("utf-8", "replace").strip()
    if raw.startswith('"') or raw.startswith("{"):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"{what}: not valid JSON", field=what, code="MALFORMED_JSON") from exc
        if isinstance(value, dict):
            value = value.get(what)
        raw = value if isinstance(value, str) else ""
    if not raw or len(raw) > 256 or any(c.isspace() for c in raw):
        raise bad_request(f"{what}: expected an identifier as the request body", field=what)
    return raw


VerbHandler = Callable[[web.Request], Awaitable[Any]]


@dataclass
class _Verb:
    methods: tuple[str, ...]
    handler: VerbHandler


class VerbRouter:
    """Routes ``/prefix?verb`` to handlers; a handler returns JSON-able data or a Response."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.verbs: dict[str, dict[str, _Verb]] = {}

    def add(self, prefix: str, verb: str, handler: VerbHandler, methods: tuple[str, ...] = ("GET", "POST")) -> None:
        if prefix not in self.verbs:
            self.verbs[prefix] = {}
            self.app.router.add_route("*", f"/{prefix}", self._dispatcher(prefix))
        self.verbs[prefix][verb] = _Verb(methods, handler)

    def _dispatcher(self, prefix: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            verb = request.query_string.split("&", 1)[0].split("=", 1)[0]
            entry = self.verbs[prefix].get(verb)
            if entry is None:
                known = ", ".join(sorted(self.verbs[prefix]))
                raise not_found(
                    f"unknown method {verb!r} on /{prefix}; known: {known}", field="method", code="UNKNOWN_METHOD"
                )
            if request.method not in entry.methods:
                raise ApiError(
                    405, "METHOD_NOT_ALLOWED", f"{verb} needs {' or '.join(entry.methods)}", field="method"
                )
            result = await entry.handler(request)
            if isinstance(result, web.StreamResponse):
                return result
            return json_response(result)

        return dispatch


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
        self, app: web.Application, key: bytes, sender: str, epoch: Callable[[], int],
        *, window: float = DEFAULT_WINDOW,
    ) -> None:
        self.key = key
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
        data = encode(self.key, kind, self.sender, self.epoch(), body, reply_to=request.nonce)
        return web.Response(body=data, status=status, content_type=MSGPACK)

    def _reject(self, request: Envelope, reason: str, status: int, message: str) -> web.Response:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return self._reply(request, "error", {"code": reason, "message": message}, status)

    def _refuse(self, exc: ProtocolError, source: str) -> web.Response:
        # Unauthenticated, or authentic but not to be obeyed (replayed, stale): answer plainly,
        # never with a signed envelope that could pass for an answer to a live request.
        self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
        self._log_refusal(exc, source)
        return json_response(ApiError(exc.status, exc.reason.upper(), str(exc)).to_json(), exc.status)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        try:
            env = decode(self.key, await read_body(request))
        except ProtocolError as exc:
            return self._refuse(exc, str(request.remote))
        try:
            self.guard.check(env)
        except ProtocolError as exc:
            return self._refuse(exc, f"{env.sender} at {request.remote} ({env.kind})")
        entry = self.handlers.get(env.kind)
        if entry is None:
            return self._reject(env, "unknown_kind", 404, f"no handler for {env.kind}")
        handler, order = entry
        if order and env.epoch < self.epoch():
            return self._reject(env, "stale_epoch", 409, f"epoch {env.epoch} is older than {self.epoch()}")
        try:
            result = await handler(env)
        except ApiError as exc:
            return self._reply(env, "error", {"code": exc.code, "message": exc.message, "field": exc.field}, exc.status)
        return self._reply(env, env.kind + ".reply", result)
