"""The clients against a real local cluster: the seed's Java, libcloud and curl examples as
written (host and port substituted), and the CLI's submit / vms / vm / destroy."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

import snooze.client.libcloud_driver  # noqa: F401  (registers Provider.SNOOZE, as the seed assumes)
from snooze.cli.vms import register
from snooze.client import SnoozeClientError, SyncSnoozeClient, java
from snooze.client.java import (
    CommunicatorFactory,
    NetworkAddress,
    NetworkDemand,
    VirtualClusterSubmissionRequest,
    VirtualMachineTemplate,
)
from snooze.dev.localcluster import LocalCluster
from tests import fixtures
from tests.support import wait_for

pytestmark = pytest.mark.integration

def lc_ids(c: LocalCluster) -> set[str]:
    return {p["id"] for p in c.processes if p["role"] == "localcontroller"}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def status_of(c: LocalCluster, vm_id: str) -> str | None:
    with SyncSnoozeClient(c.bootstrap_url) as client:
        try:
            return client.get_virtual_machine_meta_data(vm_id).get("status")
        except SnoozeClientError as exc:
            if exc.status == 404:
                return None
            raise


def test_the_seeds_java_example(cluster_factory: Any) -> None:
    # Every class the seed's Java example instantiates and every method it calls exists here.
    seed = fixtures.java_client()
    classes = {name for name, value in vars(java).items() if isinstance(value, type)}
    methods = {name for name in classes for name in dir(getattr(java, name))}
    assert set(re.findall(r"new (\w+)\(", seed)) - {"ArrayList"} <= classes
    assert set(re.findall(r"\.(\w+)\(", seed)) - {"add"} <= methods, set(re.findall(r"\.(\w+)\(", seed)) - methods

    c = cluster_factory(gms=2, lcs=2)
    # Gets the leader address.
    bootstrapAddress = NetworkAddress()
    bootstrapAddress.setAddress("127.0.0.1")
    bootstrapAddress.setPort(port_of(c.bootstrap_url))
    bootstrapCommunicator = CommunicatorFactory.newBootstrapCommunicator(bootstrapAddress)
    groupLeaderDescription = bootstrapCommunicator.getGroupLeaderDescription()
    # Construct the virtual machine templates array.
    virtualClusterDescription = VirtualClusterSubmissionRequest()
    virtualMachineTemplates: list[VirtualMachineTemplate] = []
    virtualMachineTemplate = VirtualMachineTemplate()
    virtualMachineTemplate.setLibVirtTemplate(fixtures.domain_xml("debian1"))
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
    # This code can follow the code from above.
    virtualClusterResponse = wait_for(lambda: groupLeaderCommunicator.getVirtualClusterResponse(taskIdentifier),
                                      60, "the virtual cluster response")

    assert virtualClusterResponse is not None
    assert groupLeaderAddress.getPort() != bootstrapAddress.getPort(), "the submission went to the leader itself"
    assert virtualClusterResponse.getErrorCode() is None
    (vm,) = virtualClusterResponse.getVirtualMachineMetaData()
    assert (vm.getVirtualMachineId(), vm.getStatus()) == ("debian1", "RUNNING")
    assert vm.getVirtualMachineLocation().getLocalControllerId() in lc_ids(c)
    assert vm.getIpAddress()
    assert vm.getRequestedCapacity() == [1.0, 200000.0, 12800.0, 12800.0]
    assert bootstrapCommunicator.getVirtualMachineMetaData("debian1").getStatus() == "RUNNING"
    bootstrapCommunicator.close()
    groupLeaderCommunicator.close()


def test_the_seeds_libcloud_example_and_the_node_lifecycle(cluster_factory: Any, tmp_path: Path) -> None:
    c = cluster_factory(gms=2, lcs=2)
    for name in ("debian1", "debian2"):
        (tmp_path / f"{name}.xml").write_text(fixtures.domain_xml(name))

    # The seed's session as written, with the bootstrap's port for "5000" and tmp_path for its
    # template directory; its last line's value is what the seed shows as "Out <<".
    lines, seed_out = fixtures.libcloud_session()
    namespace: dict[str, Any] = {}
    for line in lines[:-1]:
        exec(fixtures.localised(line, port_of(c.bootstrap_url), tmp_path), namespace)
    n1 = eval(fixtures.localised(lines[-1], port_of(c.bootstrap_url), tmp_path), namespace)
    for field in ("name", "state", "provider"):
        expected = re.search(rf"\b{field}=(\w+)", seed_out)
        assert expected and f"{field}={expected.group(1)}" in repr(n1[0]), (repr(n1[0]), seed_out)
    driver = namespace["driver"]
    n2 = driver.create_node(libvirt_templates=[str(tmp_path / "debian2.xml")], tx=12800, rx=12800)

    for nodes, name in ((n1, "debian1"), (n2, "debian2")):
        (node,) = nodes
        assert (node.id, node.name, node.state) == (name, name, NodeState.RUNNING)
        assert len(node.public_ips) == 1 and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", node.public_ips[0])
        assert node.extra["virtualMachineLocation"]["localControllerId"] in lc_ids(c)
        assert node.extra["metadata"]["status"] == "RUNNING"
    assert n1[0].public_ips != n2[0].public_ips

    listed = {n.id: n for n in driver.list_nodes()}
    assert {"debian1", "debian2"} <= set(listed) and listed["debian1"].state == NodeState.RUNNING

    assert driver.reboot_node(n1[0]) is True
    assert driver.ex_suspend_node(n1[0]) is True
    wait_for(lambda: driver.ex_get_node("debian1").state == NodeState.SUSPENDED, 30, "debian1 suspended")
    assert driver.ex_resume_node(n1[0]) is True
    wait_for(lambda: driver.ex_get_node("debian1").state == NodeState.RUNNING, 30, "debian1 running again")

    for node in (n1[0], n2[0]):
        assert driver.destroy_node(node) is True
    wait_for(lambda: not {"debian1", "debian2"} & {n.id for n in driver.list_nodes()
                                                   if n.state != NodeState.TERMINATED},
             30, "both nodes gone")
    driver.close()


def test_the_original_drivers_method_names(cluster_factory: Any) -> None:
    # The original libcloud driver's calls: list_sizes, create_node(name, size, image), get_info,
    # suspend, resume, shutdown, reboot, destroy.
    c = cluster_factory(gms=2, lcs=2)
    driver: Any = get_driver("snooze")("127.0.0.1", str(port_of(c.bootstrap_url)))
    sizes = {s.name: s for s in driver.list_sizes()}
    assert set(sizes) == {"Small", "Medium", "Big", "XXL Big"} and sizes["Small"].ram == 128
    (node,) = driver.create_node(name="orig-1", size=sizes["Small"], image="debian.qcow2")
    info = driver.get_info(node)
    assert info["status"] == "RUNNING" and info["requestedCapacity"][:2] == [1, 128 * 1024]
    assert info["virtualMachineLocation"]["localControllerId"] in lc_ids(c)
    assert driver.suspend(node) is True
    wait_for(lambda: driver.get_info(node)["status"] == "PAUSED", 30, "orig-1 suspended")
    assert driver.resume(node) is True
    wait_for(lambda: driver.get_info(node)["status"] == "RUNNING", 30, "orig-1 running again")
    assert driver.reboot(node) is True
    assert driver.shutdown(node) is True
    assert driver.destroy(node) is True
    wait_for(lambda: "orig-1" not in {n.id for n in driver.list_nodes() if n.state != NodeState.TERMINATED},
             30, "orig-1 gone")
    driver.close()


def test_the_seeds_migration_example(cluster_factory: Any, tmp_path: Path) -> None:
    c = cluster_factory(gms=2, lcs=2)
    for name in ("debian1", "debian2"):
        (tmp_path / f"{name}.xml").write_text(fixtures.domain_xml(name))
    *code, migrate_line = fixtures.libcloud_migration().strip().splitlines()
    assert migrate_line == 'driver.migrate(n1[0],n2[0].extra.get("virtualMachineLocation"))'
    namespace: dict[str, Any] = {}
    exec(fixtures.localised("\n".join(code), port_of(c.bootstrap_url), tmp_path), namespace)
    driver, n1, n2 = namespace["driver"], namespace["n1"], namespace["n2"]
    source = n1[0].extra["virtualMachineLocation"]["localControllerId"]
    destination = n2[0].extra.get("virtualMachineLocation")
    if destination["localControllerId"] == source:
        # Placement put both on one host; the seed means "go where the other one is not".
        destination = dict(destination, localControllerId=(lc_ids(c) - {source}).pop())
    assert driver.migrate(n1[0], destination) is True
    wait_for(lambda: driver.ex_get_node("debian1").extra["localControllerId"] == destination["localControllerId"],
             60, "debian1 on its new host")
    driver.close()


def test_the_seeds_curl_example(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2)
    template = fixtures.start_virtual_cluster_body()
    with SyncSnoozeClient(c.bootstrap_url) as client:
        gl = client.get_group_leader_description()["listenSettings"]["controlDataAddress"]
    leader = f"http://{gl['address']}:{gl['port']}"

    start, get_response, list_lcs = fixtures.curl_requests()

    def curl(words: list[str], **substitutions: str) -> str:
        args = []
        for word in words[1:]:
            for seed_value, value in substitutions.items():
                word = word.replace(seed_value, value)
            args.append(word)
        return subprocess.run(["curl", "-s", *args], capture_output=True, text=True, check=True, timeout=60).stdout

    on_leader = {"http://localhost:5001": leader}
    task = curl(start, **on_leader, **{"$template": template}).strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task), task
    body = wait_for(lambda: curl(get_response, **on_leader, **{fixtures.SEED_TASK_ID: task}).strip(),
                    60, "a non-empty virtual cluster response")
    response = json.loads(body)
    assert response["errorCode"] is None
    (vm,) = response["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING" and vm["virtualMachineLocation"]["virtualMachineId"] == "debian1"
    lcs = json.loads(curl(list_lcs, **{"localhost:5000": f"127.0.0.1:{port_of(c.bootstrap_url)}"}))
    assert {lc["id"] for lc in lcs["localControllers"]} == lc_ids(c)
    assert "debian1" in [v for lc in lcs["localControllers"] for v in lc["assignedVirtualMachines"]]
    # The original's shape: every field the seed shows for a local controller is there.
    seed_lc = fixtures.local_controller_list()["localControllers"][0]
    for lc in lcs["localControllers"]:
        assert set(seed_lc) <= set(lc), set(seed_lc) - set(lc)


def cli(c: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    p = argparse.ArgumentParser(prog="snooze")
    p.add_argument("--state-dir", default=".state/cluster")
    p.add_argument("--bootstrap")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["--bootstrap", c.bootstrap_url, *argv])
    code = int(args.func(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_submit_vms_vm_destroy(cluster_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster_factory(gms=2, lcs=2)
    (tmp_path / "debian1.xml").write_text(fixtures.domain_xml("debian1"))

    code, out, err = cli(c, capsys, "submit", "--template", str(tmp_path / "debian1.xml"),
                         "--image", "debian.qcow2", "--vcpus", "1", "--memory-mib", "256", "--count", "2",
                         "--name", "web")
    assert code == 0, err
    assert err.splitlines()[0].startswith("submitted virtual cluster ")
    assert err.splitlines()[-1].endswith("3 RUNNING"), err
    rows = {r.split()[0]: r.split() for r in out.splitlines()[1:]}
    assert set(rows) == {"debian1", "web-1", "web-2"}
    assert all(r[1] == "RUNNING" and r[2] in lc_ids(c) for r in rows.values())

    code, out, err = cli(c, capsys, "vms")
    assert code == 0, err
    assert {"debian1", "web-1", "web-2"} <= {r.split()[0] for r in out.splitlines()[1:]}

    code, out, err = cli(c, capsys, "vm", "web-1")
    assert code == 0, err
    assert "RUNNING" in out and any(lc in out for lc in lc_ids(c))

    code, out, err = cli(c, capsys, "destroy", "web-1")
    assert (code, out) == (0, "destroyed web-1\n"), err
    wait_for(lambda: status_of(c, "web-1") in (None, "DESTROYED", "TERMINATED"), 30, "web-1 destroyed")

    code, out, err = cli(c, capsys, "suspend", "no-such-vm")
    assert code == 1 and out == ""
    assert re.fullmatch(r"snooze: [A-Z_]+: .+\n", err), err

    code, out, err = cli(c, capsys, "submit", "--template", str(tmp_path / "missing.xml"))
    assert code == 1 and err.startswith("snooze: BAD_TEMPLATE: cannot read ")
