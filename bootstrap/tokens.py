"""The API tokens, for admins (snooze.auth): ``GET /tokens`` (never a secret nor its digest),
``POST /tokens`` ``{"user", "role", "name"}`` → ``{"id", "token", "user", "role", "name"}`` (the
token is shown this once), ``DELETE /tokens/{id}`` → ``true`` (404 ``TOKEN_NOT_FOUND``). The
first admin token of a deployment is made without the API: ``snooze token create --zookeeper``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from snooze.auth.tokens import Role, TokenStore, check_networks, check_user
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError
from snooze.http import Access, ApiError, bad_request, json_response, read_json, set_access
from snooze.openapi import (
    Body,
    Operation,
    array,
    boolean,
    component,
    describe,
    number,
    obj,
    ref,
    string,
)
from snooze.rpc import api_error

if TYPE_CHECKING:
    from bootstrap.service import Bootstrap

__all__ = ["TokensApi"]


class TokensApi:
    def __init__(self, bootstrap: Bootstrap) -> None:
        self.b = bootstrap
        app = bootstrap.app
        app.router.add_get("/tokens", self.list)
        app.router.add_post("/tokens", self.create)
        app.router.add_delete("/tokens/{id}", self.revoke)
        set_access(app, "GET", "/tokens", Access.ADMIN)
        _describe(app)

    def _store(self) -> TokenStore:
        if self.b.guard.store is not None:
            return self.b.guard.store
        if self.b.coord is None:
            raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE, "starting: ZooKeeper is not set up yet", status=503)
        self.b.guard.store = TokenStore(self.b.coord)  # authentication off: made here, nothing mirrored
        return self.b.guard.store

    async def list(self, _request: web.Request) -> web.Response:
        try:
            tokens = await self._store().list()
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc
        return json_response({"tokens": [t.public() for t in tokens]})

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise bad_request('the body must be {"user", "role", "name", "networks"}', field="body")
        unknown = sorted(set(body) - {"user", "role", "name", "networks"})
        if unknown:
            raise bad_request(f"unknown field {unknown[0]!r}", field=unknown[0])
        try:
            user = check_user(body.get("user"))
        except ValueError as exc:
            raise bad_request(str(exc), field="user") from exc
        try:
            role = Role(body.get("role", "user"))
        except ValueError:
            raise bad_request(f"role must be one of {', '.join(r.value for r in Role)}", field="role") from None
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise bad_request("name must be a string of at most 200 characters", field="name")
        try:
            networks = check_networks(body.get("networks", []))
        except ValueError as exc:
            raise bad_request(str(exc), field="networks") from exc
        try:
            rec, token = await self._store().create(user, role, name, networks)
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc
        return json_response({**rec.public(), "token": token}, 201)

    async def revoke(self, request: web.Request) -> Any:
        token_id = request.match_info["id"]
        try:
            done = await self._store().revoke(token_id)
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper") from exc
        if not done:
            raise ApiError(ErrorCode.TOKEN_NOT_FOUND, f"no token {token_id[:40]!r}", field="id")
        return json_response(True)


def _describe(app: web.Application) -> None:
    """This module's part of the OpenAPI document (snooze.openapi)."""
    public = {"id": string(), "user": string(), "role": string(enum=[r.value for r in Role]), "name": string(),
              "created": number(), "networks": array(string())}
    token = obj(public, required=("id", "user", "role"))
    component(app, "Token", token)
    describe(app, "GET", "/tokens", Operation(
        "The API tokens (never a secret nor its digest)",
        answers={200: (Body(obj({"tokens": array(ref("Token"))}, required=("tokens",))),)}, errors=(503,)))
    describe(app, "POST", "/tokens", Operation(
        "Make a token; the answer shows it this once",
        request=(Body(obj({"user": string(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", minLength=1, maxLength=64),
                           "role": string(enum=[r.value for r in Role], default=Role.USER.value),
                           "name": string(maxLength=200),
                           "networks": array(string(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", maxLength=63), maxItems=1000)},
                          required=("user",), extra=False)),),
        answers={201: (Body(obj({**public, "token": string()}, required=("id", "user", "role", "token"))),)},
        errors=(503,)))
    describe(app, "DELETE", "/tokens/{id}", Operation(
        "Revoke a token", answers={200: (Body(boolean(const=True)),)}, errors=(404, 503)))
