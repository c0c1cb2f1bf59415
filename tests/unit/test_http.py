"""The /path?verb router, JSON errors, and the internal endpoint's fencing."""

from __future__ import annotations

import io
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from snooze.codes import ErrorCode
from snooze.http import (
    INTERNAL_PATH,
    MAX_BODY_BYTES,
    InternalEndpoint,
    VerbRouter,
    new_app,
    read_identifier,
    read_json,
)
from snooze.protocol import decode, encode


def make_app(epoch: list[int]) -> web.Application:
    app = new_app()
    r = VerbRouter(app)

    async def echo(request: web.Request) -> Any:
        return {"got": await read_json(request)}

    async def ident(request: web.Request) -> Any:
        return {"id": await read_identifier(request, "taskId")}

    async def boom(request: web.Request) -> Any:
        raise RuntimeError("bug")

    r.add("thing", "echo", echo, ("POST",))
    r.add("thing", "ident", ident, ("POST",))
    r.add("thing", "boom", boom)
    internal = InternalEndpoint(app, b"k", "server", lambda: epoch[0])

    async def order(env: Any) -> Any:
        return {"done": env.body}

    internal.on("do", order, order=True)
    return app


async def test_router_and_json_errors() -> None:
    async with TestClient(TestServer(make_app([1]))) as client:
        resp = await client.post("/thing?echo", data=b'{"a": 1}')
        assert resp.status == 200 and await resp.json() == {"got": {"a": 1}}
        resp = await client.post("/thing?echo", data=b"{not json")
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "MALFORMED_JSON" and body["error"]["field"] == "body"
        resp = await client.post("/thing?echo", data=b"")
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "EMPTY_BODY"
        resp = await client.get("/thing?echo")
        assert resp.status == 405
        resp = await client.get("/thing?nope")
        assert resp.status == 404 and "echo" in (await resp.json())["error"]["message"]
        big = io.BytesIO(b"[" + b"1," * (MAX_BODY_BYTES // 2) + b"1]")
        resp = await client.post("/thing?echo", data=big)
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "BODY_TOO_LARGE"
        resp = await client.get("/thing?boom")
        assert resp.status == 500 and (await resp.json())["error"]["code"] == "INTERNAL_ERROR"


async def test_identifier_body_bare_or_json() -> None:
    async with TestClient(TestServer(make_app([1]))) as client:
        for data in (b"a4fba1c6-4c8f", b'"a4fba1c6-4c8f"', b'{"taskId": "a4fba1c6-4c8f"}'):
            resp = await client.post("/thing?ident", data=data)
            assert await resp.json() == {"id": "a4fba1c6-4c8f"}
        resp = await client.post("/thing?ident", data=b"two words")
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "taskId"


async def test_internal_orders_from_older_epochs_are_refused() -> None:
    epoch = [5]
    async with TestClient(TestServer(make_app(epoch))) as client:
        resp = await client.post(INTERNAL_PATH, data=encode(b"k", "do", "leader", 5, 42))
        env = decode(b"k", await resp.read())
        assert resp.status == 200 and env.body == {"done": 42}
        resp = await client.post(INTERNAL_PATH, data=encode(b"k", "do", "old-leader", 4, 42))
        env = decode(b"k", await resp.read())
        assert resp.status == 409 and env.kind == "error" and env.body["code"] == ErrorCode.STALE_EPOCH
        resp = await client.post(INTERNAL_PATH, data=encode(b"wrong", "do", "x", 9, 42))
        assert resp.status == 401


# -- hostile input (issue 8) -------------------------------------------------------------


async def post_error(client: TestClient, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, data=data)
    body = await resp.json()
    assert "error" in body, body
    return resp.status, body["error"]


async def test_json_that_cannot_travel_on_is_a_400_naming_the_field() -> None:
    async with TestClient(TestServer(make_app([1]))) as client:
        cases = [
            (b"[" * 10_000 + b"]" * 10_000, "TOO_DEEP", "body"),
            (b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", "TOO_DEEP", "a" + "[0]" * 63),
            (b'{"start": 1e400}', "NUMBER_OUT_OF_RANGE", "start"),
            (b'{"start": Infinity}', "NUMBER_OUT_OF_RANGE", "start"),
            (b'{"start": -Infinity}', "NUMBER_OUT_OF_RANGE", "start"),
            (b'{"start": NaN}', "NUMBER_OUT_OF_RANGE", "start"),
            (b'{"virtualMachineTemplates": [{"memory": 18446744073709551616}]}', "NUMBER_OUT_OF_RANGE",
             "virtualMachineTemplates[0].memory"),
            (b'{"x": [-9223372036854775809]}', "NUMBER_OUT_OF_RANGE", "x[0]"),
            (b'{"name": "\\ud800"}', "INVALID_TEXT", "name"),
            (b'{"\\udfff": 1}', "INVALID_TEXT", "body"),
            (b'"\\ud800x"', "INVALID_TEXT", "body"),
        ]
        for data, code, field in cases:
            status, err = await post_error(client, "/thing?echo", data)
            assert (status, err["code"], err["field"]) == (400, code, field), (data[:40], err)
        ok = b'{"a": [18446744073709551615, -9223372036854775808, 1.5e300, "\\u00e9\\ud83d\\ude00"]}'
        resp = await client.post("/thing?echo", data=ok)
        assert resp.status == 200 and (await resp.json())["got"]["a"][0] == 2**64 - 1


async def test_identifiers_follow_the_one_rule() -> None:
    async with TestClient(TestServer(make_app([1]))) as client:
        for data in (b'"\\ud800"', b'"."', b'".."', b".", b"..", b'"a\\n"', b'"a/b"', b"a/b", b"\xff\xfe",
                     b'{"taskId": ".."}', b'{"taskId": 7}', b'{"taskId": ["a"]}', b"x" * 64, b'"a\\u0000"',
                     b"[" * 5000, b'"' + b"[" * 5000, b'{"taskId": "\\ud800"}', b"\xed\xa0\x80"):
            status, err = await post_error(client, "/thing?ident", data)
            assert status == 400 and err["field"] == "taskId", (data[:20], err)
        resp = await client.post("/thing?ident", data=b"a4fba1c6-4c8f\n")  # curl --data-binary @file
        assert await resp.json() == {"id": "a4fba1c6-4c8f"}


async def test_an_invalid_id_raised_anywhere_is_a_400() -> None:
    from snooze.ids import check_id

    app = new_app()

    async def handler(request: web.Request) -> Any:
        return check_id(request.query.get("id"), "virtualMachineId")

    VerbRouter(app).add("thing", "get", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/thing?get&id=..")
        body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] == "virtualMachineId"
