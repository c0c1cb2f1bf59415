"""The API tokens, for admins (snooze.auth): ``GET /tokens`` (never a secret nor its digest),
``POST /tokens`` ``{"user", "role", "name"}`` → ``{"id", "token", "user", "role", "name"}`` (the
token is shown this once), ``DELETE /tokens/{id}`` → ``true`` (404 ``TOKEN_NOT_FOUND``). The
first admin token of a deployment is made without the API: ``snooze token create --zookeeper``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from snooze.auth.tokens import Role, TokenStore, check_user
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError
from snooze.http import Access, ApiError, bad_request, json_response, read_json, set_access
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
            raise bad_request('the body must be {"user", "role", "name"}', field="body")
        unknown = sorted(set(body) - {"user", "role", "name"})
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
            rec, token = await self._store().create(user, role, name)
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
