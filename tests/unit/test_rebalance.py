"""The leader's rebalancing: its plan and its sleeping-host handover choice (pure functions), and its
rounds over a fake leader (when it moves, how many, and when it must not)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from groupmanager.leader.balance import Placement, choose_adopter, plan_moves
from snooze import config as cfg
from snooze.models import GroupManagerDescription, ListenSettings, NetworkAddress
from snooze.protocol.messages import Rejoin, ReleaseLocalControllers


def test_moves_go_from_the_fullest_to_the_emptiest_until_within_one() -> None:
    assert plan_moves({"a": 6, "b": 0, "c": 0}, 10) == [("a", "b"), ("a", "c"), ("a", "b"), ("a", "c")]
    counts = {"a": 6, "b": 0, "c": 0}
    for src, dst in plan_moves(counts, 10):
        counts[src] -= 1
        counts[dst] += 1
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(abs(n - 2) <= 1 for n in counts.values())


def test_moves_are_limited_per_round_and_none_when_balanced() -> None:
    assert plan_moves({"a": 6, "b": 0, "c": 0}, 2) == [("a", "b"), ("a", "c")]
    assert plan_moves({"a": 3, "b": 2, "c": 2}, 5) == []
    assert plan_moves({"a": 1, "b": 2}, 5) == []
    assert plan_moves({"a": 9}, 5) == []
    assert plan_moves({"a": 5, "b": 0}, 0) == []


def test_sleeping_hosts_go_to_the_alive_manager_with_fewest_hosts() -> None:
    load = {"a": 3, "b": 1, "c": 1}
    assert [choose_adopter(load, "x") for _ in range(4)] == ["b", "c", "b", "c"]
    assert load == {"a": 3, "b": 3, "c": 3}
    assert choose_adopter({"x": 0}, "x") is None


# -- the rebalancing round, over a fake leader (clock, census and RPCs faked) ----------------




class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rpc:
    """Answers gm.releaseLocalControllers with awake hosts named after the source."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.released = 0

    async def call(self, address: NetworkAddress, kind: str, body: dict[str, Any], **_kw: Any) -> dict[str, Any]:
        self.calls.append((kind, body))
        if kind == ReleaseLocalControllers.KIND:
            out = []
            for _ in range(body["count"]):
                self.released += 1
                out.append({"id": f"lc-{self.released}", "status": "ACTIVE",
                            "localController": {"controlDataAddress": {"address": "127.0.0.1", "port": 30000 + self.released}}})
            return {"released": out}
        return {"ok": True}


class FakePlacement(Placement):
    def __init__(self, role: Any, clock: Clock, counts: dict[str, int]) -> None:
        super().__init__(role, clock)
        self.counts = counts

    async def census(self) -> tuple[dict[str, int], dict[str, tuple[dict[str, Any], int]]]:
        return dict(self.counts), {}


def leader(gms: list[str], **gm: Any) -> tuple[Any, Rpc]:
    settings = cfg.from_dict({"heartbeat": {"interval": 0.5, "timeout": 2.0},
                              "groupmanager": {"rebalance_interval": 1.0, "rebalance_moves": 2, "rebalance_quiet": 3.0, **gm}})
    rpc = Rpc()
    records = [SimpleNamespace(description=GroupManagerDescription(g, ListenSettings(NetworkAddress("127.0.0.1", 7000 + i))))
               for i, g in enumerate(gms)]
    role = SimpleNamespace(scope=SimpleNamespace(settings=settings, rpc=rpc, coord=None, store=None),
                           node=SimpleNamespace(is_leader=True), epoch=3, gms={}, alive=list(records))
    role.alive_gms = lambda: role.alive
    return role, rpc


def test_no_rebalancing_until_membership_is_quiet_then_a_few_moves_per_round() -> None:
    role, rpc = leader(["gm-a", "gm-b", "gm-c"])
    clock = Clock()
    p = FakePlacement(role, clock, {"gm-a": 6, "gm-b": 0, "gm-c": 0})
    asyncio.run(p.rebalance())  # the alive set was just seen for the first time: a change
    assert rpc.calls == []
    clock.now += 5.9  # quiet = 3 heartbeat timeouts = 6 s
    asyncio.run(p.rebalance())
    assert rpc.calls == []
    clock.now += 0.2
    asyncio.run(p.rebalance())
    kinds = [k for k, _ in rpc.calls]
    assert kinds.count(ReleaseLocalControllers.KIND) == 2 and kinds.count(Rejoin.KIND) == 2, kinds
    assert {b["target"] for k, b in rpc.calls if k == ReleaseLocalControllers.KIND} == {"gm-b", "gm-c"}
    assert p.target_for("lc-1", ["gm-b", "gm-c"]) in ("gm-b", "gm-c")
    # While a move has not landed, no new round.
    rpc.calls.clear()
    asyncio.run(p.rebalance())
    assert rpc.calls == []


def test_a_group_manager_joining_or_leaving_restarts_the_quiet_period() -> None:
    role, rpc = leader(["gm-a", "gm-b"])
    clock = Clock()
    p = FakePlacement(role, clock, {"gm-a": 4, "gm-b": 0})
    asyncio.run(p.rebalance())
    clock.now += 10
    role.alive = role.alive[:1]  # gm-b turned silent: a failover is under way
    asyncio.run(p.rebalance())
    assert rpc.calls == []
    clock.now += 10
    asyncio.run(p.rebalance())
    assert rpc.calls == [], "one alive group manager: nothing to balance"
    p.membership_change()
    assert p.membership_changed == clock.now


def test_rebalancing_off_and_not_leading() -> None:
    role, rpc = leader(["gm-a", "gm-b"], rebalance_interval=0.0)
    clock = Clock()
    p = FakePlacement(role, clock, {"gm-a": 4, "gm-b": 0})
    role.node.is_leader = False
    clock.now += 100
    asyncio.run(p.rebalance())
    assert rpc.calls == []


def test_negative_rebalancing_options_are_refused() -> None:
    for option in ("rebalance_interval", "rebalance_moves", "rebalance_quiet"):
        with pytest.raises(cfg.ConfigError, match="rebalance_interval, rebalance_moves and rebalance_quiet"):
            cfg.from_dict({"groupmanager": {option: -1}})
