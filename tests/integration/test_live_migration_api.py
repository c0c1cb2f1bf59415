"""Real live migration through the API: two private libvirtd + QEMU hosts on this machine, a
local controller on each, a tiny diskless domain started with ?startVirtualCluster and moved
with ?migrateVirtualMachine (libvirt migrateToURI3, live, peer to peer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from snooze.dev.sim.libvirtd import LibvirtdCluster, LibvirtdHost, tiny_domain_xml
from tests.integration.test_qemu_migration import _require_qemu, _short_dir
from tests.support import get, http, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LibvirtdHost]]:
    _require_qemu()
    with LibvirtdCluster(_short_dir(tmp_path_factory, "lvapi"), count=2) as running:
        yield running.hosts


def qemu_lc(c: Any, name: str, host: LibvirtdHost) -> None:
    c.add_process("localcontroller", name, {
        "localcontroller.hypervisor_uri": host.uri,
        "localcontroller.remote_uri": host.uri,
        "localcontroller.migration_uri": host.migration_uri,
        "localcontroller.migration_timeout": 30.0,
    })


def names(uri: str) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains() if d.isActive()]
    finally:
        conn.close()


def test_live_migration_through_the_api_between_two_real_hypervisors(cluster_factory: Any, hosts: list[LibvirtdHost]) -> None:
    c = cluster_factory(gms=2, lcs=0)
    qemu_lc(c, "qemu-a", hosts[0])
    qemu_lc(c, "qemu-b", hosts[1])
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: {lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]} == {"qemu-a", "qemu-b"},
             30, "both QEMU local controllers in the hierarchy")

    status, task = http("POST", b + "?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": tiny_domain_xml("live-1")}]}))
    assert status == 200, task
    resp = wait_for(lambda: http("POST", b + "?getVirtualClusterResponse", task)[1] or None, 60, "the VM to start")
    [vm] = resp["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING", vm
    source = vm["virtualMachineLocation"]["localControllerId"]
    target = "qemu-b" if source == "qemu-a" else "qemu-a"
    uri = {"qemu-a": hosts[0].uri, "qemu-b": hosts[1].uri}
    assert "live-1" in names(uri[source])

    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "live-1", "localControllerId": target}),
                        timeout=120)
    assert (status, body) == (200, True), body
    assert "live-1" in names(uri[target]), "running at the destination"
    assert "live-1" not in names(uri[source]), "gone from the source"
    meta = http("POST", b + "?getVirtualMachineMetaData", "live-1")[1]
    assert meta["virtualMachineLocation"]["localControllerId"] == target
    assert meta["status"] == "RUNNING"

    # Refused before anything moves: no such host, same host.
    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "live-1", "localControllerId": "nope"}))
    assert status == 404 and body["error"]["field"] == "localControllerId"
    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "live-1", "localControllerId": target}))
    assert status == 400 and body["error"]["code"] == "SAME_LOCAL_CONTROLLER"
    assert "live-1" in names(uri[target])
    assert http("POST", b + "?destroyVirtualMachine", "live-1") == (200, True)
    assert "live-1" not in names(uri[target])


def reserved(b: str) -> list[list[float]]:
    gms = get(b + "?getGroupManagerDescriptions")
    return [gm["summaryInformation"]["reservedCapacity"] for gm in gms if gm.get("summaryInformation")]


def test_a_live_migration_refused_by_the_destination_releases_its_reservation(cluster_factory: Any,
                                                                            hosts: list[LibvirtdHost]) -> None:
    c = cluster_factory(gms=2, lcs=0)
    qemu_lc(c, "qemu-a", hosts[0])
    qemu_lc(c, "qemu-b", hosts[1])
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: {lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]} == {"qemu-a", "qemu-b"},
             30, "both QEMU local controllers in the hierarchy")
    status, task = http("POST", b + "?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": tiny_domain_xml("live-2")}]}))
    assert status == 200, task
    [vm] = wait_for(lambda: http("POST", b + "?getVirtualClusterResponse", task)[1] or None, 60, "the VM")["virtualMachineMetaData"]
    source = vm["virtualMachineLocation"]["localControllerId"]
    target = "qemu-b" if source == "qemu-a" else "qemu-a"
    uri = {"qemu-a": hosts[0].uri, "qemu-b": hosts[1].uri}

    # The destination's libvirt already has a (stopped) domain of that name: the source's
    # libvirt check refuses before anything moves.
    conn = libvirt.open(uri[target])
    try:
        squatter = conn.defineXML(tiny_domain_xml("live-2"))
        status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "live-2", "localControllerId": target}),
                            timeout=120)
        assert status == 409 and body["error"]["code"] == "MIGRATION_FAILED", body
        assert "already exists" in body["error"]["message"]
        assert reserved(b) and all(r == [0.0, 0.0, 0.0, 0.0] for r in reserved(b)), reserved(b)
        assert "live-2" in names(uri[source]), "still running at the source"
        squatter.undefine()
    finally:
        conn.close()
    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "live-2", "localControllerId": target}),
                        timeout=120)
    assert (status, body) == (200, True), body
    assert "live-2" in names(uri[target]) and "live-2" not in names(uri[source])
    assert all(r == [0.0, 0.0, 0.0, 0.0] for r in reserved(b))
    assert http("POST", b + "?destroyVirtualMachine", "live-2") == (200, True)


def test_resize_on_a_real_hypervisor(cluster_factory: Any, hosts: list[LibvirtdHost]) -> None:
    # A VM that may have 2 vcpus (1 at start) and 64 MiB with a balloon: a vcpu is hot-plugged
    # and the balloon is set, live; what QEMU cannot do is refused with RESIZE_REFUSED.
    c = cluster_factory(gms=2, lcs=0)
    qemu_lc(c, "qemu-r", hosts[0])
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: {lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]} == {"qemu-r"},
             30, "the QEMU local controller in the hierarchy")
    xml = (tiny_domain_xml("grow-1", memory_kib=65536).replace("<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>")
           .replace("<memballoon model='none'/>", "<memballoon model='virtio'/>"))
    status, task = http("POST", b + "?startVirtualCluster", json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": xml}]}))
    assert status == 200, task
    resp = wait_for(lambda: http("POST", b + "?getVirtualClusterResponse", task)[1] or None, 60, "the VM to start")
    assert resp["virtualMachineMetaData"][0]["status"] == "RUNNING", resp

    def resize(capacity: list[Any]) -> tuple[int, Any]:
        return http("POST", b + "?resizeVirtualMachine",
                    json.dumps({"virtualMachineLocation": {"virtualMachineId": "grow-1"}, "resizedCapacity": capacity}),
                    timeout=90)

    status, meta = resize([2, 49152, -1, -1])
    assert status == 200 and meta["requestedCapacity"][:2] == [2, 49152], meta
    conn = libvirt.open(hosts[0].uri)
    try:
        domain = conn.lookupByName("grow-1")
        assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2, "a vcpu was hot-plugged"
        assert domain.isActive()
    finally:
        conn.close()
    # Over its <vcpu> maximum (RESIZE_REFUSED), or over the host's cpus first on a small machine.
    status, body = resize([3, -1, -1, -1])
    assert status == 409 and body["error"]["code"] in ("RESIZE_REFUSED", "NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY"), body
    status, body = resize([-1, 131072, -1, -1])
    assert status == 409 and body["error"]["code"] == "RESIZE_REFUSED" and "65536" in body["error"]["message"], body
    assert http("POST", b + "?destroyVirtualMachine", "grow-1") == (200, True)
