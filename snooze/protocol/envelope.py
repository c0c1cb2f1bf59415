"""Encoding and checking of the envelope described in ``snooze.protocol``."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAGIC = b"SZ"
_MAC_LEN = 32
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class ProtocolError(Exception):
    """A message that must be dropped; ``reason`` is the counter it is counted under."""

    reason = "malformed"


class MalformedMessage(ProtocolError):
    reason = "malformed"


class BadSignature(ProtocolError):
    reason = "bad_hmac"


class UnknownVersion(ProtocolError):
    reason = "unknown_version"


@dataclass(frozen=True)
class Envelope:
    kind: str
    sender: str
    epoch: int
    body: Any = field(default=None)
    version: int = PROTOCOL_VERSION
    timestamp: float = 0.0


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def encode(key: bytes, kind: str, sender: str, epoch: int, body: Any = None) -> bytes:
    payload = msgpack.packb(
        [PROTOCOL_VERSION, kind, sender, int(epoch), time.time(), body], use_bin_type=True
    )
    return MAGIC + _mac(key, payload) + payload


def decode(key: bytes, data: bytes) -> Envelope:
    """Check and unpack one message; raises a ProtocolError subclass, nothing else."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage("message too large")
    if len(data) < len(MAGIC) + _MAC_LEN + 1 or not data.startswith(MAGIC):
        raise MalformedMessage("not a snooze message")
    mac = data[len(MAGIC) : len(MAGIC) + _MAC_LEN]
    payload = data[len(MAGIC) + _MAC_LEN :]
    if not hmac.compare_digest(mac, _mac(key, payload)):
        raise BadSignature("HMAC does not match the cluster key")
    try:
        fields = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage(f"undecodable payload: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 6:
        raise MalformedMessage("payload is not a 6-field envelope")
    version, kind, sender, epoch, timestamp, body = fields
    if not isinstance(version, int) or version < 1:
        raise MalformedMessage("bad version field")
    if version > PROTOCOL_VERSION:
        raise UnknownVersion(f"protocol version {version} is newer than {PROTOCOL_VERSION}")
    if not isinstance(kind, str) or not isinstance(sender, str) or not isinstance(epoch, int):
        raise MalformedMessage("bad header fields")
    if not isinstance(timestamp, (int, float)):
        raise MalformedMessage("bad timestamp")
    return Envelope(kind, sender, epoch, body, version, float(timestamp))
