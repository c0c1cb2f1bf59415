"""The internal wire protocol: msgpack messages in a versioned, authenticated envelope.

Layout of one message (a UDP datagram or an HTTP body)::

    b"SZ" | HMAC-SHA256(key, payload) (32 bytes) | payload
    payload = msgpack([version, kind, sender, epoch, timestamp, body])

``epoch`` is the leader term the sender acts under: a fencing token, so a receiver can refuse
orders from a deposed leader. Version rule (os-vif's): a receiver reads every version up to its
own and refuses newer ones, so upgrade group managers before local controllers.
"""

from __future__ import annotations

from snooze.protocol.envelope import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    BadSignature,
    Envelope,
    MalformedMessage,
    ProtocolError,
    UnknownVersion,
    decode,
    encode,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "BadSignature",
    "Envelope",
    "MalformedMessage",
    "ProtocolError",
    "UnknownVersion",
    "decode",
    "encode",
]
