"""The libcloud driver: registration, the seed's calls, and how VMs become nodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from libcloud.common.types import LibcloudError
from libcloud.compute.base import NodeSize
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

from snooze.client.libcloud_driver import (
    SnoozeLibcloudError,
    SnoozeNodeDriver,
    node_state,
    register,
)
from tests.unit.client.fake import FakeSnooze, Recorded, Reply, reply_error, reply_json, vm_meta

DEBIAN1 = "<domain type='kvm'><name>debian1</name><memory>200000</memory><vcpu>1</vcpu></domain>"


@pytest.fixture
def driver(fake: FakeSnooze) -> Iterator[SnoozeNodeDriver]:
    Snooze = get_driver(Provider.SNOOZE)  # type: ignore[attr-defined]
    d = Snooze("127.0.0.1", str(fake.port))
    assert isinstance(d, SnoozeNodeDriver)
    yield d
    d.close()


def cluster_of(*vms: dict[str, Any]) -> Any:
    """startVirtualCluster → t-1; the response: empty once, then these VMs."""
    return {"taskId": "t-1", "errorCode": None, "virtualMachineMetaData": list(vms)}


def test_the_provider_is_registered_under_snooze() -> None:
    assert Provider.SNOOZE == "snooze"  # type: ignore[attr-defined]
    assert Provider("snooze") is Provider.SNOOZE  # type: ignore[attr-defined]
    assert get_driver(Provider.SNOOZE) is SnoozeNodeDriver  # type: ignore[attr-defined]
    assert get_driver("snooze") is SnoozeNodeDriver
    register()  # again: harmless
    assert get_driver("snooze") is SnoozeNodeDriver


def test_key_is_the_host_and_secret_the_port() -> None:
    d = SnoozeNodeDriver("127.0.0.1", "5000")
    assert d.bootstrap_url == "http://127.0.0.1:5000"
    d.close()
    d = SnoozeNodeDriver("http://127.0.0.1:5999/")
    assert d.bootstrap_url == "http://127.0.0.1:5999"
    d.close()


def test_create_node_with_the_seeds_arguments(fake: FakeSnooze, driver: SnoozeNodeDriver, tmp_path: Path) -> None:
    path = tmp_path / "debian1.xml"
    path.write_text(DEBIAN1)
    fake.on("startVirtualCluster", Reply(body=b"t-1", content_type="text/plain"))
    fake.on("getVirtualClusterResponse", [Reply(), reply_json(cluster_of(vm_meta("debian1", xml=DEBIAN1)))])
    (node,) = driver.create_node(libvirt_templates=[str(path)], tx=12800, rx=12800, ex_poll_interval=0.01)
    assert fake.calls("startVirtualCluster")[0].json() == {"virtualMachineTemplates": [
        {"libVirtTemplate": DEBIAN1, "networkCapacityDemand": {"rxBytes": 12800.0, "txBytes": 12800.0}}]}
    assert (node.id, node.name, node.state, node.public_ips) == ("debian1", "debian1", NodeState.RUNNING, ["10.0.0.2"])
    assert node.extra["virtualMachineLocation"]["localControllerId"] == "lc-1"
    assert node.extra["metadata"]["requestedCapacity"] == [1.0, 200000.0, 12800.0, 12800.0]
    # The seed's output: uuid=b69042832fd33b092eb5d0211554d3c983c80ddf, name=debian1, … provider=Snooze
    assert node.uuid == "b69042832fd33b092eb5d0211554d3c983c80ddf" and "provider=Snooze" in repr(node)


def test_create_node_with_a_size(fake: FakeSnooze, driver: SnoozeNodeDriver) -> None:
    fake.on("startVirtualCluster", Reply(body=b"t-1", content_type="text/plain"))
    fake.on("getVirtualClusterResponse", reply_json(cluster_of(vm_meta("web-1"), vm_meta("web-2"))))
    size = NodeSize("small", "small", ram=256, disk=0, bandwidth=None, price=0.0, driver=driver,
                    extra={"vcpus": 2})
    nodes = driver.create_node(name="web", size=size, image="debian", count=2, ex_poll_interval=0.01)
    assert [n.id for n in nodes] == ["web-1", "web-2"]
    sent = fake.calls("startVirtualCluster")[0].json()["virtualMachineTemplates"]
    assert [(t["name"], t["vcpus"], t["memory"], t["imageId"]) for t in sent] == [
        ("web-1", 2, 262144, "debian"), ("web-2", 2, 262144, "debian")]


def test_a_failed_vm_raises_naming_its_error_code(fake: FakeSnooze, driver: SnoozeNodeDriver) -> None:
    fake.on("startVirtualCluster", Reply(body=b"t-1", content_type="text/plain"))
    fake.on("getVirtualClusterResponse", reply_json(cluster_of(
        vm_meta("a"), vm_meta("b", "ERROR", ip=None, error="NOT_ENOUGH_CAPACITY"))))
    with pytest.raises(LibcloudError) as e:
        driver.create_node(vcpus=1, memory=1024, image_id="debian", name="x", ex_poll_interval=0.01)
    assert isinstance(e.value, SnoozeLibcloudError) and e.value.code == "NOT_ENOUGH_CAPACITY"
    assert "NOT_ENOUGH_CAPACITY" in str(e.value) and [n.id for n in e.value.nodes] == ["a"]
    nodes = driver.create_node(vcpus=1, memory=1024, image_id="debian", name="x", ex_allow_partial=True)
    assert [(n.id, n.state) for n in nodes] == [("a", NodeState.RUNNING), ("b", NodeState.ERROR)]


def test_nothing_to_create_and_unreadable_templates_are_errors(driver: SnoozeNodeDriver, tmp_path: Path) -> None:
    with pytest.raises(SnoozeLibcloudError) as e:
        driver.create_node()
    assert e.value.code == "BAD_TEMPLATE"
    with pytest.raises(SnoozeLibcloudError) as e:
        driver.create_node(libvirt_templates=[str(tmp_path / "missing.xml")])
    assert e.value.code == "BAD_TEMPLATE" and "missing.xml" in e.value.message


def test_list_and_control_nodes(fake: FakeSnooze, driver: SnoozeNodeDriver) -> None:
    fake.on("getVirtualMachineDescriptions", reply_json({"virtualMachines": [vm_meta("a"), vm_meta("b", "PAUSED")],
                                                         "start": 0, "limit": 100, "total": 2}))
    verbs = ["reboot", "destroy", "resume", "shutdown", "suspend"]
    for verb in verbs:
        fake.on(f"{verb}VirtualMachine", reply_json(True))
    a, b = driver.list_nodes()
    assert (a.state, b.state) == (NodeState.RUNNING, NodeState.SUSPENDED)
    assert driver.reboot_node(a) and driver.destroy_node(a) and driver.start_node(a)
    assert driver.stop_node(a) and driver.ex_suspend_node(a) and driver.ex_resume_node(a)
    assert [(r.verb, r.text) for r in fake.requests if r.verb.endswith("VirtualMachine")] == [
        ("rebootVirtualMachine", "a"), ("destroyVirtualMachine", "a"), ("resumeVirtualMachine", "a"),
        ("shutdownVirtualMachine", "a"), ("suspendVirtualMachine", "a"), ("resumeVirtualMachine", "a")]


def test_migrate_sends_the_node_to_the_local_controller_of_a_location(fake: FakeSnooze,
                                                                      driver: SnoozeNodeDriver) -> None:
    fake.on("getVirtualMachineDescriptions", reply_json({"virtualMachines": [vm_meta("n1", lc="lc-1"),
                                                                             vm_meta("n2", lc="lc-2")]}))
    fake.on("migrateVirtualMachine", reply_json(True))
    n1, n2 = driver.list_nodes()
    assert driver.migrate(n1, n2.extra.get("virtualMachineLocation"))  # the seed's line
    assert driver.ex_migrate(n1, n2) and driver.ex_migrate(n1, "lc-3")
    assert [r.json() for r in fake.calls("migrateVirtualMachine")] == [
        {"virtualMachineId": "n1", "localControllerId": lc} for lc in ("lc-2", "lc-2", "lc-3")]
    with pytest.raises(SnoozeLibcloudError):
        driver.ex_migrate(n1, {})


def test_server_errors_become_libcloud_errors(fake: FakeSnooze, driver: SnoozeNodeDriver) -> None:
    def unknown(r: Recorded) -> Reply:
        return reply_error(404, "VIRTUAL_MACHINE_NOT_FOUND", f"no VM {r.text!r}", "virtualMachineId")

    fake.on("destroyVirtualMachine", unknown)
    fake.on("getVirtualMachineMetaData", unknown)
    from libcloud.compute.base import Node
    ghost = Node("ghost", "ghost", NodeState.UNKNOWN, [], [], driver)
    with pytest.raises(SnoozeLibcloudError) as e:
        driver.destroy_node(ghost)
    assert (e.value.code, e.value.status) == ("VIRTUAL_MACHINE_NOT_FOUND", 404)
    with pytest.raises(SnoozeLibcloudError):
        driver.ex_get_node("ghost")


def test_statuses_map_to_node_states() -> None:
    assert node_state("RUNNING") == NodeState.RUNNING
    assert node_state("error") == NodeState.ERROR
    assert node_state("SHUTOFF") == NodeState.STOPPED
    assert node_state(None) == NodeState.UNKNOWN and node_state("WHATEVER") == NodeState.UNKNOWN
