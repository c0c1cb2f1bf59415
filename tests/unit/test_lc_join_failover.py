"""A local controller's join across a failover, with its peers faked (the leaders, a group
manager and ZooKeeper's leader znode): measured at 2,000 simulated hosts (docs/scale.md),

- hosts that had to re-join after the leader's loss kept asking the dead leader for a minute
  (they no longer watch the leader's znode, and the new leader, busy reading 2,000
  registrations, sent no heartbeat yet): a leader that does not answer makes the host read
  the znode, and ask the newer leader it names at once;
- a group manager that answered a join late (under a storm of joins) was found "silent" the
  moment the join ended, because it counted as heard when the join was sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from localcontroller.service import LocalController
from snooze import config as cfg
from snooze.codes import ErrorCode
from snooze.models import GroupManagerDescription, ListenSettings, NetworkAddress
from snooze.protocol.messages import AssignLocalController, LocalControllerJoin
from snooze.rpc import RpcError


def gm(node_id: str, port: int, epoch: int = 0) -> dict[str, Any]:
    return GroupManagerDescription(node_id, ListenSettings(NetworkAddress("127.0.0.1", port)), epoch=epoch).to_json()


OLD, NEW, MANAGER = gm("gm-1", 9001, 1), gm("gm-2", 9002, 2), gm("gm-3", 9003)


class FakeCoordinator:
    """The leader's znode names ``leader``; registrations are taken and forgotten."""

    def __init__(self, leader: dict[str, Any]) -> None:
        self.leader = leader
        self.reads = 0

    def path(self, *parts: str) -> str:
        return "/snooze/" + "/".join(parts)

    async def get_json(self, path: str) -> Any:
        assert path == "/snooze/leader"
        self.reads += 1
        return self.leader

    async def wait_connected(self) -> None:
        await asyncio.Event().wait()  # the registration task waits; the test never connects


class FakeRpc:
    """The dead leader refuses connections, the new one assigns MANAGER, which answers the join
    after ``join_delay`` seconds."""

    def __init__(self, join_delay: float = 0.0) -> None:
        self.join_delay = join_delay
        self.calls: list[tuple[int, str]] = []

    async def call(self, address: NetworkAddress, kind: str, body: Any, **_kw: Any) -> Any:
        self.calls.append((address.port, kind))
        if address.port == 9001:
            raise RpcError(ErrorCode.UNREACHABLE, "Connect call failed")
        if kind == AssignLocalController.KIND:
            return {"groupManager": MANAGER, "epoch": 2}
        assert kind == LocalControllerJoin.KIND
        await asyncio.sleep(self.join_delay)
        return {"groupManagerId": "gm-3", "epoch": 2, "monitoringDeltas": True}


@pytest.fixture
def lc(monkeypatch: pytest.MonkeyPatch) -> LocalController:
    settings = cfg.Settings()
    settings.heartbeat.interval = 0.1
    settings.heartbeat.timeout = 0.3
    node = LocalController(settings)
    node.monitor = object()  # type: ignore[assignment]  # only checked to be there

    async def no_domains() -> list[Any]:
        return []

    monkeypatch.setattr(node.hypervisor, "domains", no_domains)
    return node


async def test_a_leader_that_does_not_answer_sends_the_host_to_the_newer_one_its_znode_names(
        lc: LocalController, monkeypatch: pytest.MonkeyPatch) -> None:
    coord, rpc = FakeCoordinator(NEW), FakeRpc()
    monkeypatch.setattr(lc, "coord", coord)
    monkeypatch.setattr(lc, "rpc", rpc)
    lc._on_leader(OLD)
    wait = await lc._join_once()
    assert wait == 0.0, "asked again at once, not after a backoff"
    assert lc.leader == NEW and coord.reads == 1
    assert await lc._join_once() is None
    assert lc.gm is not None and lc.gm.id == "gm-3"
    assert rpc.calls == [(9001, AssignLocalController.KIND), (9002, AssignLocalController.KIND),
                         (9003, LocalControllerJoin.KIND)]
    lc.scope.cancel("register")


async def test_the_znode_naming_the_same_leader_keeps_the_backoff_and_is_not_read_in_a_loop(
        lc: LocalController, monkeypatch: pytest.MonkeyPatch) -> None:
    coord, rpc = FakeCoordinator(OLD), FakeRpc()  # not expired yet: still names the dead one
    monkeypatch.setattr(lc, "coord", coord)
    monkeypatch.setattr(lc, "rpc", rpc)
    lc._on_leader(OLD)
    first = await lc._join_once()
    second = await lc._join_once()  # at once: within a heartbeat interval of the first read
    assert first is not None and first > 0 and second is not None and second > 0
    assert lc.leader == OLD and lc.gm is None
    assert coord.reads == 1


async def test_a_group_manager_that_answered_the_join_late_counts_as_heard_when_it_answered(
        lc: LocalController, monkeypatch: pytest.MonkeyPatch) -> None:
    rpc = FakeRpc(join_delay=0.5)  # longer than the 0.3 s timeout
    monkeypatch.setattr(lc, "coord", FakeCoordinator(NEW))
    monkeypatch.setattr(lc, "rpc", rpc)
    lc._on_leader(NEW)
    assert await lc._join_once() is None
    assert lc.gm is not None and lc.gm_detector.alive("gm-3"), "it just answered: not silent"
    lc.scope.cancel("register")
