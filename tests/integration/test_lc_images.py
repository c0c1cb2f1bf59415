"""Local controllers with an image repository, on real private libvirtd + QEMU hosts: each VM
boots from its own qcow2 overlay on the cached image with a NoCloud config drive; an unknown
image is a per-VM error with nothing left behind; destroying removes the VM's files; a
non-shared incremental migration copies the overlay's content (written in the guest's disk
through QEMU's own block layer, read back at the destination) and leaves the files only there.

The repository is the cluster's own bootstrap (its /images); the image a blank 64 MiB qcow2
made with qemu-img (the guests idle in firmware: what is tested here is their disks).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest

from snooze.client import SyncSnoozeClient
from snooze.dev.sim.libvirtd import LibvirtdCluster, LibvirtdHost, tiny_domain_xml
from tests.integration.test_qemu_migration import _require_qemu, _short_dir
from tests.integration.test_startup import start_failure
from tests.support import get, http, order, run_virtual_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LibvirtdHost]]:
    _require_qemu()
    with LibvirtdCluster(_short_dir(tmp_path_factory, "lvimg"), count=2) as running:
        yield running.hosts


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def cluster_with_image(cluster_factory: Any, image: Path) -> Any:
    # The repository in this test's own directory (a test-driver cluster's default is the system's).
    c = cluster_factory(gms=2, lcs=0, extra={"images.directory": str(image.parent / "repository"),
                                             "templates.bridges": ["virbr0", "br-missing"]})
    client = SyncSnoozeClient(c.bootstrap_url)
    try:
        record = client.upload_image(image, "blank")
    finally:
        client.close()
    assert record["id"] == "blank" and record["format"] == "qcow2", record
    return c


def qemu_lc(c: Any, name: str, host: LibvirtdHost, files: Path, **more: Any) -> dict[str, Any]:
    return dict(c.add_process("localcontroller", name, {
        "localcontroller.hypervisor_uri": host.uri,
        "localcontroller.remote_uri": host.uri,
        "localcontroller.migration_uri": host.migration_uri,
        "localcontroller.migration_timeout": 30.0,
        "localcontroller.migration_method": "nonshared-incremental",
        "localcontroller.image_repository": c.bootstrap_url,
        "localcontroller.image_cache_directory": str(files / "cache"),
        "localcontroller.instance_directory": str(files / "instances"),
        "localcontroller.accelerator": "tcg",
        **more,
    }))


def template(name: str, image: str = "blank") -> dict[str, Any]:
    return {"libVirtTemplate": tiny_domain_xml(name, memory_kib=65536), "imageId": image}


def domain_xml(uri: str, name: str) -> str:
    conn = libvirt.open(uri)
    try:
        return str(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()


def active(uri: str) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains() if d.isActive())
    finally:
        conn.close()


def backing_chain(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return list(json.loads(out))


def hmp(uri: str, name: str, command: str) -> str:
    conn = libvirt.open(uri)
    try:
        return str(libvirt_qemu.qemuMonitorCommand(conn.lookupByName(name), command,
                                                   libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
    finally:
        conn.close()


def pattern_at(overlay: Path) -> bool:
    """True when the 4 MiB at 1 MiB of the disk read through ``overlay`` are all 0xab (qemu-io
    sharing the image with the running QEMU, read-only)."""
    done = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0xab 1M 4M", str(overlay)],
                          capture_output=True, text=True)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout + done.stderr


def files_of(root: Path) -> list[str]:
    d = root / "instances"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_vms_boot_from_overlays_on_one_cached_image(cluster_factory: Any, hosts: list[LibvirtdHost],
                                                    image: Path, tmp_path: Path) -> None:
    c = cluster_with_image(cluster_factory, image)
    files = tmp_path / "lc-a"
    qemu_lc(c, "qemu-a", hosts[0], files)
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: [lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]] == ["qemu-a"],
             30, "the QEMU local controller in the hierarchy")

    started = time.monotonic()
    # (this machine has 2 CPUs: 2 VMs of 1 vcpu at a time)
    resp = run_virtual_cluster(c, [template("img-1"), template("img-2")], 120)
    print(f"\n[timing] 2 VMs on one image started in {time.monotonic() - started:.2f} s")
    by_id = {vm["virtualMachineId"]: vm for vm in resp["virtualMachineMetaData"]}
    assert by_id["img-1"]["status"] == "RUNNING", by_id["img-1"]
    assert by_id["img-2"]["status"] == "RUNNING", by_id["img-2"]
    disks = [a for vm in ("img-1", "img-2") for a in by_id[vm].get("adaptations", []) if "disk prepared" in a]
    print("[timing] " + "\n[timing] ".join(disks))
    assert len(disks) == 2 and sum("(fetched in" in a for a in disks) == 1, "fetched once for both VMs"
    assert active(hosts[0].uri) == ["img-1", "img-2"]
    assert files_of(files) == ["img-1-cidata.img", "img-1.json", "img-1.qcow2", "img-2-cidata.img", "img-2.json",
                               "img-2.qcow2"]

    [cached] = list((files / "cache").iterdir())
    for vm in ("img-1", "img-2"):
        overlay = files / "instances" / f"{vm}.qcow2"
        chain = backing_chain(overlay)
        assert [layer["filename"] for layer in chain] == [str(overlay), str(cached)]
        assert chain[0]["format"] == "qcow2" and chain[0]["backing-filename-format"] == "qcow2"
        xml = domain_xml(hosts[0].uri, vm)
        assert f"<source file='{overlay}'" in xml and f"{vm}-cidata.img" in xml and "<readonly/>" in xml
        assert "<serial type='pty'>" in xml and "type='qemu'" in xml.split("\n")[0]

    # A domain libvirt refuses to start (its bridge does not exist on this host) after its files
    # were made: they are removed, nothing half-started stays.
    broken = template("img-broken")
    broken["libVirtTemplate"] = broken["libVirtTemplate"].replace(
        "<memballoon", "<interface type='bridge'><source bridge='br-missing'/></interface><memballoon")
    [failed] = run_virtual_cluster(c, [broken], 60)["virtualMachineMetaData"]
    assert failed["status"] == "ERROR", failed
    assert "img-broken" not in active(hosts[0].uri)
    assert not any(name.startswith("img-broken") for name in files_of(files)), files_of(files)

    status, body = http("DELETE", c.bootstrap_url + "/images/blank")
    assert status == 409 and body["error"]["code"] == "IMAGE_IN_USE", body
    assert http("POST", b + "?destroyVirtualMachine", "img-1") == (200, True)
    assert files_of(files) == ["img-2-cidata.img", "img-2.json", "img-2.qcow2"]
    # A VM that stops (not through Snooze) loses its files too, at the next clean-up.
    conn = libvirt.open(hosts[0].uri)
    try:
        conn.lookupByName("img-2").destroy()
    finally:
        conn.close()
    wait_for(lambda: files_of(files) == [], 20, "the stopped VM's files removed")
    assert [p.name for p in (files / "cache").iterdir()] == [cached.name], "the image stays cached"

    # An unknown image: a per-VM error, no domain, no files (once the host is seen free again).
    bad = wait_for(lambda: (v := run_virtual_cluster(c, [template("img-bad", "no-such-image")], 60)
                            ["virtualMachineMetaData"][0])["errorCode"] != "NOT_ENOUGH_CAPACITY" and v, 30, "a verdict")
    assert bad["status"] == "ERROR" and bad["errorCode"] == "IMAGE_NOT_FOUND", bad
    assert "img-bad" not in active(hosts[0].uri) and files_of(files) == []


def test_the_test_driver_checks_the_image_and_makes_no_files(cluster_factory: Any, image: Path, tmp_path: Path) -> None:
    c = cluster_with_image(cluster_factory, image)
    c.add_process("localcontroller", "test-lc", {
        "localcontroller.image_repository": c.bootstrap_url,
        "localcontroller.image_cache_directory": str(tmp_path / "tc" / "cache"),
        "localcontroller.instance_directory": str(tmp_path / "tc" / "instances"),
    })
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: [lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]] == ["test-lc"],
             30, "the local controller in the hierarchy")
    resp = run_virtual_cluster(c, [{"vcpus": 1, "memory": 65536, "name": "t-ok", "imageId": "/some/path/blank"},
                                   {"vcpus": 1, "memory": 65536, "name": "t-bad", "imageId": "missing"}], 60)
    by_id = {vm["virtualMachineId"]: vm for vm in resp["virtualMachineMetaData"]}
    assert by_id["t-ok"]["status"] == "RUNNING", by_id["t-ok"]
    assert by_id["t-bad"]["status"] == "ERROR" and "IMAGE_NOT_FOUND" in json.dumps(by_id["t-bad"])
    assert not (tmp_path / "tc").exists(), "the test driver makes no files"


def test_nonshared_incremental_migration_copies_the_overlay(cluster_factory: Any, hosts: list[LibvirtdHost],
                                                            image: Path, tmp_path: Path) -> None:
    c = cluster_with_image(cluster_factory, image)
    root = {"qemu-a": tmp_path / "lc-a", "qemu-b": tmp_path / "lc-b"}
    uri = {"qemu-a": hosts[0].uri, "qemu-b": hosts[1].uri}
    qemu_lc(c, "qemu-a", hosts[0], root["qemu-a"])
    qemu_lc(c, "qemu-b", hosts[1], root["qemu-b"])
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: {lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]} == {"qemu-a", "qemu-b"},
             30, "both QEMU local controllers in the hierarchy")
    [vm] = run_virtual_cluster(c, [template("mig-1")], 120)["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING", vm
    source = vm["virtualMachineLocation"]["localControllerId"]
    target = "qemu-b" if source == "qemu-a" else "qemu-a"

    assert not pattern_at(root[source] / "instances" / "mig-1.qcow2")
    # Write a pattern into the guest's disk through QEMU's block layer: it lands in the overlay.
    out = hmp(uri[source], "mig-1", 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0xab 1M 4M"')
    assert "error" not in out.lower(), out
    # ... and flushed (qcow2 metadata included), so that another reader of the file sees it.
    out = hmp(uri[source], "mig-1", 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "flush"')
    assert "error" not in out.lower(), out
    assert pattern_at(root[source] / "instances" / "mig-1.qcow2"), "written to the source's overlay"
    assert files_of(root[target]) == []

    # A failure after the destination made the files (a domain there with the VM's UUID under
    # another name: libvirt's own check refuses): the destination removes them again.
    conn = libvirt.open(uri[source])
    try:
        uuid = conn.lookupByName("mig-1").UUIDString()
    finally:
        conn.close()
    conn = libvirt.open(uri[target])
    try:
        squatter = conn.defineXML(tiny_domain_xml("squatter").replace("<name>", f"<uuid>{uuid}</uuid><name>"))
        status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "mig-1",
                                                                             "localControllerId": target}), timeout=180)
        assert status == 409 and body["error"]["code"] == "MIGRATION_FAILED", body
        assert files_of(root[target]) == [], "the destination's files removed after the failure"
        assert active(uri[source]) == ["mig-1"] and pattern_at(root[source] / "instances" / "mig-1.qcow2")
        squatter.undefine()
    finally:
        conn.close()

    started = time.monotonic()
    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "mig-1",
                                                                         "localControllerId": target}), timeout=180)
    print(f"\n[timing] non-shared incremental migration with a 4 MiB written overlay: {time.monotonic() - started:.2f} s")
    assert (status, body) == (200, True), body
    assert active(uri[target]) == ["mig-1"] and active(uri[source]) == []
    overlay = root[target] / "instances" / "mig-1.qcow2"
    assert pattern_at(overlay), "the overlay's content was copied"
    assert f"<source file='{overlay}'" in domain_xml(uri[target], "mig-1"), "the destination's own paths"
    chain = backing_chain(overlay)
    assert chain[1]["filename"].startswith(str(root[target] / "cache")), chain
    assert files_of(root[target]) == ["mig-1-cidata.img", "mig-1.json", "mig-1.qcow2"]
    wait_for(lambda: files_of(root[source]) == [], 10, "the source's files removed")
    assert http("POST", b + "?destroyVirtualMachine", "mig-1") == (200, True)
    assert files_of(root[target]) == []


def test_an_unreachable_repository_is_a_temporary_per_vm_error(cluster_factory: Any, tmp_path: Path) -> None:
    c = cluster_factory(gms=2, lcs=0)
    spec = c.add_process("localcontroller", "cut-off", {
        "localcontroller.image_repository": "http://127.0.0.1:9",  # discard: nothing listens
        "localcontroller.image_cache_directory": str(tmp_path / "cache"),
        "localcontroller.instance_directory": str(tmp_path / "instances"),
    })
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: [lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]] == ["cut-off"],
             30, "the local controller in the hierarchy")
    # The local controller's own answer (the group manager tries another host on a temporary
    # error, and with none left reports that no host could take the VM).
    vm = {"id": "u-1", "requested": [1, 65536, 0, 0], "imageId": "blank",
          "xml": tiny_domain_xml("u-1").replace("type='kvm'", "type='qemu'")}
    [result] = order(c, int(spec["port"]), "lc.startVirtualMachines", {"vms": [vm]})["results"]
    assert result["status"] == "ERROR" and result["errorCode"] == "IMAGE_REPOSITORY_UNAVAILABLE", result
    assert "127.0.0.1:9" in result["message"]
    [vm] = run_virtual_cluster(c, [{"vcpus": 1, "memory": 65536, "name": "u-2", "imageId": "blank"}],
                               60)["virtualMachineMetaData"]
    assert vm["status"] == "ERROR", vm
    assert not (tmp_path / "instances").exists()


@pytest.mark.parametrize(("option", "says"), [
    ('localcontroller.accelerator="warp"', "accelerator must be one of auto, kvm, tcg"),
    ('localcontroller.image_repository="ftp://127.0.0.1/"', "image_repository must be an http:// or https:// URL"),
])
def test_bad_image_options_are_one_line_at_start(tmp_path: Path, option: str, says: str) -> None:
    code, text = start_failure(tmp_path, "localcontroller", option)
    assert code == 1, text
    assert says in text.strip().splitlines()[-1] and "Traceback" not in text, text
