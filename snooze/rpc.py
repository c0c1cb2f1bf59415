"""Client side of internal messages: one authenticated request/response over HTTP.

Errors of the transport (refused, timed out, garbage) and refusals by the peer all become
``RpcError`` with a ``code``; callers decide whether it is temporary (retry) or permanent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from snooze.http import INTERNAL_PATH, MSGPACK
from snooze.models import NetworkAddress
from snooze.protocol import ProtocolError, decode, encode


class RpcError(Exception):
    def __init__(self, code: str, message: str, status: int = 0, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.field = field


class RpcClient:
    def __init__(self, key: bytes, sender: str) -> None:
        self.key = key
        self.sender = sender
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, force_close=False)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, peer: NetworkAddress, kind: str, body: Any = None, *, epoch: int = 0, timeout: float = 5.0
    ) -> Any:
        data = encode(self.key, kind, self.sender, epoch, body)
        try:
            async with self._http().post(
                peer.url + INTERNAL_PATH,
                data=data,
                headers={"Content-Type": MSGPACK},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise RpcError("timeout", f"{kind} to {peer.url} timed out after {timeout}s") from exc
        except (aiohttp.ClientError, OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RpcError("unreachable", f"{kind} to {peer.url}: {exc}") from exc
        try:
            env = decode(self.key, raw)
        except ProtocolError as exc:
            raise RpcError("bad_reply", f"{kind} to {peer.url}: HTTP {status}, {exc}", status) from exc
        if env.kind == "error":
            body = env.body or {}
            raise RpcError(str(body.get("code", "error")), str(body.get("message", "")), status, body.get("field"))
        return env.body
