"""SyncSnoozeClient: the async client's calls, blocking, from any thread — even inside a running loop."""

from __future__ import annotations

import threading

import pytest

from snooze.client import Progress, SnoozeClientError, SyncSnoozeClient, libvirt_template
from tests.unit.client.fake import FakeSnooze, Reply, reply_error, reply_json, vm_meta


def test_blocking_calls_return_what_the_async_client_returns(fake: FakeSnooze) -> None:
    fake.on("getGroupLeaderDescription", reply_json({"id": "gm-1"}))
    fake.on("startVirtualCluster", Reply(body=b"t-1", content_type="text/plain"))
    done = {"taskId": "t-1", "virtualMachineMetaData": [vm_meta("vm1")]}
    fake.on("getVirtualClusterResponse", [Reply(), reply_json(done)])
    fake.on("destroyVirtualMachine", reply_json(True))
    seen: list[Progress] = []
    with SyncSnoozeClient(fake.url) as c:
        assert c.get_group_leader_description() == {"id": "gm-1"}
        assert c.submit_virtual_cluster([libvirt_template("<domain/>")], poll_interval=0.01,
                                        progress=seen.append) == done
        assert c.destroy_virtual_machine("vm1") is True
    assert [p.state for p in seen] == ["PENDING", "DONE"]


def test_errors_are_the_same_exception(fake: FakeSnooze) -> None:
    fake.on("suspendVirtualMachine", reply_error(404, "VIRTUAL_MACHINE_NOT_FOUND", "no VM 'x'", "virtualMachineId"))
    with SyncSnoozeClient(fake.url) as c, pytest.raises(SnoozeClientError) as e:
        c.suspend_virtual_machine("x")
    assert (e.value.code, e.value.status) == ("VIRTUAL_MACHINE_NOT_FOUND", 404)


async def test_usable_from_inside_a_running_event_loop(fake: FakeSnooze) -> None:
    # libcloud and Java-style callers are synchronous but may be called from asyncio code.
    fake.on("getCompleteHierarchy", reply_json({"groupManagerDescriptions": []}))
    with SyncSnoozeClient(fake.url) as c:
        assert c.get_complete_hierarchy() == {"groupManagerDescriptions": []}


def test_close_stops_the_loop_thread_and_is_idempotent(fake: FakeSnooze) -> None:
    fake.on("getCompleteHierarchy", reply_json({}))
    before = threading.active_count()
    c = SyncSnoozeClient(fake.url)
    c.get_complete_hierarchy()
    c.close()
    c.close()
    assert threading.active_count() == before
    assert c.base_url == fake.url and c.prefix == "bootstrap"


def test_a_forgotten_client_is_cleaned_up_when_collected(fake: FakeSnooze) -> None:
    import gc

    fake.on("getCompleteHierarchy", reply_json({}))
    before = threading.active_count()
    c = SyncSnoozeClient(fake.url)
    c.get_complete_hierarchy()
    del c
    gc.collect()
    assert threading.active_count() == before
