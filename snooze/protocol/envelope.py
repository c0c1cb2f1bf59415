"""Encoding and checking of the envelope described in ``snooze.protocol``."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from snooze.codes import CodedError, ErrorCode

PROTOCOL_VERSION = 2
# The oldest version this code still reads; see the package docstring for why 1 is not read.
MIN_PROTOCOL_VERSION = 2
MAGIC = b"SZ"
_MAC_LEN = 32
NONCE_BYTES = 16
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class ProtocolError(CodedError):
    """A message that must be dropped. ``code`` names why; ``reason`` (the code in lower case)
    is the counter it is counted under and ``status`` the HTTP status an internal endpoint
    answers it with (the code's)."""

    code = ErrorCode.MALFORMED
    reason: ClassVar[str] = "malformed"
    status: ClassVar[int] = 400

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reason = cls.code.lower()
        cls.status = cls.code.http_status


class MalformedMessage(ProtocolError):
    code = ErrorCode.MALFORMED


class BadSignature(ProtocolError):
    code = ErrorCode.BAD_HMAC


class UnknownVersion(ProtocolError):
    code = ErrorCode.UNKNOWN_VERSION


class ObsoleteVersion(ProtocolError):
    """Authentic, but of a version without replay protection (see the package docstring)."""

    code = ErrorCode.OBSOLETE_VERSION


class Replayed(ProtocolError):
    """Authentic and fresh, but its nonce was already accepted: a copy of an earlier message."""

    code = ErrorCode.REPLAY


class StaleTimestamp(ProtocolError):
    """Authentic, but its timestamp is outside the receiver's window (too old, or from the
    future: a clock skew larger than the window looks the same)."""

    code = ErrorCode.STALE_TIMESTAMP


class OutOfOrder(ProtocolError):
    """A heartbeat older than one already accepted from the same sender (UDP reordering, or a
    replay the nonce cache could not tell apart)."""

    code = ErrorCode.OUT_OF_ORDER


@dataclass(frozen=True)
class Envelope:
    kind: str
    sender: str
    epoch: int
    body: Any = field(default=None)
    version: int = PROTOCOL_VERSION
    timestamp: float = 0.0
    nonce: bytes = b""
    # On a reply: the nonce of the request it answers (empty on a request).
    reply_to: bytes = b""


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def encode(
    key: bytes,
    kind: str,
    sender: str,
    epoch: int,
    body: Any = None,
    *,
    nonce: bytes | None = None,
    reply_to: bytes = b"",
    timestamp: float | None = None,
) -> bytes:
    """Sign one message. ``nonce`` defaults to a fresh random one (pass your own to remember
    it, as the RPC client does to bind the reply); ``reply_to`` is the request's nonce on a
    reply; ``timestamp`` defaults to now (tests pass another)."""
    if nonce is None:
        nonce = new_nonce()
    if len(nonce) != NONCE_BYTES or len(reply_to) not in (0, NONCE_BYTES):
        raise ValueError(f"nonce and reply_to must be {NONCE_BYTES} bytes")
    payload: bytes = msgpack.packb(
        [
            PROTOCOL_VERSION,
            kind,
            sender,
            int(epoch),
            time.time() if timestamp is None else float(timestamp),
            bytes(nonce),
            bytes(reply_to),
            body,
        ],
        use_bin_type=True,
    )
    return MAGIC + _mac(key, payload) + payload


def decode(key: bytes | Iterable[bytes], data: bytes) -> Envelope:
    """Check and unpack one message; raises a ProtocolError subclass, nothing else.

    ``key``: the cluster key, or every key accepted (during a key rotation, ``Keyring.accepted``):
    a message signed with any of them is authentic. Each is compared in constant time, and all
    are compared, so the time taken does not tell which one matched.

    This checks authenticity and shape only; freshness (timestamp window, nonce not seen
    before) is the receiver's ``ReplayGuard``, which keeps the state that needs.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage("message too large")
    if len(data) < len(MAGIC) + _MAC_LEN + 1 or not data.startswith(MAGIC):
        raise MalformedMessage("not a snooze message")
    mac = data[len(MAGIC) : len(MAGIC) + _MAC_LEN]
    payload = data[len(MAGIC) + _MAC_LEN :]
    keys = (key,) if isinstance(key, (bytes, bytearray)) else tuple(key)
    matched = False
    for k in keys:
        matched |= hmac.compare_digest(mac, _mac(k, payload))
    if not matched:
        raise BadSignature("HMAC does not match the cluster key")
    try:
        fields = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage(f"undecodable payload: {exc}") from exc
    if not isinstance(fields, list) or not fields:
        raise MalformedMessage("payload is not an envelope")
    version = fields[0]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MalformedMessage("bad version field")
    if version > PROTOCOL_VERSION:
        raise UnknownVersion(f"protocol version {version} is newer than {PROTOCOL_VERSION}")
    if version < MIN_PROTOCOL_VERSION:
        raise ObsoleteVersion(
            f"protocol version {version} has no replay protection; this process reads "
            f"{MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION} (upgrade the sender)"
        )
    if len(fields) != 8:
        raise MalformedMessage("payload is not an 8-field envelope")
    _, kind, sender, epoch, timestamp, nonce, reply_to, body = fields
    if not isinstance(kind, str) or not isinstance(sender, str):
        raise MalformedMessage("bad header fields")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise MalformedMessage("bad epoch")
    if (
        not isinstance(timestamp, (int, float))
        or isinstance(timestamp, bool)
        or not math.isfinite(timestamp)
    ):
        # NaN compares false with everything: it would slip through any window check.
        raise MalformedMessage("bad timestamp")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise MalformedMessage("bad nonce")
    if not isinstance(reply_to, bytes) or len(reply_to) not in (0, NONCE_BYTES):
        raise MalformedMessage("bad reply_to")
    return Envelope(kind, sender, epoch, body, version, float(timestamp), nonce, reply_to)
