"""A tiny in-process stand-in for a bootstrap / group leader, for the client unit tests only.

It serves ``/bootstrap?verb`` and ``/groupmanager?verb`` on 127.0.0.1 from its own thread and
event loop (so blocking clients can call it from the test's thread), records every request,
and answers from per-verb scripts. The integration tests use a real cluster instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    method: str
    prefix: str
    verb: str
    query: dict[str, str]
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0


def reply_json(data: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(data).encode())


def reply_error(status: int, code: str, message: str, field: str | None = None) -> Reply:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return reply_json({"error": err}, status)


Script = Callable[[Recorded], Reply]


class FakeSnooze:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.scripts: dict[str, Script] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-snooze", daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, verb: str, reply: Reply | Script | list[Reply]) -> None:
        """Answer ``verb`` with a fixed reply, a function of the request, or replies in turn (the last repeats)."""
        if isinstance(reply, Reply):
            self.scripts[verb] = lambda _r: reply
        elif isinstance(reply, list):
            queue = list(reply)
            self.scripts[verb] = lambda _r: queue.pop(0) if len(queue) > 1 else queue[0]
        else:
            self.scripts[verb] = reply

    def calls(self, verb: str) -> list[Recorded]:
        return [r for r in self.requests if r.verb == verb]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verb = request.query_string.split("&", 1)[0].split("=", 1)[0]
        rec = Recorded(request.method, request.path.strip("/"), verb, {k: v for k, v in request.query.items() if k != verb},
                       request.headers.get("Content-Type", ""), await request.read())
        self.requests.append(rec)
        script = self.scripts.get(verb)
        reply = script(rec) if script else reply_error(404, "UNKNOWN_METHOD", f"unknown method {verb!r}", "method")
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bootstrap", self._handle)
        app.router.add_route("*", "/groupmanager", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def start(self) -> FakeSnooze:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def vm_meta(vm_id: str, status: str = "RUNNING", *, lc: str = "lc-1", gm: str = "gm-1",
            ip: str | None = "10.0.0.2", error: str | None = None, xml: str | None = None) -> dict[str, Any]:
    """A ``virtualMachineMetaData`` object in the API's shape."""
    return {
        "virtualMachineId": vm_id,
        "status": status,
        "errorCode": error,
        "virtualMachineLocation": {
            "virtualMachineId": vm_id, "localControllerId": lc, "groupManagerId": gm,
            "groupManagerControlDataAddress": {"address": "127.0.0.1", "port": 5002},
            "localControllerControlDataAddress": {"address": "127.0.0.1", "port": 5003},
        },
        "requestedCapacity": [1.0, 200000.0, 12800.0, 12800.0],
        "usedCapacity": [0.5, 100000.0, 10.0, 20.0],
        "ipAddress": ip,
        "macAddress": "52:54:00:00:00:02",
        "xmlRepresentation": xml or f"<domain type='kvm'><name>{vm_id}</name></domain>",
    }
