"""Slow and greedy clients against a real server on 127.0.0.1, with raw sockets (issue 8).

A request that declared ``Content-Length: 100`` and sent 2 bytes used to be held for ever, and
each such connection left a traceback in the log. Now the body and the headers each have a
deadline, one client address may hold only so many connections, and the log gets one line per
reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from snooze.dev.ports import free_port
from snooze.http import GUARD, HttpLimits, VerbRouter, new_app, read_json, start_server

WAIT = 15.0  # generous: how long a test waits for the server to act on a bound of 0.5 s


class Server:
    def __init__(self, app: web.Application, port: int) -> None:
        self.app = app
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    @property
    def closed(self) -> dict[str, int]:
        return self.app[GUARD].closed


@contextlib.asynccontextmanager
async def serving(limits: HttpLimits) -> AsyncIterator[Server]:
    app = new_app()

    async def echo(request: web.Request) -> Any:
        return {"got": await read_json(request)}

    VerbRouter(app).add("thing", "echo", echo, ("POST",))
    port = free_port()
    runner = await start_server(app, "127.0.0.1", port, limits)
    try:
        yield Server(app, port)
    finally:
        await runner.cleanup()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails after WAIT s)."""
    chunks = []
    async with asyncio.timeout(WAIT):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def json_of(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


SLOW = HttpLimits(header_timeout=0.5, body_timeout=0.5, idle_timeout=20.0, max_connections_per_client=64)


async def test_a_body_that_never_arrives_gets_408_and_the_connection_closes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(SLOW) as server:
        async def slow() -> bytes:
            reader, writer = await server.connect()
            writer.write(b"POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{}")
            await writer.drain()
            response = await read_until_closed(reader)
            writer.close()
            return response

        for response in await asyncio.gather(*(slow() for _ in range(5))):
            assert response.startswith(b"HTTP/1.1 408"), response[:80]
            assert json_of(response)["error"]["field"] == "body"
        assert server.closed["slow_body"] == 5
        # A normal request is still served.
        reader, writer = await server.connect()
        writer.write(b'POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{"a": 1}')
        assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
    no_tracebacks(caplog)
    lines = [r for r in caplog.records if r.name == "snooze.http" and "body not complete" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # rate-limited: one line for five closes


async def test_headers_that_never_complete_and_silent_connections_are_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(SLOW) as server:
        silent_reader, silent = await server.connect()
        reader, writer = await server.connect()
        writer.write(b"POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        await writer.drain()
        assert await read_until_closed(reader) == b""
        assert await read_until_closed(silent_reader) == b""
        writer.close()
        silent.close()
        assert server.closed["slow_headers"] == 2
    no_tracebacks(caplog)


async def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    limits = HttpLimits(header_timeout=5.0, body_timeout=30.0, idle_timeout=20.0)
    async with serving(limits) as server:
        for _ in range(3):
            _reader, writer = await server.connect()
            writer.write(b"POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.transport.abort()
        await wait_until(lambda: server.closed["client_gone"] == 3, "the server to notice the hang-ups")
    no_tracebacks(caplog)


async def test_connections_over_the_per_address_limit_are_refused_with_429(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    limits = HttpLimits(header_timeout=30.0, body_timeout=30.0, idle_timeout=30.0, max_connections_per_client=4)
    async with serving(limits) as server:
        held = [await server.connect() for _ in range(4)]
        for _ in range(3):
            reader, writer = await server.connect()
            response = await read_until_closed(reader)
            writer.close()
            assert response.startswith(b"HTTP/1.1 429"), response[:80]
            assert json_of(response)["error"]["code"] == "TOO_MANY_CONNECTIONS"
        assert server.closed["too_many_connections"] == 3
        # One of the held connections still works; once one closes, a new one is accepted.
        reader, writer = held[0]
        writer.write(b'POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{"a": 1}')
        assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        await wait_until(lambda: sum(server.app[GUARD].per_address.values()) == 3, "the closed connection to be forgotten")
        reader, writer = await server.connect()
        writer.write(b'POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]')
        assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        for _r, w in held[1:]:
            w.close()
    no_tracebacks(caplog)
    lines = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 1


async def test_malformed_http_is_answered_in_json_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    garbage = [
        b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /thing?echo HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /thing?echo HTTP/1.1\r\nHost: " + b"a" * 10_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # TLS on the HTTP port
        b"POST /thing?echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    async with serving(SLOW) as server:
        for raw in garbage:
            reader, writer = await server.connect()
            writer.write(raw)
            await writer.drain()
            response = await read_until_closed(reader)
            writer.close()
            assert response.startswith(b"HTTP/1.") and b" 400 " in response.split(b"\r\n", 1)[0], response[:80]
            err = json_of(response)["error"]
            assert err["code"] == "MALFORMED_HTTP" and err["field"] == "request" and err["message"], err
        assert server.closed["malformed"] == len(garbage)
    no_tracebacks(caplog)
    lines = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert len(lines) == 1


async def test_a_request_target_without_its_leading_slash_is_served() -> None:
    # libcloud 0.12 sent the original driver's paths as written: "groupmanager?startVirtualCluster".
    async with serving(SLOW) as server:
        reader, writer = await server.connect()
        for _ in range(2):  # and again on the kept-alive connection
            writer.write(b'POST thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"a": 1}')
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            assert json.loads(await reader.readexactly(length)) == {"got": {"a": 1}}
        writer.close()
        # An absolute URL is left to the parser (and routed by its path), '*' too.
        reader, writer = await server.connect()
        writer.write(b'POST http://x/thing?echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{"a": 2}')
        await writer.drain()
        response = await read_until_closed(reader)
        writer.close()
        assert b" 200 " in response.split(b"\r\n", 1)[0] and json_of(response) == {"got": {"a": 2}}
