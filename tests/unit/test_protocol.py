"""The envelope: round trip, authentication, versions, garbage; freshness: the replay guard."""

from __future__ import annotations

import logging
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snooze.protocol import (
    MIN_PROTOCOL_VERSION,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    BadSignature,
    Envelope,
    MalformedMessage,
    ObsoleteVersion,
    OutOfOrder,
    ProtocolError,
    RejectionLog,
    Replayed,
    ReplayGuard,
    StaleTimestamp,
    UnknownVersion,
    decode,
    encode,
    new_nonce,
)
from snooze.protocol.envelope import MAGIC, _mac

KEY = b"k1"
N = b"n" * NONCE_BYTES


def test_round_trip_keeps_kind_sender_epoch_and_body() -> None:
    env = decode(KEY, encode(KEY, "gl.heartbeat", "gm-1", 7, {"a": [1, 2.5, "x"], "b": None}))
    assert (env.kind, env.sender, env.epoch, env.version) == ("gl.heartbeat", "gm-1", 7, PROTOCOL_VERSION)
    assert env.body == {"a": [1, 2.5, "x"], "b": None}
    assert len(env.nonce) == NONCE_BYTES and env.reply_to == b""


def test_every_message_gets_its_own_nonce_and_a_reply_names_its_request() -> None:
    a, b = (decode(KEY, encode(KEY, "k", "s", 1)) for _ in range(2))
    assert a.nonce != b.nonce
    reply = decode(KEY, encode(KEY, "k.reply", "s", 1, nonce=N, reply_to=a.nonce, timestamp=12.5))
    assert (reply.nonce, reply.reply_to, reply.timestamp) == (N, a.nonce, 12.5)
    with pytest.raises(ValueError):
        encode(KEY, "k", "s", 1, nonce=b"short")


def test_wrong_key_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature):
        decode(b"other", encode(KEY, "k", "s", 1, {}))


@pytest.mark.parametrize("offset", [4, 10, 20, 35, -1])  # epoch, timestamp, nonce, reply_to, body
def test_tampered_header_or_body_is_a_bad_signature(offset: int) -> None:
    data = bytearray(encode(KEY, "k", "s", 1, {"x": 1}))
    pos = len(MAGIC) + 32 + offset if offset >= 0 else len(data) + offset
    data[pos] ^= 0x01
    with pytest.raises(BadSignature):
        decode(KEY, bytes(data))


def _signed(fields: object) -> bytes:
    payload = msgpack.packb(fields, use_bin_type=True)
    return MAGIC + _mac(KEY, payload) + payload


def _v(version: int, **changes: object) -> list[object]:
    fields: dict[str, object] = {
        "version": version, "kind": "k", "sender": "s", "epoch": 1, "timestamp": 0.0,
        "nonce": N, "reply_to": b"", "body": None,
    }
    fields.update(changes)
    return list(fields.values())


def test_newer_version_is_refused_own_range_is_read_version_1_is_obsolete() -> None:
    with pytest.raises(UnknownVersion):
        decode(KEY, _signed(_v(PROTOCOL_VERSION + 1)))
    for version in range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION + 1):
        assert decode(KEY, _signed(_v(version))).version == version
    # A version-1 envelope (6 fields, no nonce): authentic, but replayable, so not read.
    with pytest.raises(ObsoleteVersion) as err:
        decode(KEY, _signed([1, "k", "s", 1, 0.0, None]))
    assert err.value.reason == "obsolete_version" and err.value.status == 400


@pytest.mark.parametrize(
    "fields",
    [
        [2, "k", "s"],
        [],
        [1.5, "k", "s", 1, 0.0, N, b"", None],
        _v(0),
        _v(True),  # type: ignore[arg-type]
        _v(2, kind=2),
        _v(2, epoch="epoch"),
        _v(2, epoch=True),
        _v(2, timestamp="now"),
        _v(2, timestamp=math.nan),
        _v(2, timestamp=math.inf),
        _v(2, timestamp=-math.inf),
        _v(2, nonce=b"short"),
        _v(2, nonce="x" * NONCE_BYTES),
        _v(2, nonce=None),
        _v(2, reply_to=b"short"),
        _v(2, reply_to=None),
        _v(2)[:-1],
        _v(2) + [None],
        {"not": "a list"},
    ],
)
def test_signed_but_malformed_envelopes_are_refused(fields: object) -> None:
    with pytest.raises(MalformedMessage):
        decode(KEY, _signed(fields))


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


@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(), st.text(max_size=5),
                          st.binary(max_size=20)), max_size=9))
def test_signed_lists_of_any_scalars_only_raise_protocol_errors(fields: list[object]) -> None:
    try:
        env = decode(KEY, _signed(fields))
    except ProtocolError:
        return
    assert len(env.nonce) == NONCE_BYTES and math.isfinite(env.timestamp)


# -- the replay guard ----------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def msg(ts: float, nonce: bytes | None = None, sender: str = "s") -> Envelope:
    return Envelope("k", sender, 1, None, PROTOCOL_VERSION, ts, nonce or new_nonce())


def test_a_message_is_accepted_once_and_its_replay_refused() -> None:
    clock = Clock()
    guard = ReplayGuard(30, clock=clock)
    env = msg(clock.now)
    guard.check(env)
    clock.now += 10
    with pytest.raises(Replayed) as err:
        guard.check(env)
    assert err.value.reason == "replay" and err.value.status == 409
    guard.check(msg(clock.now))  # another message of the same sender is fine


def test_stale_and_future_timestamps_are_refused_edges_accepted() -> None:
    clock = Clock()
    guard = ReplayGuard(30, clock=clock)
    with pytest.raises(StaleTimestamp, match="old") as err:
        guard.check(msg(clock.now - 30.5))
    assert err.value.reason == "stale_timestamp" and err.value.status == 401
    with pytest.raises(StaleTimestamp, match="ahead"):
        guard.check(msg(clock.now + 30.5))
    guard.check(msg(clock.now - 30))
    guard.check(msg(clock.now + 30))
    assert len(guard) == 2, "refused messages are not remembered"


def test_a_replay_after_the_window_is_refused_as_stale_and_its_nonce_forgotten() -> None:
    clock = Clock()
    guard = ReplayGuard(30, clock=clock)
    env = msg(clock.now)
    guard.check(env)
    clock.now += 31
    with pytest.raises(StaleTimestamp):
        guard.check(env)
    assert len(guard) == 0, "the nonce left the cache with its window"


def test_the_cache_is_bounded_under_a_flood_and_never_readmits_what_it_dropped() -> None:
    clock = Clock()
    guard = ReplayGuard(30, capacity=100, clock=clock)
    flood = [msg(clock.now + i * 0.001) for i in range(1000)]
    for env in flood:
        guard.check(env)
        assert len(guard) <= 100
    for env in flood:  # evicted or not, every replay is refused
        with pytest.raises((Replayed, StaleTimestamp)):
            guard.check(env)
    with pytest.raises(StaleTimestamp, match="overflowed"):
        guard.check(msg(flood[0].timestamp))  # fresh but older than what the cache can vouch for
    guard.check(msg(clock.now + 2))  # newer messages still get in


def test_monotonic_guard_drops_a_senders_older_message_and_bounds_its_sender_map() -> None:
    clock = Clock()
    guard = ReplayGuard(30, monotonic=True, clock=clock)
    guard.check(msg(clock.now, sender="lc-1"))
    with pytest.raises(OutOfOrder):
        guard.check(msg(clock.now - 1, sender="lc-1"))  # fresh nonce, but older than the last
    guard.check(msg(clock.now - 1, sender="lc-2"))  # other senders are unaffected
    for i in range(500):
        clock.now += 1
        guard.check(msg(clock.now, sender=f"spoof-{i}"))
    assert len(guard._last) <= 2 * len(guard) + 16


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 15), st.floats(-40, 40), st.floats(0, 20)), max_size=60),
       st.integers(1, 8), st.booleans())
def test_no_nonce_is_ever_accepted_twice_and_the_cache_stays_bounded(
    steps: list[tuple[int, float, float]], capacity: int, monotonic: bool
) -> None:
    clock = Clock()
    guard = ReplayGuard(10, capacity=capacity, monotonic=monotonic, clock=clock)
    nonces = [bytes([i]) * NONCE_BYTES for i in range(16)]
    stamps: dict[int, float] = {}  # a nonce always comes back with its original timestamp
    accepted: set[int] = set()
    for which, offset, advance in steps:
        clock.now += advance
        ts = stamps.setdefault(which, clock.now + offset)
        try:
            guard.check(msg(ts, nonces[which]))
        except (Replayed, StaleTimestamp, OutOfOrder):
            continue
        assert which not in accepted, "a replay was accepted"
        assert clock.now - 10 <= ts <= clock.now + 10  # as the guard compares: no float rounding of ts - now
        accepted.add(which)
        assert len(guard) <= capacity


def test_a_window_that_is_not_positive_is_a_configuration_error() -> None:
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match="replay_window"):
            ReplayGuard(bad)


def test_refusals_are_logged_at_most_once_per_interval_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(0)
    reject = RejectionLog(logging.getLogger("test.replay"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "test.replay"):
        assert reject(Replayed("again"), "10.0.0.1")
        for _ in range(50):
            assert not reject(Replayed("again"), "10.0.0.1")
        assert reject(StaleTimestamp("old"), "10.0.0.2"), "another reason has its own budget"
        clock.now = 10
        assert reject(Replayed("again"), "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("replayed message from 10.0.0.1")
    assert lines[1].startswith("stale timestamp message from 10.0.0.2")
    assert "50 more refused" in lines[2]
