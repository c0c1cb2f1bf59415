"""Client side of internal messages: one authenticated request/response over HTTP, and the one
mapping from internal errors to the API's (``api_error``).

Errors of the transport (refused, timed out, garbage) and refusals by the peer all become
``RpcError`` with an ``ErrorCode``; whether to retry is the code's (``code.retryable``).
A reply is accepted only if it is signed and names this request's nonce (``reply_to``): a
captured reply to another request, however authentic, is refused as ``BAD_REPLY``. Every call
encodes a fresh envelope, so a retry is never mistaken for a replay by the peer.

Errors travel one way: a call that fails is answered with the envelope's ``error`` kind
(``{"code", "message", "field"}``, the HTTP status of its code), and arrives here as an
RpcError. Per-item outcomes inside a successful reply (each VM of a batch) are values with an
``errorCode``. Local controllers before this version answered a refused order with
``{"ok": false, "errorCode", "message"}``; ``legacy_refusal`` reads that as the RpcError it
means, so a group manager (upgraded first, os-vif's rule) understands either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import aiohttp

from snooze.codes import CodedError, ErrorCode
from snooze.http import INTERNAL_PATH, MSGPACK, ApiError
from snooze.models import NetworkAddress
from snooze.protocol import (
    BadSignature,
    Keyring,
    ProtocolError,
    as_keyring,
    decode,
    encode,
    new_nonce,
)
from snooze.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

#: What the operator must check when a peer and this process disagree on the key.
KEY_HINT = "check [cluster] key / SNOOZE_CLUSTER_KEY"


class RpcError(CodedError):
    """An internal call that failed: ``code`` says why, ``status`` is the HTTP status of the
    peer's answer (0 when none arrived)."""

    def __init__(self, code: ErrorCode | str, message: str, status: int = 0, field: str | None = None) -> None:
        code = ErrorCode.parse(code)
        super().__init__(message, code=code, field=field)
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def answered(self) -> bool:
        """The peer answered, naming what went wrong (not: no answer, a garbled one, its bug)."""
        return self.status != 0 and self.code not in (ErrorCode.BAD_REPLY, ErrorCode.INTERNAL_ERROR)

    @property
    def api_status(self) -> int:
        return self.status if self.answered and 400 <= self.status < 500 else 503


def legacy_refusal(reply: Any) -> RpcError | None:
    """The error an older local controller's ``{"ok": false, "errorCode", "message"}`` reply
    means (None for any other reply)."""
    if not isinstance(reply, dict) or reply.get("ok") is not False or "errorCode" not in reply:
        return None
    raw = reply.get("errorCode")
    code = ErrorCode.parse(raw) if raw else ErrorCode.ACTION_FAILED
    return RpcError(code, str(reply.get("message") or ""), code.http_status)


def api_error(exc: CodedError, who: str = "", *, unreachable: ErrorCode | None = None,
              failure_status: int | None = 503, field: str | None = None) -> ApiError:
    """The API's answer for an internal error: the one mapping, used wherever one is turned
    into the other.

    * An ApiError is itself.
    * A peer's refusal (an RpcError it answered with a 4xx) keeps its status, code and field.
    * A failure the peer answered and named (a 5xx other than its internal error) keeps its
      code, with ``failure_status`` (503 by default: the request may be retried later; None
      keeps the peer's status).
    * No usable answer (unreachable, timed out, a reply that is none, the peer's own internal
      error): 503, with ``unreachable`` as its code when given (``LOCAL_CONTROLLER_UNREACHABLE``
      …), else the transport's code (``TIMEOUT``, ``UNREACHABLE`` …).
    * A local error (ZooKeeper's, the hypervisor's): its code, with the code's status.

    ``who`` prefixes the message (``"group leader: ..."``); ``field`` is used when the error
    names none.
    """
    if isinstance(exc, ApiError):
        return exc
    message = f"{who}: {exc.message}" if who else exc.message
    if isinstance(exc, RpcError):
        if exc.answered and 400 <= exc.status < 500:
            return ApiError(exc.code, message, field=exc.field or field, status=exc.status)
        if exc.answered:
            return ApiError(exc.code, message, field=exc.field or field,
                            status=exc.status if failure_status is None else failure_status)
        return ApiError(unreachable or exc.code, f"{who}: {exc}" if who else str(exc), field=field, status=503)
    return ApiError(exc.code, message, field=exc.field or field, status=exc.api_status)


class RpcClient:
    def __init__(self, key: bytes | Keyring, sender: str, *, tls: ssl.SSLContext | None = None) -> None:
        """``key``: the cluster key, or the process's keyring (shared: a reload changes it here
        too). ``tls``: peers are called over https and their certificates checked with it (the
        cluster's TLS, ``[node] tls_cert``); None = plain http."""
        self.keys = as_keyring(key)
        self.sender = sender
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._report = RateLimitedLog(log)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, force_close=False, ssl=self.tls if self.tls is not None else True)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, peer: NetworkAddress, kind: str, body: Any = None, *, epoch: int = 0, timeout: float = 5.0,
        keep_alive: bool = True,
    ) -> Any:
        """Send one message and return the peer's answer's body (RpcError otherwise).

        ``keep_alive=False`` for a call to a peer rarely called again (a local controller asking
        the group leader for its group manager): the connection is closed after the answer, so a
        leader is not left holding one idle connection per host of the cluster.
        """
        nonce = new_nonce()
        data = encode(self.keys.signing, kind, self.sender, epoch, body, nonce=nonce)
        url = peer.base_url(tls=self.tls is not None)
        headers = {"Content-Type": MSGPACK}
        if not keep_alive:
            headers["Connection"] = "close"
        try:
            async with self._http().post(
                url + INTERNAL_PATH,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise RpcError(ErrorCode.TIMEOUT, f"{kind} to {url} timed out after {timeout}s") from exc
        except (aiohttp.ClientError, OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RpcError(ErrorCode.UNREACHABLE, f"{kind} to {url}: {exc}") from exc
        try:
            env = decode(self.keys.accepted, raw)
        except ProtocolError as exc:
            refusal = _plain_refusal(raw)
            if _key_mismatch(status, refusal, exc):
                raise self._key_mismatch(peer, kind, status) from exc
            if refusal is not None:
                # The peer could not accept our envelope (key, version, replay window): it
                # answers in plain JSON, since it will not sign an answer to what it refused.
                code, message, field = refusal
                raise RpcError(code, f"{kind} to {url}: {message}", status, field) from exc
            raise RpcError(ErrorCode.BAD_REPLY, f"{kind} to {url}: HTTP {status}, {exc}", status) from exc
        if env.reply_to != nonce:
            raise RpcError(ErrorCode.BAD_REPLY, f"{kind} to {url}: the reply answers another request", status)
        if env.kind == "error":
            body = env.body if isinstance(env.body, dict) else {}
            field = body.get("field")
            raise RpcError(ErrorCode.parse(body.get("code")), str(body.get("message", "")), status,
                           field if isinstance(field, str) else None)
        legacy = legacy_refusal(env.body)
        if legacy is not None:
            raise legacy
        return env.body

    def _key_mismatch(self, peer: NetworkAddress, kind: str, status: int) -> RpcError:
        where = f"{peer.address}:{peer.port}"
        message = f"peer {where} refused our message: cluster key mismatch ({KEY_HINT})"
        # Every call to that peer fails the same way until someone fixes a key: say it once a
        # minute per peer, not once per heartbeat-paced retry.
        self._report(f"key_mismatch {where}", "%s (%s)", message, kind)
        return RpcError(ErrorCode.BAD_HMAC, message, status or ErrorCode.BAD_HMAC.http_status)


def _key_mismatch(status: int, refusal: tuple[ErrorCode, str, str | None] | None, exc: ProtocolError) -> bool:
    """Whether a reply we cannot read means the peer and we hold different cluster keys: it
    refused our HMAC (``BAD_HMAC``, or a bare 401 from a peer that does not name it), or it
    signed its reply with a key that is not ours."""
    if isinstance(exc, BadSignature):
        return True
    if refusal is not None:
        return refusal[0] == ErrorCode.BAD_HMAC
    return status == 401


def _plain_refusal(raw: bytes) -> tuple[ErrorCode, str, str | None] | None:
    """``(code, message, field)`` of a JSON error body, or None if it is not one."""
    try:
        err = json.loads(raw)["error"]
        code, message, field = err["code"], err.get("message", ""), err.get("field")
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(code, str):
        return None
    return ErrorCode.parse(code), str(message), field if isinstance(field, str) else None
