"""Unit-test nodes: a real ``Scope`` over real (unstarted) endpoints, and fake peers behind a
fake transport. A component under test gets exactly what a role gives it in the process (its
scope), never a fake parent object; only the peers it talks to are scripted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snooze import config as cfg
from snooze.codes import ErrorCode
from snooze.coordination import Coordinator
from snooze.heartbeat import HeartbeatEndpoint
from snooze.http import ApiError, InternalEndpoint, new_app
from snooze.models import NetworkAddress
from snooze.protocol import Envelope, ProtocolError
from snooze.rpc import RpcError, legacy_refusal
from snooze.scope import Scope

KEY = b"unit-test-key"

#: A fake peer's answer to one kind: body in, reply out (may be async, may raise RpcError).
PeerHandler = Callable[[Any], Any]


@dataclass
class Network:
    """Fake peers by port: each a dict kind -> handler(body). Calls are recorded."""

    peers: dict[int, dict[str, PeerHandler]] = field(default_factory=dict)
    calls: list[tuple[int, str, Any]] = field(default_factory=list)

    def rpc(self) -> FakeRpc:
        return FakeRpc(self)

    def serve(self, port: int, kind: str, handler: PeerHandler) -> None:
        self.peers.setdefault(port, {})[kind] = handler

    def kinds(self, kind: str) -> list[tuple[int, Any]]:
        """(port, body) of every call of ``kind`` so far."""
        return [(port, body) for port, k, body in self.calls if k == kind]


class FakeRpc:
    """The ``snooze.scope.Rpc`` a scope is given, delivering to the network's fake peers."""

    def __init__(self, net: Network) -> None:
        self.net = net

    async def call(self, peer: NetworkAddress, kind: str, body: Any = None, *, epoch: int = 0,
                   timeout: float = 5.0) -> Any:
        self.net.calls.append((peer.port, kind, body))
        handler = self.net.peers.get(peer.port, {}).get(kind)
        if handler is None:
            raise RpcError(ErrorCode.UNREACHABLE, f"{kind} to port {peer.port}: connection refused")
        result = handler(body)
        if asyncio.iscoroutine(result):
            result = await result
        refusal = legacy_refusal(result)  # as the real client reads an older peer's refusal
        if refusal is not None:
            raise refusal
        return result


@dataclass
class Node:
    """One process's view for a unit test: its scope and the endpoint its handlers land in."""

    scope: Scope
    internal: InternalEndpoint
    heartbeat: HeartbeatEndpoint

    async def ask(self, kind: str, body: Any = None, epoch: int = 1) -> Any:
        """Deliver an internal message as the endpoint would (ApiError as its refusal)."""
        entry = self.internal.handlers.get(kind)
        if entry is None:
            raise RpcError(ErrorCode.UNKNOWN_KIND, f"no handler for {kind}", 404)
        handler, _order = entry
        try:
            return await handler(Envelope(kind, "peer", epoch, body))
        except ProtocolError as exc:  # a body it cannot read (BadMessage): the endpoint's 400
            raise ApiError(exc.code, exc.message, field=exc.field) from exc

    def peer(self, kind: str) -> PeerHandler:
        """This node's handler of ``kind`` as a fake peer of others (ApiError -> RpcError)."""

        async def handle(body: Any) -> Any:
            try:
                return await self.ask(kind, body)
            except ApiError as exc:
                raise RpcError(exc.code, exc.message, exc.status, exc.field) from exc

        return handle


def node(node_id: str, port: int, net: Network, *, settings: cfg.Settings | None = None,
         coord: Coordinator | None = None, epoch: int = 1) -> Node:
    """A process ``node_id`` at 127.0.0.1:``port`` whose RPC goes to ``net``'s fake peers."""
    internal = InternalEndpoint(new_app(), KEY, node_id, lambda: epoch)
    heartbeat = HeartbeatEndpoint(KEY, node_id)
    scope = Scope(node_id, node_id=node_id, address=NetworkAddress("127.0.0.1", port),
                  settings=settings or cfg.Settings(), rpc=net.rpc(), internal=internal, heartbeat=heartbeat,
                  coordinator=lambda: coord, epoch=lambda: epoch)
    return Node(scope, internal, heartbeat)


def settings(**groupmanager: Any) -> cfg.Settings:
    """Default settings with some ``[groupmanager]`` options set."""
    s = cfg.Settings()
    for key, value in groupmanager.items():
        setattr(s.groupmanager, key, value)
    return s
