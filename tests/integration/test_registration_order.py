"""Two registrations of one znode in flight (a local controller registers when it starts, and
again once it joined a group manager, milliseconds later): the newer value is the one that
stays, on a real server. They ran on two threads, and the older value could land last: the
host's znode then named no group manager, and orders for its VMs were refused with 503."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from snooze.coordination import Coordinator

pytestmark = pytest.mark.integration


async def test_the_newer_of_two_registrations_in_flight_stays(coord: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    path = coord.path("localcontrollers", "lc-1")
    put = coord._put_ephemeral

    async def slow_for_the_first(p: str, data: bytes, owner_check: Any = None) -> None:
        if b'"groupManagerId": null' in data:
            await asyncio.sleep(0.5)  # the start's registration, held up (a busy thread)
        await put(p, data, owner_check)

    monkeypatch.setattr(coord, "_put_ephemeral", slow_for_the_first)
    first = asyncio.create_task(coord.register(path, {"id": "lc-1", "groupManagerId": None}))
    await asyncio.sleep(0.05)
    await coord.register(path, {"id": "lc-1", "groupManagerId": "gm-1"})
    await first
    assert await coord.get_json(path) == {"id": "lc-1", "groupManagerId": "gm-1"}


async def test_a_cancelled_registration_still_in_its_thread_does_not_land_after_the_newer(
        coord: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    # A local controller's registration is a named task: registering again (once joined)
    # cancels the one in flight. Its kazoo call goes on in its thread all the same; before, the
    # lock was released at the cancel, the newer value was written, and then the older one
    # landed over it (CI, test_resize_on_a_real_hypervisor: 503, "no group manager right now").
    path = coord.path("localcontrollers", "lc-2")
    create_async = coord.client.create_async

    def slow_for_the_first(p: str, value: bytes = b"", *args: Any, **kw: Any) -> Any:
        if p == path and b'"groupManagerId": null' in value:
            time.sleep(0.5)  # the start's registration, its thread held up
        return create_async(p, value, *args, **kw)

    monkeypatch.setattr(coord.client, "create_async", slow_for_the_first)
    first = asyncio.create_task(coord.register(path, {"id": "lc-2", "groupManagerId": None}))
    await asyncio.sleep(0.1)
    first.cancel()
    await coord.register(path, {"id": "lc-2", "groupManagerId": "gm-1"})
    await asyncio.sleep(1.0)  # the first thread has long done what it was going to
    assert await coord.get_json(path) == {"id": "lc-2", "groupManagerId": "gm-1"}
