"""Replays against the internal endpoint and the RPC client, over real HTTP on loopback.

The endpoint obeys each envelope once and only while fresh; its replies name the request they
answer, and the client refuses a reply that names another (a captured reply, replayed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from snooze.codes import ErrorCode
from snooze.http import INTERNAL_PATH, MSGPACK, InternalEndpoint, new_app
from snooze.models import NetworkAddress
from snooze.protocol import Envelope, decode, encode
from snooze.rpc import RpcClient, RpcError

KEY = b"k"


def endpoint_app(calls: list[Any], window: float = 30.0) -> tuple[web.Application, InternalEndpoint]:
    app = new_app()
    internal = InternalEndpoint(app, KEY, "server", lambda: 3, window=window)

    async def suspend(env: Envelope) -> Any:
        calls.append(env.body)
        return {"done": env.body}

    internal.on("lc.vmAction", suspend, order=True)
    return app, internal


async def test_a_replayed_order_is_refused_and_not_obeyed() -> None:
    calls: list[Any] = []
    app, internal = endpoint_app(calls)
    async with TestClient(TestServer(app)) as client:
        captured = encode(KEY, "lc.vmAction", "gm-1", 3, {"vmId": "vm-1", "action": "suspend"})
        resp = await client.post(INTERNAL_PATH, data=captured)
        assert resp.status == 200
        for _ in range(3):
            resp = await client.post(INTERNAL_PATH, data=captured)
            body = await resp.json()
            assert resp.status == 409 and body["error"]["code"] == "REPLAY", body
        assert calls == [{"vmId": "vm-1", "action": "suspend"}], "the handler ran once"
        assert internal.rejected == {"replay": 3}


async def test_stale_and_future_orders_are_refused_before_the_handler() -> None:
    calls: list[Any] = []
    app, internal = endpoint_app(calls, window=5)
    async with TestClient(TestServer(app)) as client:
        for skew in (-6, +6):
            data = encode(KEY, "lc.vmAction", "gm-1", 3, {"vmId": "vm-1"}, timestamp=time.time() + skew)
            resp = await client.post(INTERNAL_PATH, data=data)
            body = await resp.json()
            assert resp.status == 401 and body["error"]["code"] == "STALE_TIMESTAMP", body
        assert calls == []
        assert internal.rejected == {"stale_timestamp": 2}


async def test_replies_and_refusals_name_the_request_they_answer() -> None:
    calls: list[Any] = []
    async with TestClient(TestServer(endpoint_app(calls)[0])) as client:
        request = encode(KEY, "lc.vmAction", "gm-1", 3, "x")
        resp = await client.post(INTERNAL_PATH, data=request)
        reply = decode(KEY, await resp.read())
        assert reply.kind == "lc.vmAction.reply" and reply.reply_to == decode(KEY, request).nonce
        old_epoch = encode(KEY, "lc.vmAction", "gm-0", 2, "x")
        resp = await client.post(INTERNAL_PATH, data=old_epoch)
        reply = decode(KEY, await resp.read())
        assert resp.status == 409 and reply.body["code"] == ErrorCode.STALE_EPOCH
        assert reply.reply_to == decode(KEY, old_epoch).nonce


async def test_rpc_client_calls_and_maps_a_refusal_to_its_code() -> None:
    calls: list[Any] = []
    server = TestServer(endpoint_app(calls, window=5)[0])
    async with TestClient(server):
        rpc = RpcClient(KEY, "gm-1")
        peer = NetworkAddress("127.0.0.1", server.port or 0)
        try:
            assert await rpc.call(peer, "lc.vmAction", {"vmId": "a"}, epoch=3) == {"done": {"vmId": "a"}}
            assert await rpc.call(peer, "lc.vmAction", {"vmId": "a"}, epoch=3) == {"done": {"vmId": "a"}}, \
                "the same call twice is two messages, never a replay"
        finally:
            await rpc.close()
        wrong = RpcClient(b"other", "gm-1")
        try:
            with pytest.raises(RpcError) as err:
                await wrong.call(peer, "lc.vmAction", {}, epoch=3)
        finally:
            await wrong.close()
        assert err.value.code is ErrorCode.BAD_HMAC and err.value.status == 401


async def test_rpc_client_refuses_a_captured_reply_to_another_request() -> None:
    """A fake peer answers every request with the (authentic) reply it gave the first one."""
    captured: list[bytes] = []

    async def replaying_peer(request: web.Request) -> web.Response:
        env = decode(KEY, await request.read())
        if not captured:
            captured.append(encode(KEY, env.kind + ".reply", "lc-1", 3, {"ok": True}, reply_to=env.nonce))
        return web.Response(body=captured[0], content_type=MSGPACK)

    app = web.Application()
    app.router.add_post(INTERNAL_PATH, replaying_peer)
    server = TestServer(app)
    async with TestClient(server):
        rpc = RpcClient(KEY, "gm-1")
        peer = NetworkAddress("127.0.0.1", server.port or 0)
        try:
            assert await rpc.call(peer, "lc.vmAction", {"action": "destroy"}) == {"ok": True}
            with pytest.raises(RpcError) as err:
                await rpc.call(peer, "lc.vmAction", {"action": "destroy"})
        finally:
            await rpc.close()
    assert err.value.code is ErrorCode.BAD_REPLY and "another request" in err.value.message


async def test_a_call_without_keep_alive_leaves_no_connection_open_at_the_peer() -> None:
    calls: list[Any] = []
    app = endpoint_app(calls)[0]
    peers: list[tuple[str, int]] = []

    @web.middleware
    async def note_peer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else ("?", 0))
        return await handler(request)

    app.middlewares.insert(0, note_peer)
    server = TestServer(app)
    async with TestClient(server):
        rpc = RpcClient(KEY, "lc-1")
        peer = NetworkAddress("127.0.0.1", server.port or 0)
        try:
            await rpc.call(peer, "lc.vmAction", {"vmId": "a"}, epoch=3)
            await rpc.call(peer, "lc.vmAction", {"vmId": "b"}, epoch=3)
            assert len(set(peers)) == 1, "kept alive: the second call reuses the first one's connection"
            await rpc.call(peer, "lc.vmAction", {"vmId": "c"}, epoch=3, keep_alive=False)
            await rpc.call(peer, "lc.vmAction", {"vmId": "d"}, epoch=3, keep_alive=False)
            assert len(set(peers[2:])) == 2, "without keep-alive each call has a connection of its own"
        finally:
            await rpc.close()
