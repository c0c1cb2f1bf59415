"""snooze.auth's pure parts and its middleware on a real aiohttp server: tokens, how a request
presents one, the access of each route, the answers (401 with WWW-Authenticate, 403), and the
audit log. The tokens here are the process's own (``Guard.mint_local``): no ZooKeeper needed;
tests/integration/test_auth.py runs the same against a cluster's tokens in ZooKeeper."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from snooze.auth import Role, make_token, parse_token
from snooze.auth.guard import ANONYMOUS, Guard, principal_of
from snooze.auth.tokens import TokenRecord, check_networks, check_user, seed_record, seed_value
from snooze.http import Access, VerbRouter, default_access, new_app, set_access


def test_a_token_names_its_record_and_only_its_secret_matches() -> None:
    rec, token = make_token("alice", Role.USER, "laptop")
    parsed = parse_token(token)
    assert parsed is not None and parsed[0] == rec.id
    assert rec.matches(parsed[1]) and not rec.matches(parsed[1][:-1] + ("A" if parsed[1][-1] != "A" else "B"))
    assert rec.digest not in token and len(rec.digest) == 64
    assert TokenRecord.from_json(rec.to_json()) == rec
    assert "sha256" not in rec.public()
    for bad in ("", "snz_", token + "x", token.replace("snz_", "abc_"), "snz_XYZ_" + "a" * 43):
        assert parse_token(bad) is None, bad


def test_a_token_grants_its_networks_to_a_user_and_every_network_to_an_admin() -> None:
    rec, _ = make_token("alice", Role.USER, networks=["blue", "green", "blue"])
    assert rec.networks == ("blue", "green") and TokenRecord.from_json(rec.to_json()) == rec
    assert rec.public()["networks"] == ["blue", "green"]
    alice = rec.principal()
    assert [alice.may_use_network(n) for n in ("blue", "green", "default", "red")] == [True, True, True, False]
    admin = make_token("root", Role.ADMIN)[0].principal()
    assert admin.may_use_network("red") and ANONYMOUS.may_use_network("red")
    old = {k: v for k, v in rec.to_json().items() if k != "networks"}  # a token made before grants existed
    assert TokenRecord.from_json(old).principal().networks == frozenset()
    for bad in (["a/b"], ["x" * 64], "blue", [3], ["ok"] * 1001):
        with pytest.raises(ValueError):
            check_networks(bad)


def test_users_and_seeds_are_checked() -> None:
    assert check_user("alice@example.org") == "alice@example.org"
    for bad in ("", "-x", "a/b", "a" * 65, None, 3, "é"):
        with pytest.raises(ValueError):
            check_user(bad)
    rec, _ = make_token("admin", Role.ADMIN)
    seeded = seed_record(seed_value(rec))
    assert (seeded.id, seeded.digest, seeded.role) == (rec.id, rec.digest, Role.ADMIN)
    for bad in ("", "abc:def", f"{rec.id}:{rec.digest[:-1]}", f"{rec.id}{rec.digest}"):
        with pytest.raises(ValueError):
            seed_record(bad)


def test_verbs_that_read_need_a_token_and_the_rest_an_admin() -> None:
    assert default_access("ping") is Access.PUBLIC
    assert default_access("getCompleteHierarchy") is Access.READ
    assert default_access("hasVirtualMachine") is Access.READ
    assert default_access("destroyVirtualMachine") is Access.ADMIN
    assert default_access("suspendEnergySaver") is Access.ADMIN


async def _ok(_request: web.Request) -> Any:
    return {"who": principal_of(_request).user}


def _app(guard: Guard) -> web.Application:
    app = new_app()
    routes = VerbRouter(app)
    routes.add("bootstrap", "ping", _ok)
    routes.add("bootstrap", "getCompleteHierarchy", _ok, ("GET",))
    routes.add("bootstrap", "destroyVirtualMachine", _ok, ("POST",), access=Access.USER)
    routes.add("bootstrap", "suspendEnergySaver", _ok, ("POST",))

    async def plain(request: web.Request) -> web.Response:
        return web.json_response({"who": principal_of(request).user})

    app.router.add_get("/health", plain)
    app.router.add_get("/metrics", plain)
    app.router.add_get("/images", plain)
    app.router.add_delete("/images/{id}", plain)
    app.router.add_get("/tokens", plain)
    set_access(app, "GET", "/tokens", Access.ADMIN)
    guard.install(app)
    return app


async def _call(client: TestClient[Any, Any], method: str, path: str, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    resp = await client.request(method, path, headers=sent)
    return resp.status, await resp.json(), resp.headers


async def test_the_guard_answers_401_403_and_lets_each_role_through(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    guard = Guard(None, enabled=True, audit_file=str(audit))
    admin = guard.mint_local("root", Role.ADMIN)
    alice = guard.mint_local("alice", Role.USER)
    async with TestClient(TestServer(_app(guard))) as client:
        # Public: no token needed.
        for path in ("/health", "/metrics", "/bootstrap?ping"):
            assert (await _call(client, "GET", path))[0] == 200, path
        # Everything else: 401 without a token, with a JSON error naming the header.
        for method, path in (("GET", "/bootstrap?getCompleteHierarchy"), ("POST", "/bootstrap?destroyVirtualMachine"),
                             ("POST", "/bootstrap?suspendEnergySaver"), ("GET", "/images"), ("DELETE", "/images/x"),
                             ("GET", "/nowhere")):
            status, body, headers = await _call(client, method, path)
            assert status == 401, (method, path, body)
            assert body["error"]["code"] == "UNAUTHORIZED" and body["error"]["field"] == "Authorization"
            assert headers["WWW-Authenticate"].startswith("Bearer")
        # A wrong secret, a malformed token, another scheme: 401 too.
        forged = admin[:-1] + ("A" if admin[-1] != "A" else "B")
        for bad in (forged, "not-a-token"):
            assert (await _call(client, "GET", "/images", bad))[0] == 401
        assert (await _call(client, "GET", "/images", headers={"Authorization": f"Digest {admin}"}))[0] == 401
        # A user: reads and their own VMs' verbs; admin verbs and routes are 403.
        assert (await _call(client, "GET", "/bootstrap?getCompleteHierarchy", alice))[:2] == (200, {"who": "alice"})
        assert (await _call(client, "POST", "/bootstrap?destroyVirtualMachine", alice))[0] == 200
        for method, path in (("POST", "/bootstrap?suspendEnergySaver"), ("DELETE", "/images/x"), ("GET", "/tokens")):
            status, body, _ = await _call(client, method, path, alice)
            assert (status, body["error"]["code"]) == (403, "FORBIDDEN"), (method, path)
        # The admin: everything. Basic authentication with the token as password works too
        # (the original's scripts: one line).
        assert (await _call(client, "POST", "/bootstrap?suspendEnergySaver", admin))[:2] == (200, {"who": "root"})
        basic = base64.b64encode(f"anyone:{admin}".encode()).decode()
        assert (await _call(client, "DELETE", "/images/x", headers={"Authorization": f"Basic {basic}"}))[0] == 200
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    # Every state-changing call, refused ones included, and no read.
    assert {(x["method"], x["path"], x["user"], x["status"]) for x in lines} >= {
        ("POST", "/bootstrap", None, 401), ("DELETE", "/images/x", None, 401), ("POST", "/bootstrap", "alice", 200),
        ("POST", "/bootstrap", "alice", 403), ("POST", "/bootstrap", "root", 200), ("DELETE", "/images/x", "root", 200)}
    assert all(x["method"] != "GET" or x["status"] in (401, 403) or x["path"] == "/tokens" for x in lines)
    assert {x["verb"] for x in lines if x["path"] == "/bootstrap"} == {"destroyVirtualMachine", "suspendEnergySaver"}
    assert guard.refused["missing"] >= 6 and guard.refused["forbidden"] >= 3


async def test_a_process_that_serves_no_users_refuses_their_tokens_and_off_means_anonymous_admin() -> None:
    guard = Guard(None, enabled=True, users=False)
    alice = guard.mint_local("alice", Role.USER)
    admin = guard.mint_local("root", Role.ADMIN)
    async with TestClient(TestServer(_app(guard))) as client:
        assert (await _call(client, "GET", "/bootstrap?getCompleteHierarchy", alice))[0] == 403
        assert (await _call(client, "GET", "/bootstrap?getCompleteHierarchy", admin))[0] == 200
        assert (await _call(client, "GET", "/bootstrap?ping", alice))[0] == 200
    off = Guard(None, enabled=False)
    async with TestClient(TestServer(_app(off))) as client:
        assert (await _call(client, "POST", "/bootstrap?suspendEnergySaver"))[:2] == (200, {"who": ANONYMOUS.user})


async def test_without_its_token_store_yet_a_process_answers_503_not_401() -> None:
    guard = Guard(None, enabled=True)
    _rec, stranger = make_token("bob", Role.USER)
    async with TestClient(TestServer(_app(guard))) as client:
        status, body, headers = await _call(client, "GET", "/images", stranger)
    assert (status, body["error"]["code"]) == (503, "ZOOKEEPER_UNAVAILABLE") and headers["Retry-After"] == "1"
