"""The Java-style bindings: the seed's Java example, line by line, and the object model."""

from __future__ import annotations

from typing import Any

import pytest

from snooze.client.java import (
    CommunicatorException,
    CommunicatorFactory,
    GroupManagerDescription,
    NetworkAddress,
    NetworkDemand,
    VirtualClusterSubmissionRequest,
    VirtualClusterSubmissionResponse,
    VirtualMachineTemplate,
)
from tests.unit.client.fake import FakeSnooze, Reply, reply_error, reply_json, vm_meta


def leader_description(port: int) -> dict[str, Any]:
    return {"id": "gm-2", "hostname": "h", "epoch": 3,
            "listenSettings": {"controlDataAddress": {"address": "127.0.0.1", "port": port},
                               "monitoringDataAddress": {"address": "127.0.0.1", "port": 1}}}


def test_the_seeds_java_example(fake: FakeSnooze) -> None:
    fake.on("getGroupLeaderDescription", reply_json(leader_description(fake.port)))
    fake.on("startVirtualCluster", Reply(body=b"a4fba1c6", content_type="text/plain"))
    fake.on("getVirtualClusterResponse", [Reply(), reply_json({"taskId": "a4fba1c6", "errorCode": None,
                                                               "virtualMachineMetaData": [vm_meta("debian1")]})])

    # Gets the leader address.
    bootstrapAddress = NetworkAddress()
    bootstrapAddress.setAddress("127.0.0.1")
    bootstrapAddress.setPort(fake.port)
    bootstrapCommunicator = CommunicatorFactory.newBootstrapCommunicator(bootstrapAddress)
    groupLeaderDescription = bootstrapCommunicator.getGroupLeaderDescription()
    # Construct the virtual machine templates array.
    virtualClusterDescription = VirtualClusterSubmissionRequest()
    virtualMachineTemplates: list[VirtualMachineTemplate] = []
    virtualMachineTemplate = VirtualMachineTemplate()
    virtualMachineTemplate.setLibVirtTemplate("<domain><name>debian1</name></domain>")
    networkDemand = NetworkDemand()
    networkDemand.setRxBytes(12800)
    networkDemand.setTxBytes(12800)
    virtualMachineTemplate.setNetworkCapacityDemand(networkDemand)
    virtualMachineTemplates.append(virtualMachineTemplate)
    virtualClusterDescription.setVirtualMachineTemplates(virtualMachineTemplates)
    # Call to the startVirtualCluster Method.
    groupLeaderAddress = groupLeaderDescription.getListenSettings().getControlDataAddress()
    groupLeaderCommunicator = CommunicatorFactory.newGroupManagerCommunicator(groupLeaderAddress)
    taskIdentifier = groupLeaderCommunicator.startVirtualCluster(virtualClusterDescription)

    assert taskIdentifier == "a4fba1c6"
    assert groupLeaderAddress.getPort() == fake.port and groupLeaderDescription.getEpoch() == 3
    (start,) = fake.calls("startVirtualCluster")
    assert start.prefix == "groupmanager", "the seed sends the cluster to the group leader"
    assert start.json() == {"virtualMachineTemplates": [{
        "libVirtTemplate": "<domain><name>debian1</name></domain>",
        "networkCapacityDemand": {"rxBytes": 12800.0, "txBytes": 12800.0}}]}

    assert groupLeaderCommunicator.getVirtualClusterResponse(taskIdentifier) is None, "not available yet"
    response = groupLeaderCommunicator.getVirtualClusterResponse(taskIdentifier)
    assert isinstance(response, VirtualClusterSubmissionResponse)
    (vm,) = response.getVirtualMachineMetaData()
    assert (vm.getVirtualMachineId(), vm.getStatus(), vm.getIpAddress()) == ("debian1", "RUNNING", "10.0.0.2")
    location = vm.getVirtualMachineLocation()
    assert (location.getLocalControllerId(), location.getGroupManagerId()) == ("lc-1", "gm-1")
    assert location.getLocalControllerControlDataAddress().getPort() == 5003
    assert vm.getRequestedCapacity() == [1.0, 200000.0, 12800.0, 12800.0]
    bootstrapCommunicator.close()
    groupLeaderCommunicator.close()


def test_snake_case_aliases_are_the_same_methods(fake: FakeSnooze) -> None:
    fake.on("getGroupLeaderDescription", reply_json(leader_description(fake.port)))
    address = NetworkAddress()
    address.set_address("127.0.0.1")
    address.set_port(fake.port)
    with CommunicatorFactory.new_bootstrap_communicator(address) as bootstrap:
        leader = bootstrap.get_group_leader_description()
    assert leader.get_listen_settings().get_control_data_address() == NetworkAddress("127.0.0.1", fake.port)
    assert leader.get_id() == "gm-2" and leader.getHostname() == "h"
    t = VirtualMachineTemplate()
    t.set_vcpus(2)
    t.set_memory(262144)
    t.set_image_id("debian")
    t.set_name("vm1")
    assert (t.get_vcpus(), t.getMemory(), t.get_image_id(), t.get_name()) == (2, 262144, "debian", "vm1")


def test_a_sized_template_sends_only_what_was_set() -> None:
    t = VirtualMachineTemplate()
    t.setVcpus(1)
    t.setMemory(262144)
    t.setImageId("debian")
    t.setName("vm1")
    request = VirtualClusterSubmissionRequest()
    request.setVirtualMachineTemplates([t])
    assert request.to_json() == {"virtualMachineTemplates": [{
        "vcpus": 1, "memory": 262144, "imageId": "debian", "name": "vm1",
        "networkCapacityDemand": {"rxBytes": 12800.0, "txBytes": 12800.0}}]}
    assert request.getVirtualMachineTemplates() == [t]


def test_descriptions_tolerate_missing_fields() -> None:
    empty = GroupManagerDescription.from_json({})
    assert empty.getListenSettings().getControlDataAddress() == NetworkAddress("", 0)
    assert VirtualClusterSubmissionResponse.from_json(None).getVirtualMachineMetaData() == []


def test_failures_raise_the_communicator_exception(fake: FakeSnooze) -> None:
    fake.on("getVirtualClusterResponse", reply_error(404, "UNKNOWN_TASK", "no such task", "taskId"))
    with CommunicatorFactory.newGroupManagerCommunicator(NetworkAddress("127.0.0.1", fake.port)) as gl:
        with pytest.raises(CommunicatorException) as e:
            gl.getVirtualClusterResponse("nope")
    assert e.value.code == "UNKNOWN_TASK"


def test_bootstrap_controls_virtual_machines(fake: FakeSnooze) -> None:
    fake.on("getVirtualMachineMetaData", lambda r: reply_json(vm_meta(r.text)))
    for verb in ("suspend", "resume", "shutdown", "reboot", "destroy", "migrate"):
        fake.on(f"{verb}VirtualMachine", reply_json(True))
    with CommunicatorFactory.newBootstrapCommunicator(NetworkAddress("127.0.0.1", fake.port)) as b:
        assert b.getVirtualMachineMetaData("vm3").getVirtualMachineId() == "vm3"
        assert b.suspendVirtualMachine("vm3") and b.resumeVirtualMachine("vm3")
        assert b.shutdownVirtualMachine("vm3") and b.rebootVirtualMachine("vm3") and b.destroyVirtualMachine("vm3")
        assert b.migrateVirtualMachine("vm3", "lc-2")
    assert fake.calls("migrateVirtualMachine")[0].json() == {"virtualMachineId": "vm3", "localControllerId": "lc-2"}
