"""The sleeping-host entries of the store (``sleeping/<lc>``) on a real ZooKeeper: recorded,
listed with their versions, handed over only if unchanged, cleared only by their manager when
it says so."""

from __future__ import annotations

import pytest

from snooze.coordination import Coordinator
from snooze.coordination.store import Store

pytestmark = pytest.mark.integration

DESC = {"id": "lc-1", "totalCapacity": [8, 16777216, 0, 0], "status": "PASSIVE",
        "wakeupSettings": {"driver": "IPMI", "options": "-I lanplus -H 127.0.0.1 -p 623 -U u -P p"}}


async def test_sleeping_entries_are_recorded_handed_over_once_and_cleared(coord: Coordinator) -> None:
    store = Store(coord)
    assert await store.sleeping() == {}
    await store.put_sleeping("lc-1", DESC, "gm-1")
    await store.put_sleeping("lc-2", {**DESC, "id": "lc-2"}, "gm-1")
    entries = await store.sleeping()
    assert sorted(entries) == ["lc-1", "lc-2"]
    entry, version = entries["lc-1"]
    assert entry["groupManagerId"] == "gm-1" and entry["localController"] == DESC

    # Version-checked: the first handover wins, a second one from the same read does not.
    assert await store.hand_sleeping("lc-1", entry, version, "gm-2")
    assert not await store.hand_sleeping("lc-1", entry, version, "gm-3")
    assert (await store.sleeping())["lc-1"][0]["groupManagerId"] == "gm-2"
    assert not await store.hand_sleeping("lc-9", entry, 0, "gm-2"), "no entry, nothing handed"

    # Cleared by a manager it no longer names: kept; by its manager, or unconditionally (a join): gone.
    await store.clear_sleeping("lc-1", "gm-1")
    assert "lc-1" in await store.sleeping()
    await store.clear_sleeping("lc-1", "gm-2")
    await store.clear_sleeping("lc-2")
    assert await store.sleeping() == {}
    await store.clear_sleeping("lc-2")  # already gone: no error

    with pytest.raises(ValueError):
        await store.put_sleeping("../x", DESC, "gm-1")
    await store.clear_sleeping("../x")
    assert not await store.hand_sleeping("../x", entry, 0, "gm-2")
