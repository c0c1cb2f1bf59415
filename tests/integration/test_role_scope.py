"""A role's handlers end with the role, on real processes: a group manager elected leader stops
answering for its manager role, and a leader deposed (its process frozen past its ZooKeeper
session, then thawed) stops answering every leader message (``unknown_kind``) while another
group manager leads, and answers as a manager again."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from snooze.codes import ErrorCode
from snooze.dev.localcluster import LocalCluster
from snooze.models import NetworkAddress
from snooze.rpc import RpcClient, RpcError
from tests.support import get, wait_for

pytestmark = pytest.mark.integration

#: Every internal message the leader role answers.
LEADER_KINDS = ("gm.join", "gm.summary", "lc.assign", "gl.hierarchy", "gl.startVirtualCluster",
                "gl.virtualClusterResponse")


def leader(c: LocalCluster) -> dict[str, Any]:
    return get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")


def ask(c: LocalCluster, node_id: str, kind: str, body: Any = None) -> Any:
    """Send one internal message to ``node_id``; its answer, or the RpcError it refused with."""
    port = c.process(node_id)["port"]

    async def call() -> Any:
        client = RpcClient(c.options.key.encode(), "test-client")
        try:
            return await client.call(NetworkAddress("127.0.0.1", port), kind, body, epoch=0, timeout=5)
        except RpcError as exc:
            return exc
        finally:
            await client.close()

    return asyncio.run(call())


def unknown(answer: Any) -> bool:
    return isinstance(answer, RpcError) and answer.code is ErrorCode.UNKNOWN_KIND and answer.status == 404


def test_a_deposed_leader_no_longer_answers_for_the_leader_role(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=1)
    old = str(leader(c)["id"])
    hierarchy = ask(c, old, "gl.hierarchy")
    assert not isinstance(hierarchy, RpcError) and hierarchy["groupLeaderDescription"]["id"] == old
    # Elected, it stopped its manager role: those handlers went with it.
    assert unknown(ask(c, old, "gm.describe"))
    pid = c.process(old)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        new = str(wait_for(lambda: (lid := str(leader(c)["id"])) != old and lid, 30, "another leader"))
    finally:
        os.kill(pid, signal.SIGCONT)
    # Thawed, it finds its session expired and steps down: a manager again.
    wait_for(lambda: not isinstance(ask(c, old, "gm.describe"), RpcError), 30, f"{old} managing again")
    for kind in LEADER_KINDS:
        assert unknown(ask(c, old, kind, {})), f"{old} still answers {kind} after it was deposed"
    answer = ask(c, new, "gl.hierarchy")
    assert not isinstance(answer, RpcError) and answer["groupLeaderDescription"]["id"] == new
