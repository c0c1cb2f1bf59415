"""The leader role against fake group managers: the hierarchy does not wait for one that does
not answer (its last answer, marked stale), a lone leader says why no local controller can be
hosted (and logs it once), and a leader cut off from ZooKeeper neither assigns, nor accepts
joins, nor heartbeats."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from groupmanager.leader import LeaderRole
from groupmanager.leader.members import GroupManagerRecord
from snooze.codes import ErrorCode
from snooze.http import ApiError
from snooze.models import GroupManagerDescription, ListenSettings, NetworkAddress
from snooze.protocol.messages import AssignLocalController, DescribeGroupManager, GroupManagerJoin
from snooze.rpc import RpcError
from tests.peers import Network, node, settings


@dataclass
class Leading:
    """The group manager process as its leader role sees it (``LeaderNode``)."""

    is_leader: bool = True

    def leader_description(self, epoch: int) -> GroupManagerDescription:
        return GroupManagerDescription("gl", ListenSettings(NetworkAddress("127.0.0.1", 7000)), epoch=epoch)


def gm(gm_id: str, port: int) -> GroupManagerRecord:
    return GroupManagerRecord(GroupManagerDescription(gm_id, ListenSettings(NetworkAddress("127.0.0.1", port))))


def leader(net: Network, parent: Leading | None = None, **options: Any) -> tuple[LeaderRole, Any]:
    n = node("gl", 7000, net, settings=settings(**options))
    role = LeaderRole(n.scope.child("leader"), parent or Leading(), epoch=4)
    role.started_at -= 60  # long past the settling time of a new leader
    return role, n


async def test_the_hierarchy_shows_a_silent_group_manager_as_last_known_and_stale() -> None:
    net = Network()
    answers = {"n": 0}

    def describe(_body: Any) -> Any:
        answers["n"] += 1
        return {"groupManager": {"id": "gm-b", "localControllers": [{"id": "lc-1"}]}}

    def cut_off(_body: Any) -> Any:
        # What the real client raises when the answer does not come within the wait.
        raise RpcError(ErrorCode.TIMEOUT, f"gm.describe to http://127.0.0.1:7002 timed out after {role.describe_timeout()}s")

    net.serve(7002, DescribeGroupManager.KIND, describe)
    role, _n = leader(net)
    role.gms.update({"gm-b": gm("gm-b", 7002), "gm-c": gm("gm-c", 7003)})
    first = await role.hierarchy()
    by_id = {d["id"]: d for d in first["groupManagerDescriptions"]}
    assert by_id["gm-b"] == {"id": "gm-b", "localControllers": [{"id": "lc-1"}]}
    assert by_id["gm-c"]["stale"] is True and "UNREACHABLE" in by_id["gm-c"]["error"], "never answered: its join description"

    assert role.describe_timeout() == 2.0, "about a heartbeat interval (3 s by default), at most 2 s"
    role.scope.settings.heartbeat.interval = 0.2
    assert role.describe_timeout() == 1.0, "at least a second"
    net.serve(7002, DescribeGroupManager.KIND, cut_off)
    second = await role.hierarchy()
    b = {d["id"]: d for d in second["groupManagerDescriptions"]}["gm-b"]
    assert b["stale"] is True and "timed out" in b["error"], b
    assert b["localControllers"] == [{"id": "lc-1"}], "its last answer"
    assert "staleForSeconds" in b and answers["n"] == 1
    assert "warnings" not in second, "two group managers besides the leader"


async def test_a_group_manager_not_heard_from_is_not_asked() -> None:
    net = Network()
    role, _n = leader(net)
    silent = gm("gm-old", 7004)
    silent.last_seen -= 3600
    role.gms["gm-old"] = silent
    h = await role.hierarchy()
    assert h["groupManagerDescriptions"] == [] and net.calls == []
    assert "no group manager is alive besides the group leader" in h["warnings"][0]


async def test_a_lone_leader_refuses_local_controllers_saying_why_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    role, _n = leader(Network())
    ask = AssignLocalController({"id": "lc-1"})
    with caplog.at_level(logging.WARNING, logger="groupmanager.leader.role"):
        for _ in range(5):
            with pytest.raises(ApiError) as refused:
                await role._on_assign(ask, None)  # type: ignore[arg-type]
            assert refused.value.code is ErrorCode.NO_GROUP_MANAGER and refused.value.code.retryable
            assert "the group leader does not manage local controllers: run at least 2 group managers, " \
                   "3 to survive the loss of one" in refused.value.message
    warnings = [r.getMessage() for r in caplog.records if "none is alive besides the group leader" in r.getMessage()]
    assert len(warnings) == 1 and "lc-1" in warnings[0]


async def test_a_leader_cut_off_from_zookeeper_assigns_nothing_accepts_no_join_and_sends_no_heartbeat() -> None:
    parent = Leading(is_leader=False)
    role, n = leader(Network(), parent)
    role.gms["gm-b"] = gm("gm-b", 7002)
    with pytest.raises(ApiError) as refused:
        await role._on_assign(AssignLocalController({"id": "lc-1"}), None)  # type: ignore[arg-type]
    assert refused.value.code is ErrorCode.LEADER_SUSPENDED
    join = GroupManagerJoin(gm("gm-c", 7003).description.to_json())
    with pytest.raises(ApiError) as refused:
        await role._on_gm_join(join, None)  # type: ignore[arg-type]
    assert refused.value.code is ErrorCode.LEADER_SUSPENDED and "gm-c" not in role.gms
    sent: list[Any] = []
    n.heartbeat.send = lambda *args, **kw: sent.append(args)  # type: ignore[method-assign]
    await role._heartbeat()
    assert sent == []
    parent.is_leader = True
    await role._heartbeat()
    assert len(sent) == 1 and sent[0][0] == "gl.heartbeat"
