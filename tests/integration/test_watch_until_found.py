"""``Coordinator.watch_json(..., until_found=True)`` on a real server: a missing or unreadable
znode is watched until a value is there; after that value is delivered no watch is left, so
later changes cost no notification (what local controllers do with the leader's znode: 2,000
watchers made every failover a storm)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from snooze.coordination import Coordinator

pytestmark = pytest.mark.integration


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def watchers(coord: Coordinator, path: str) -> int:
    """kazoo's data and exists watchers of ``path`` (the watches it asked the server for)."""
    client: Any = coord.client
    return len(client._data_watchers.get(path, ())) + len(client._child_watchers.get(path, ()))


async def test_a_znode_is_watched_until_found_then_not_at_all(coord: Coordinator) -> None:
    path = coord.path("leader")
    seen: list[Any] = []
    watches_before = len(coord._watches)
    coord.watch_json(path, seen.append, until_found=True)
    await until(lambda: seen == [None], "the first read (no znode yet)")
    assert watchers(coord, path) == 1  # watched for its creation

    # There, but not a value: still watched (for a change this time).
    await coord.call(coord.client.create, path, b"not json", makepath=True)
    await until(lambda: seen == [None, None], "the unreadable value")
    await until(lambda: watchers(coord, path) == 1, "the watch for a change")

    await coord.call(coord.client.set, path, b'{"epoch": 3}')
    await until(lambda: seen[-1:] == [{"epoch": 3}], "the value")
    assert watchers(coord, path) == 0 and len(coord._watches) == watches_before  # nothing left behind

    await coord.call(coord.client.set, path, b'{"epoch": 4}')
    await coord.call(coord.client.delete, path)
    await asyncio.sleep(0.5)
    assert seen == [None, None, {"epoch": 3}]  # later changes are not delivered

    # A watch without until_found keeps delivering, as before.
    everything: list[Any] = []
    coord.watch_json(path, everything.append)
    await until(lambda: everything == [None], "the first read")
    await coord.call(coord.client.create, path, b'{"epoch": 5}')
    await until(lambda: everything[-1:] == [{"epoch": 5}], "the created value")
    await coord.call(coord.client.set, path, b'{"epoch": 6}')
    await until(lambda: everything[-1:] == [{"epoch": 6}], "the changed value")
