"""SnoozeClient: what goes on the wire for each verb, and how answers and failures come back."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from snooze.client import (
    Progress,
    SnoozeClient,
    SnoozeClientError,
    libvirt_template,
    sized_template,
)
from snooze.client.aio import normalise_url
from tests.unit.client.fake import FakeSnooze, Recorded, Reply, reply_error, reply_json, vm_meta


def test_urls_are_normalised() -> None:
    assert normalise_url("127.0.0.1:5000/") == "http://127.0.0.1:5000"
    assert normalise_url(" http://h:1 ") == "http://h:1"
    assert SnoozeClient("h:1").url("getCompleteHierarchy") == "http://h:1/bootstrap?getCompleteHierarchy"
    assert SnoozeClient("h:1", prefix="/groupmanager").url("x") == "http://h:1/groupmanager?x"


async def test_hierarchy_verbs_are_gets_on_the_bootstrap(fake: FakeSnooze) -> None:
    fake.on("getGroupLeaderDescription", reply_json({"id": "gm-1", "listenSettings": {}}))
    fake.on("getCompleteHierarchy", reply_json({"groupManagerDescriptions": []}))
    fake.on("getLocalControllerList", reply_json({"localControllers": [{"id": "lc-1"}]}))
    async with SnoozeClient(fake.url) as c:
        assert (await c.get_group_leader_description())["id"] == "gm-1"
        assert await c.get_complete_hierarchy() == {"groupManagerDescriptions": []}
        assert await c.get_local_controller_list() == [{"id": "lc-1"}]
    assert [(r.method, r.prefix) for r in fake.requests] == [("GET", "bootstrap")] * 3


async def test_start_virtual_cluster_posts_the_templates_and_returns_the_bare_task_id(fake: FakeSnooze) -> None:
    fake.on("startVirtualCluster", Reply(body=b"a4fba1c6-4c8f\n", content_type="text/plain"))
    templates = [libvirt_template("<domain/>", rx=1, tx=2),
                 sized_template(vcpus=2, memory=262144, image_id="debian", name="vm1")]
    async with SnoozeClient(fake.url, prefix="groupmanager") as c:
        assert await c.start_virtual_cluster(templates) == "a4fba1c6-4c8f"
    (req,) = fake.calls("startVirtualCluster")
    assert (req.method, req.prefix, req.content_type) == ("POST", "groupmanager", "application/json")
    assert req.json() == {"virtualMachineTemplates": [
        {"libVirtTemplate": "<domain/>", "networkCapacityDemand": {"rxBytes": 1.0, "txBytes": 2.0}},
        {"vcpus": 2, "memory": 262144, "imageId": "debian", "name": "vm1",
         "networkCapacityDemand": {"rxBytes": 12800.0, "txBytes": 12800.0}},
    ]}


@pytest.mark.parametrize("reply", [reply_json("t-1"), reply_json({"taskId": "t-1"})])
async def test_a_task_id_wrapped_in_json_is_accepted(fake: FakeSnooze, reply: Reply) -> None:
    fake.on("startVirtualCluster", reply)
    async with SnoozeClient(fake.url) as c:
        assert await c.start_virtual_cluster({"virtualMachineTemplates": [{"name": "x"}]}) == "t-1"


async def test_no_task_id_is_a_bad_response(fake: FakeSnooze) -> None:
    fake.on("startVirtualCluster", Reply(body=b"", content_type="text/plain"))
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.start_virtual_cluster([libvirt_template("<domain/>")])
    assert e.value.code == "BAD_RESPONSE"


async def test_an_empty_template_list_is_refused_before_sending(fake: FakeSnooze) -> None:
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.start_virtual_cluster([])
    assert (e.value.code, e.value.field, e.value.status) == ("BAD_TEMPLATE", "virtualMachineTemplates", None)
    assert fake.requests == []


async def test_virtual_cluster_response_is_none_while_empty_then_the_json(fake: FakeSnooze) -> None:
    done = {"taskId": "t-1", "errorCode": None, "virtualMachineMetaData": [vm_meta("vm1")]}
    fake.on("getVirtualClusterResponse", [Reply(), reply_json(done)])
    async with SnoozeClient(fake.url) as c:
        assert await c.get_virtual_cluster_response("t-1") is None
        assert await c.get_virtual_cluster_response("t-1") == done
    assert [r.text for r in fake.calls("getVirtualClusterResponse")] == ["t-1", "t-1"], "the bare id, as curl sends it"


async def test_wait_reports_progress_until_done(fake: FakeSnooze) -> None:
    done = {"taskId": "t-1", "errorCode": None,
            "virtualMachineMetaData": [vm_meta("vm1"), vm_meta("vm2", "ERROR", error="NOT_ENOUGH_CAPACITY")]}
    fake.on("getVirtualClusterResponse", [Reply(), Reply(), reply_json(done)])
    seen: list[Progress] = []
    async with SnoozeClient(fake.url) as c:
        response = await c.wait_for_virtual_cluster("t-1", timeout=30, poll_interval=0.01, progress=seen.append)
    assert response == done
    assert [(p.state, p.polls, p.changed) for p in seen] == [("PENDING", 1, True), ("PENDING", 2, False),
                                                             ("DONE", 3, True)]
    assert seen[-1].statuses == {"vm1": "RUNNING", "vm2": "ERROR"}


async def test_wait_gives_up_with_task_timeout(fake: FakeSnooze) -> None:
    fake.on("getVirtualClusterResponse", Reply())
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.wait_for_virtual_cluster("t-1", timeout=0.05, poll_interval=0.01)
    assert e.value.code == "TASK_TIMEOUT" and "t-1" in e.value.message


async def test_wait_rides_out_a_server_error_but_not_an_unknown_task(fake: FakeSnooze) -> None:
    done = {"taskId": "t-1", "virtualMachineMetaData": []}
    fake.on("getVirtualClusterResponse", [reply_error(503, "NO_LEADER", "no group leader"), reply_json(done)])
    async with SnoozeClient(fake.url) as c:
        assert await c.wait_for_virtual_cluster("t-1", timeout=30, poll_interval=0.01) == done
        fake.on("getVirtualClusterResponse", reply_error(404, "UNKNOWN_TASK", "no such task", "taskId"))
        with pytest.raises(SnoozeClientError) as e:
            await c.wait_for_virtual_cluster("nope", timeout=30, poll_interval=0.01)
    assert (e.value.code, e.value.status, e.value.field) == ("UNKNOWN_TASK", 404, "taskId")


@pytest.mark.parametrize("verb,method", [
    ("suspendVirtualMachine", "suspend_virtual_machine"),
    ("resumeVirtualMachine", "resume_virtual_machine"),
    ("shutdownVirtualMachine", "shutdown_virtual_machine"),
    ("rebootVirtualMachine", "reboot_virtual_machine"),
    ("destroyVirtualMachine", "destroy_virtual_machine"),
])
async def test_control_verbs_post_the_bare_vm_id_and_return_the_boolean(fake: FakeSnooze, verb: str,
                                                                         method: str) -> None:
    fake.on(verb, [reply_json(True), reply_json(False)])
    async with SnoozeClient(fake.url) as c:
        assert await getattr(c, method)("vm1") is True
        assert await getattr(c, method)("vm1") is False
    assert [(r.method, r.text) for r in fake.calls(verb)] == [("POST", "vm1")] * 2


async def test_a_non_boolean_control_answer_is_a_bad_response(fake: FakeSnooze) -> None:
    fake.on("destroyVirtualMachine", reply_json({"ok": True}))
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.destroy_virtual_machine("vm1")
    assert e.value.code == "BAD_RESPONSE"


async def test_migrate_posts_vm_and_destination(fake: FakeSnooze) -> None:
    fake.on("migrateVirtualMachine", reply_json(True))
    async with SnoozeClient(fake.url) as c:
        assert await c.migrate_virtual_machine("vm1", "lc-2") is True
    assert fake.calls("migrateVirtualMachine")[0].json() == {"virtualMachineId": "vm1", "localControllerId": "lc-2"}


async def test_metadata_of_one_vm(fake: FakeSnooze) -> None:
    fake.on("getVirtualMachineMetaData", lambda r: reply_json(vm_meta(r.text)))
    async with SnoozeClient(fake.url) as c:
        vm = await c.get_virtual_machine_meta_data("vm7")
    assert vm["virtualMachineId"] == "vm7" and vm["virtualMachineLocation"]["localControllerId"] == "lc-1"


def paged(key: str, items: list[Any], with_total: bool = True) -> Any:
    def script(r: Recorded) -> Reply:
        start, limit = int(r.query["start"]), int(r.query["limit"])
        page: dict[str, Any] = {key: items[start:start + limit], "start": start, "limit": limit}
        if with_total:
            page["total"] = len(items)
        return reply_json(page)
    return script


@pytest.mark.parametrize("with_total", [True, False])
async def test_listing_follows_the_pages(fake: FakeSnooze, with_total: bool) -> None:
    vms = [vm_meta(f"vm{i}") for i in range(5)]
    fake.on("getVirtualMachineDescriptions", paged("virtualMachines", vms, with_total))
    fake.on("getGroupManagerDescriptions", paged("groupManagers", [{"id": "gm-1"}], with_total))
    fake.on("getLocalControllerDescriptions", paged("localControllers", [{"id": f"lc-{i}"} for i in range(4)],
                                                    with_total))
    async with SnoozeClient(fake.url) as c:
        assert [vm["virtualMachineId"] for vm in await c.list_virtual_machines(page=2)] == [f"vm{i}" for i in range(5)]
        assert await c.list_group_managers() == [{"id": "gm-1"}]
        assert len(await c.list_local_controllers(page=2)) == 4
        first = await c.get_virtual_machine_descriptions(start=1, limit=2)
    assert [vm["virtualMachineId"] for vm in first["virtualMachines"]] == ["vm1", "vm2"]
    queries = [(r.method, r.query) for r in fake.calls("getVirtualMachineDescriptions")]
    # v=2: the paged form (an offset as start, the total in the answer), not the original's arrays.
    assert queries[:3] == [("GET", {"start": "0", "limit": "2", "v": "2"}), ("GET", {"start": "2", "limit": "2", "v": "2"}),
                           ("GET", {"start": "4", "limit": "2", "v": "2"})]


async def test_a_json_error_keeps_code_message_field_and_status(fake: FakeSnooze) -> None:
    fake.on("getVirtualMachineMetaData", reply_error(404, "VIRTUAL_MACHINE_NOT_FOUND", "no VM 'x'", "virtualMachineId"))
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.get_virtual_machine_meta_data("x")
    assert (e.value.code, e.value.message, e.value.field, e.value.status) == (
        "VIRTUAL_MACHINE_NOT_FOUND", "no VM 'x'", "virtualMachineId", 404)
    assert str(e.value) == "VIRTUAL_MACHINE_NOT_FOUND: no VM 'x'"


async def test_an_unknown_verb_surfaces_the_servers_code(fake: FakeSnooze) -> None:
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.get_complete_hierarchy()
    assert (e.value.code, e.value.field, e.value.status) == ("UNKNOWN_METHOD", "method", 404)


async def test_a_non_json_error_becomes_http_status(fake: FakeSnooze) -> None:
    fake.on("getCompleteHierarchy", Reply(502, b"Bad Gateway", "text/plain"))
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.get_complete_hierarchy()
    assert (e.value.code, e.value.status) == ("HTTP_502", 502) and "Bad Gateway" in e.value.message


async def test_a_2xx_that_is_not_json_is_a_bad_response(fake: FakeSnooze) -> None:
    fake.on("getCompleteHierarchy", Reply(200, b"<html>", "text/html"))
    async with SnoozeClient(fake.url) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.get_complete_hierarchy()
    assert e.value.code == "BAD_RESPONSE"


async def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with SnoozeClient(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.get_group_leader_description()
    assert (e.value.code, e.value.status) == ("UNREACHABLE", None)


async def test_a_slow_server_is_a_timeout(fake: FakeSnooze) -> None:
    fake.on("getCompleteHierarchy", Reply(body=b"{}", delay=2.0))
    async with SnoozeClient(fake.url, timeout=0.1) as c:
        with pytest.raises(SnoozeClientError) as e:
            await c.get_complete_hierarchy()
    assert e.value.code == "TIMEOUT"


def test_templates_are_checked_before_sending() -> None:
    with pytest.raises(SnoozeClientError) as e:
        sized_template(vcpus=0, memory=1, image_id="i", name="n")
    assert e.value.field == "vcpus"
    with pytest.raises(SnoozeClientError) as e:
        sized_template(vcpus=1, memory=1, image_id="", name="n")
    assert e.value.field == "imageId"
    with pytest.raises(SnoozeClientError) as e:
        libvirt_template("<domain/>", rx=-1)
    assert e.value.field == "networkCapacityDemand.rxBytes"
    with pytest.raises(SnoozeClientError) as e:
        libvirt_template("  ")
    assert e.value.field == "libVirtTemplate"


def test_the_public_surface() -> None:
    import snooze.client as client

    assert sorted(client.__all__) == sorted([
        "Progress", "SnoozeClient", "SnoozeClientError", "SyncSnoozeClient", "libvirt_template",
        "libvirt_template_file", "network_demand", "sized_template", "submission_request"])
    for name in client.__all__:
        assert getattr(client, name) is not None
