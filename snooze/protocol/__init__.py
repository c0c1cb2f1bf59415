"""The internal wire protocol: msgpack messages in a versioned, authenticated envelope.

Layout of one message (a UDP datagram or an HTTP body)::

    b"SZ" | HMAC-SHA256(key, payload) (32 bytes) | payload
    payload = msgpack([version, kind, sender, epoch, timestamp, nonce, reply_to, body])

``epoch`` is the leader term the sender acts under: a fencing token, so a receiver can refuse
orders from a deposed leader. ``timestamp`` (the sender's wall clock, seconds) and ``nonce``
(16 random bytes) make every message usable once: a receiver's ``ReplayGuard`` refuses one
whose timestamp is outside its window (``[cluster] replay_window``, 30 s by default, so the
cluster's clocks must agree within it) or whose nonce it already accepted. ``reply_to`` is
empty on a request and the request's nonce on its reply; the RPC client checks it, so a
captured reply cannot be passed off as the answer to another request. All of it is under the
HMAC: none of it can be changed without the key. A receiver may accept more than one key
while the cluster's key is rotated (``snooze.protocol.keys``); a sender signs with one.

Versions. The rule is os-vif's: a receiver reads every version from ``MIN_PROTOCOL_VERSION``
up to its own and refuses newer ones, so upgrade group managers before local controllers.
Version 2 added ``nonce`` and ``reply_to``. Version 1 messages are *not* read any more
(refused as ``obsolete_version``): they carry no nonce, so accepting them would let anyone who
captured one replay it — the very hole version 2 closes — and an attacker could always pick
the older version. Going from 1 to 2 is therefore not a rolling upgrade: stop the whole
cluster and start it on the new version (VMs keep running under libvirt; local controllers
report them when they re-join). Later versions keep reading 2 for as long as it stays safe.
"""

from __future__ import annotations

from snooze.protocol.envelope import (
    MAX_MESSAGE_BYTES,
    MIN_PROTOCOL_VERSION,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    BadSignature,
    Envelope,
    MalformedMessage,
    ObsoleteVersion,
    OutOfOrder,
    ProtocolError,
    Replayed,
    StaleTimestamp,
    UnknownVersion,
    decode,
    encode,
    new_nonce,
)
from snooze.protocol.keys import Keyring, as_keyring, fingerprint
from snooze.protocol.replay import DEFAULT_WINDOW, RejectionLog, ReplayGuard

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_MESSAGE_BYTES",
    "MIN_PROTOCOL_VERSION",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "BadSignature",
    "Envelope",
    "Keyring",
    "MalformedMessage",
    "ObsoleteVersion",
    "OutOfOrder",
    "ProtocolError",
    "RejectionLog",
    "ReplayGuard",
    "Replayed",
    "StaleTimestamp",
    "UnknownVersion",
    "as_keyring",
    "decode",
    "encode",
    "fingerprint",
    "new_nonce",
]
