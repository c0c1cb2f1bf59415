"""Client side of internal messages: one authenticated request/response over HTTP.

Errors of the transport (refused, timed out, garbage) and refusals by the peer all become
``RpcError`` with a ``code``; callers decide whether it is temporary (retry) or permanent.
A reply is accepted only if it is signed and names this request's nonce (``reply_to``): a
captured reply to another request, however authentic, is refused as ``bad_reply``. Every call
encodes a fresh envelope, so a retry is never mistaken for a replay by the peer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from snooze.http import INTERNAL_PATH, MSGPACK
from snooze.models import NetworkAddress
from snooze.protocol import ProtocolError, decode, encode, new_nonce


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
        nonce = new_nonce()
        data = encode(self.key, kind, self.sender, epoch, body, nonce=nonce)
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
            refusal = _plain_refusal(raw)
            if refusal is not None:
                # The peer could not accept our envelope (key, version, replay window): it
                # answers in plain JSON, since it will not sign an answer to what it refused.
                code, message, field = refusal
                raise RpcError(code, f"{kind} to {peer.url}: {message}", status, field) from exc
            raise RpcError("bad_reply", f"{kind} to {peer.url}: HTTP {status}, {exc}", status) from exc
        if env.reply_to != nonce:
            raise RpcError("bad_reply", f"{kind} to {peer.url}: the reply answers another request", status)
        if env.kind == "error":
            body = env.body or {}
            raise RpcError(str(body.get("code", "error")), str(body.get("message", "")), status, body.get("field"))
        return env.body


def _plain_refusal(raw: bytes) -> tuple[str, str, str | None] | None:
    """``(code, message, field)`` of a JSON error body, or None if it is not one."""
    try:
        err = json.loads(raw)["error"]
        code, message, field = err["code"], err.get("message", ""), err.get("field")
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(code, str):
        return None
    return code.lower(), str(message), field if isinstance(field, str) else None
