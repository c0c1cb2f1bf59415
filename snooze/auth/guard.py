"""The public API's gate: every request to a role's HTTP port but the public routes (``/health``,
``/metrics``, ``ping``, the HMAC-signed internal endpoint) must carry a valid token, as
``Authorization: Bearer TOKEN`` or as the password of HTTP basic authentication (any user
name: the original's scripts need one line), and its role must allow the route's access
(``snooze.http.Access``; admin-only routes answer a user 403). The principal is put on the
request (``principal_of``) for handlers that let users touch only what they own.

Every state-changing call (any method but GET, HEAD, OPTIONS, and a verb whose access is not
READ, but the original's ``get*``/``has*`` verbs, reads even when POSTed) is written to the audit log, one JSON line each: when, who (user, role, token id), from
where, what (method, path, verb) and the answer's status, refused ones included.

Off (``[auth] enabled = false``, the local demo): every request is an anonymous admin.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from snooze.auth.tokens import Principal, Role, TokenRecord, TokenStore, make_token, parse_token
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError
from snooze.http import Access, ApiError, count_middleware, json_response, route_access, verb_of

__all__ = ["ANONYMOUS", "GATE", "Guard", "principal_of"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("snooze.audit")

#: Who every request is when authentication is off.
ANONYMOUS = Principal("anonymous", Role.ADMIN)
_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
_READS = ("GET", "HEAD", "OPTIONS")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def principal_of(request: web.Request) -> Principal:
    """Who made the request (ANONYMOUS when authentication is off)."""
    p = request.get(_KEY)
    return p if isinstance(p, Principal) else ANONYMOUS


def _verb(request: web.Request) -> str:
    """The verb of a verb route (``/prefix?verb`` or ``/prefix/verb``), else ""."""
    found = verb_of(request)
    return found[1] if found is not None else ""


def bearer(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer T`` or ``Basic base64(USER:T)``, else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


#: The process's guard, on its app (for handlers that run before the middlewares: an
#: ``Expect: 100-continue`` handler checks the token before the client sends a body).
GATE: web.AppKey[Guard] = web.AppKey("auth_guard")


class Guard:
    """The middleware of one process: ``install(app)`` puts it first but for the request
    counter, so that no other middleware (an upload's, which streams the body itself) serves a
    request before it."""

    def __init__(self, store: TokenStore | None, *, enabled: bool, audit_file: str = "", users: bool = True) -> None:
        self.store = store
        self.enabled = enabled
        #: Whether users' tokens may call this process at all (the bootstrap: the users' entry
        #: point); else every route but the public ones needs an admin's.
        self.users = users
        self.audit_file = audit_file
        #: Refusals by reason (read by /metrics).
        self.refused: dict[str, int] = {}
        #: Tokens of this process's own clients (its EC2 gateway), kept in memory only.
        self.local: dict[str, TokenRecord] = {}

    def mint_local(self, user: str, role: Role) -> str:
        """A token valid on this process only, for as long as it runs (never in ZooKeeper)."""
        rec, token = make_token(user, role, "in-process")
        self.local[rec.id] = rec
        return token

    def install(self, app: web.Application) -> None:
        middlewares = app.middlewares
        counted = count_middleware in middlewares
        if counted:
            middlewares.remove(count_middleware)
        middlewares.insert(0, self.middleware)
        if counted:
            middlewares.insert(0, count_middleware)  # refusals are requests too (/metrics)
        app[GATE] = self

    async def check(self, request: web.Request) -> Principal:
        """The request's principal, put on it; ApiError (401, 403, 503) if it may not go on."""
        access = route_access(request)
        principal = await self._authenticate(request, access)
        self._authorize(principal, access)
        request[_KEY] = principal
        return principal

    def _refuse(self, reason: str, err: ApiError) -> ApiError:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return err

    async def _authenticate(self, request: web.Request, access: Access) -> Principal:
        if not self.enabled or access is Access.PUBLIC:
            return ANONYMOUS
        token = bearer(request)
        if token is None:
            raise self._refuse("missing", ApiError(ErrorCode.UNAUTHORIZED, "this call needs a token: Authorization: Bearer "
                                                   "TOKEN (snooze token create)", field="Authorization"))
        parsed = parse_token(token)
        own = self.local.get(parsed[0]) if parsed is not None else None
        principal: Principal | None = None
        if parsed is None:
            pass  # malformed: no need to ask anyone
        elif own is not None:
            principal = own.principal() if own.matches(parsed[1]) else None
        elif self.store is None:
            raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE, "starting: tokens cannot be checked yet", status=503)
        else:
            principal = await self._stored(token)
        if principal is None:
            raise self._refuse("invalid", ApiError(ErrorCode.UNAUTHORIZED, "the token is malformed, unknown or revoked",
                                                   field="Authorization"))
        return principal

    def _authorize(self, principal: Principal, access: Access) -> None:
        if access is Access.PUBLIC or not self.enabled:
            return
        if (access is Access.ADMIN or not self.users) and not principal.admin:
            raise self._refuse("forbidden", ApiError(ErrorCode.FORBIDDEN, f"user {principal.user} may not do this: it needs "
                                                     "an admin's token", field="Authorization"))

    async def _stored(self, token: str) -> Principal | None:
        assert self.store is not None
        try:
            return await self.store.authenticate(token)
        except CoordinationError as exc:
            raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE, f"tokens cannot be checked now: {exc}", status=503) from exc

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        access = route_access(request)
        verb = _verb(request)
        # The original's reads that are POSTs (getVirtualClusterResponse, polled) are reads.
        audited = ((request.method not in _READS or access in (Access.USER, Access.ADMIN))
                   and not verb.startswith(("get", "has")))
        principal: Principal | None = None
        status = 500
        try:
            try:
                principal = await self._authenticate(request, access)
                self._authorize(principal, access)
            except ApiError as exc:
                status = exc.status
                resp = json_response(exc.to_json(), exc.status)
                if exc.status == 401:
                    resp.headers["WWW-Authenticate"] = 'Bearer realm="snooze"'
                elif exc.status == 503:
                    resp.headers["Retry-After"] = "1"  # the tokens are read as soon as ZooKeeper answers
                return resp
            request[_KEY] = principal
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if audited and access is not Access.PUBLIC:
                self.audit(request, principal, status)

    def audit(self, request: web.Request, principal: Principal | None, status: int) -> None:
        verb = _verb(request)
        line: dict[str, Any] = {
            "time": round(time.time(), 3), "user": principal.user if principal else None,
            "role": str(principal.role) if principal else None, "token": principal.token_id if principal else None,
            "client": request.remote, "method": request.method, "path": request.path, "verb": verb, "status": status,
        }
        text = json.dumps(line, sort_keys=True)
        if not self.audit_file:
            audit_log.info("%s", text)
            return
        try:
            with open(self.audit_file, "a", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as exc:
            log.error("cannot write the audit log %s: %s (the line: %s)", self.audit_file, exc, text)
