"""The envelope: round trip, authentication, versions, garbage."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snooze.protocol import (
    PROTOCOL_VERSION,
    BadSignature,
    MalformedMessage,
    ProtocolError,
    UnknownVersion,
    decode,
    encode,
)
from snooze.protocol.envelope import MAGIC, _mac

KEY = b"k1"


def test_round_trip_keeps_kind_sender_epoch_and_body() -> None:
    env = decode(KEY, encode(KEY, "gl.heartbeat", "gm-1", 7, {"a": [1, 2.5, "x"], "b": None}))
    assert (env.kind, env.sender, env.epoch, env.version) == ("gl.heartbeat", "gm-1", 7, PROTOCOL_VERSION)
    assert env.body == {"a": [1, 2.5, "x"], "b": None}


def test_wrong_key_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature):
        decode(b"other", encode(KEY, "k", "s", 1, {}))


def test_tampered_body_is_a_bad_signature() -> None:
    data = bytearray(encode(KEY, "k", "s", 1, {"x": 1}))
    data[-1] ^= 0x01
    with pytest.raises(BadSignature):
        decode(KEY, bytes(data))


def _signed(fields: list[object]) -> bytes:
    payload = msgpack.packb(fields, use_bin_type=True)
    return MAGIC + _mac(KEY, payload) + payload


def test_newer_version_is_refused_older_is_read() -> None:
    with pytest.raises(UnknownVersion):
        decode(KEY, _signed([PROTOCOL_VERSION + 1, "k", "s", 1, 0.0, None]))
    assert decode(KEY, _signed([1, "k", "s", 1, 0.0, None])).kind == "k"


@pytest.mark.parametrize(
    "fields",
    [[1, "k", "s"], [1, 2, "s", 1, 0.0, None], [1, "k", "s", "epoch", 0.0, None], [0, "k", "s", 1, 0.0, None], {"not": "a list"}],
)
def test_signed_but_malformed_envelopes_are_refused(fields: object) -> None:
    with pytest.raises(MalformedMessage):
        decode(KEY, _signed(fields))  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_protocol_errors(data: bytes) -> None:
    try:
        decode(KEY, data)
    except ProtocolError:
        pass


@given(st.binary(max_size=200))
def test_signed_garbage_payload_only_raises_protocol_errors(payload: bytes) -> None:
    try:
        decode(KEY, MAGIC + _mac(KEY, payload) + payload)
    except ProtocolError:
        pass
