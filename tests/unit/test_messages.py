"""The typed internal messages: every class reads back what it writes, and reads a body by
os-vif's rule (unknown fields ignored, missing optional ones defaulted, a missing required field
or a wrong type refused with the field named), also through the internal endpoint (400)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from snooze.codes import ErrorCode
from snooze.http import InternalEndpoint, new_app
from snooze.models import NetworkAddress
from snooze.protocol.messages import (
    KINDS,
    BadMessage,
    Message,
    Monitoring,
    ReceiveDomain,
    Summary,
    VmAction,
)
from snooze.rpc import RpcClient, RpcError
from snooze.scope import Scope
from tests.peers import Network, node

SAMPLES: dict[Any, Any] = {str: "vm-1", int: 3, float: 1.5, bool: True}


def sample_value(hint: Any) -> Any:
    """A value of type ``hint`` for a field (a non-None one for an optional field)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is dict:
        return {"key": [1, "two"]}
    if origin is list:
        return ["a", "b"]
    if hint is Any:
        return {"any": 1}
    if hint in SAMPLES:
        return SAMPLES[hint]
    return sample_value(args[0])


def full(cls: type[Message]) -> Message:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: sample_value(hints[f.name]) for f in dataclasses.fields(cls)})


def required_keys(cls: type[Message]) -> list[str]:
    return [f.metadata.get("wire", f.name) for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


ALL = sorted(KINDS.values(), key=lambda c: c.KIND)


def test_every_kind_has_one_class_named_by_its_kind() -> None:
    assert len(KINDS) == len(set(KINDS)) >= 25
    for kind, cls in KINDS.items():
        assert cls.KIND == kind and "." in kind


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.KIND)
def test_round_trip_through_msgpack(cls: type[Message]) -> None:
    msg = full(cls)
    body = msgpack.unpackb(msgpack.packb(msg.to_wire()), raw=False)
    assert cls.from_wire(body) == msg


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.KIND)
def test_unknown_fields_from_a_newer_sender_are_ignored(cls: type[Message]) -> None:
    msg = full(cls)
    assert cls.from_wire({**msg.to_wire(), "addedInVersion9": {"x": 1}}) == msg


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.KIND)
def test_missing_optional_fields_are_defaulted(cls: type[Message]) -> None:
    wire = full(cls).to_wire()
    minimal = {k: v for k, v in wire.items() if k in required_keys(cls)}
    msg = cls.from_wire(minimal)
    for f in dataclasses.fields(cls):
        if f.metadata.get("wire", f.name) not in minimal:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            assert getattr(msg, f.name) == default


@pytest.mark.parametrize("cls", [c for c in ALL if required_keys(c)], ids=lambda c: c.KIND)
def test_a_missing_required_field_is_refused_naming_it(cls: type[Message]) -> None:
    wire = full(cls).to_wire()
    for key in required_keys(cls):
        with pytest.raises(BadMessage) as info:
            cls.from_wire({k: v for k, v in wire.items() if k != key})
        assert info.value.field == key and info.value.code is ErrorCode.BAD_MESSAGE and info.value.status == 400


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.KIND)
def test_a_field_of_the_wrong_type_is_refused_naming_it(cls: type[Message]) -> None:
    hints = typing.get_type_hints(cls)
    wire = full(cls).to_wire()
    for f in dataclasses.fields(cls):
        if hints[f.name] is Any:
            continue
        key = f.metadata.get("wire", f.name)
        base = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        wrong = 12345 if base[0] is str else "not-it"
        with pytest.raises(BadMessage) as info:
            cls.from_wire({**wire, key: wrong})
        assert info.value.field == key


def test_the_wire_keys_are_the_original_ones() -> None:
    assert VmAction(action="suspend", vm_id="vm-1", local_controller_id="lc-1").to_wire() == {
        "vmId": "vm-1", "action": "suspend", "localControllerId": "lc-1"}
    assert ReceiveDomain(xml="<domain/>", vm_id="vm-1").to_wire() == {"vmId": "vm-1", "xml": "<domain/>"}
    sample = {"id": "lc-1", "timestamp": 5.0, "hostUsage": [1, 2, 3, 4], "virtualMachines": {}, "domains": []}
    assert Monitoring.from_wire(sample).to_wire() == sample
    assert Monitoring.from_wire({"id": "lc-1", "timestamp": 5}).timestamp == 5.0  # an int is a number


def test_a_body_that_is_not_a_map_is_refused() -> None:
    with pytest.raises(BadMessage):
        Summary.from_wire(["lc-1"])
    assert KINDS["lc.describe"].from_wire(None) == KINDS["lc.describe"]()  # no fields: no body needed


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL), st.one_of(
    st.dictionaries(st.sampled_from(["id", "vmId", "xml", "action", "op", "enabled", "hostUsage", "domains",
                                     "summary", "groupManager", "localController", "taskId", "exclude",
                                     "timestamp", "other"]), wire_values),
    wire_values,
))
def test_from_wire_of_anything_is_the_message_or_bad_message(cls: type[Message], body: Any) -> None:
    try:
        msg = cls.from_wire(body)
    except BadMessage as exc:
        assert exc.code is ErrorCode.BAD_MESSAGE
        return
    assert isinstance(msg, cls)
    assert cls.from_wire(msg.to_wire()) == msg


async def test_the_endpoint_answers_a_bad_body_400_naming_the_field() -> None:
    n = node("gm-1", 7001, Network())
    app = new_app()
    internal = InternalEndpoint(app, b"k", "gm-1", lambda: 1)
    scope = Scope("gm", node_id="gm-1", address=n.scope.address, settings=n.scope.settings, rpc=n.scope.rpc,
                  internal=internal, heartbeat=n.heartbeat)
    seen: list[Summary] = []

    async def on_summary(msg: Summary, _env: Any) -> Any:
        seen.append(msg)
        return {"ok": True}

    scope.on_message(Summary, on_summary)
    async with TestClient(TestServer(app)) as client:
        rpc = RpcClient(b"k", "gl")
        peer = NetworkAddress("127.0.0.1", client.port or 0)
        try:
            assert await rpc.call(peer, Summary.KIND, {"id": "gm-2", "summary": {"a": 1}, "new": 1}) == {"ok": True}
            with pytest.raises(RpcError) as info:
                await rpc.call(peer, Summary.KIND, {"summary": {}})
            assert info.value.status == 400 and info.value.code is ErrorCode.BAD_MESSAGE and info.value.field == "id"
            with pytest.raises(RpcError) as info:
                await rpc.call(peer, Summary.KIND, {"id": "gm-2", "summary": "no"})
            assert info.value.field == "summary"
        finally:
            await rpc.close()
            await scope.close()
    assert seen == [Summary("gm-2", {"a": 1})], "the handler saw only the good one, typed"


def test_an_int_no_float_can_hold_is_a_wrong_type_not_a_crash() -> None:
    with pytest.raises(BadMessage) as info:
        KINDS["gm.reservation"].from_wire({"op": "reserve", "ttl": 10**400})
    assert info.value.field == "ttl"


def test_every_role_handler_of_an_internal_message_is_typed() -> None:
    """Handlers register with ``scope.on_message(MessageClass, ...)``; the one exception is the
    submission, whose body is the client's request (checked by snooze.virtualcluster)."""
    root = Path(__file__).resolve().parents[2]
    untyped = []
    for package in ("bootstrap", "groupmanager", "localcontroller"):
        for path in sorted((root / package).rglob("*.py")):
            for kind in re.findall(r'scope\.on\(\s*"([^"]+)"', path.read_text()):
                if kind != "gl.startVirtualCluster":
                    untyped.append(f"{path.relative_to(root)}: {kind}")
    assert untyped == []
