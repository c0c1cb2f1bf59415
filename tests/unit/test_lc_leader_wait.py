"""A local controller whose join found no leader yet joins the moment it learns one (the
leader's znode, a leader's heartbeat or a re-join order), not a poll later. A wake-up took
0.5 s longer when this was lost."""

from __future__ import annotations

import asyncio

from localcontroller.service import LocalController
from snooze import config as cfg


async def test_a_join_waiting_for_a_leader_is_woken_when_one_is_learnt() -> None:
    lc = LocalController(cfg.Settings())
    waiting = asyncio.create_task(lc._until_leader(30.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nobody known yet: it waits
    lc._on_leader({"id": "gm-1", "epoch": 1})
    await asyncio.wait_for(waiting, 2.0)  # woken at once, not after its 30 s
    assert lc.leader == {"id": "gm-1", "epoch": 1}


async def test_a_known_leader_is_not_waited_for_and_a_stale_one_is_not_learnt() -> None:
    lc = LocalController(cfg.Settings())
    lc._on_leader({"id": "gm-2", "epoch": 2})
    await asyncio.wait_for(lc._until_leader(30.0), 2.0)
    lc._on_leader({"id": "gm-1", "epoch": 1})  # an older term: ignored
    assert lc.leader == {"id": "gm-2", "epoch": 2}
