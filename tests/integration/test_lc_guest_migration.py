"""A real guest (snooze-tiny, booting from its overlay, configured by its config drive) on a
private libvirtd + QEMU host in its own network namespace, moved by a non-shared incremental
migration to another such host: it answers its name over HTTP at its allocated address before
and after the move, from inside the namespace of the host it runs on, and its overlay and
config drive exist only at the destination afterwards. The local controllers run here, each
with its own cache and instance directories, so the domain is re-pointed at the destination's
paths (VIR_MIGRATE_PARAM_DEST_XML)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snooze.client import SyncSnoozeClient
from snooze.dev.guestimage import ensure_image
from snooze.dev.sim.libvirtd import VM_BRIDGE, LibvirtdCluster, LibvirtdHost
from tests.integration.test_lc_images import active, backing_chain, files_of
from tests.integration.test_qemu_migration import _require_qemu, _short_dir
from tests.support import get, http, run_virtual_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBNET = "192.168.122.0/24"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LibvirtdHost]]:
    _require_qemu()
    with LibvirtdCluster(_short_dir(tmp_path_factory, "lvgm"), count=2, fabric=True, vm_gateway="192.168.122.1/24") as c:
        yield c.hosts


def answer(host: LibvirtdHost, address: str) -> str:
    assert host.netns
    done = subprocess.run(["ip", "netns", "exec", host.netns, "curl", "-s", "--max-time", "2", f"http://{address}/"],
                          capture_output=True, text=True, timeout=10)
    return done.stdout


def test_a_booted_guest_keeps_answering_across_a_migration_with_its_disk(cluster_factory: Any, hosts: list[LibvirtdHost],
                                                                        tmp_path: Path) -> None:
    image = ensure_image()
    c = cluster_factory(gms=2, lcs=0, extra={"images.directory": str(tmp_path / "repository"),
                                             "templates.bridges": [VM_BRIDGE], "templates.default_bridge": VM_BRIDGE,
                                             "groupmanager.virtual_machine_subnet": SUBNET})
    client = SyncSnoozeClient(c.bootstrap_url)
    try:
        client.upload_image(image, "snooze-tiny")
    finally:
        client.close()
    root = {"qemu-a": tmp_path / "lc-a", "qemu-b": tmp_path / "lc-b"}
    by_name = {"qemu-a": hosts[0], "qemu-b": hosts[1]}
    for name, host in by_name.items():
        c.add_process("localcontroller", name, {
            "localcontroller.hypervisor_uri": host.uri, "localcontroller.remote_uri": host.uri,
            "localcontroller.migration_uri": host.migration_uri, "localcontroller.migration_timeout": 60.0,
            "localcontroller.migration_method": "nonshared-incremental",
            "localcontroller.image_repository": c.bootstrap_url,
            "localcontroller.image_cache_directory": str(root[name] / "cache"),
            "localcontroller.instance_directory": str(root[name] / "instances"),
            "localcontroller.accelerator": "tcg",
        })
    b = c.bootstrap_url + "/bootstrap"
    wait_for(lambda: {lc["id"] for lc in get(b + "?getLocalControllerList")["localControllers"]} == set(by_name),
             30, "both QEMU local controllers in the hierarchy")

    started = time.monotonic()
    [vm] = run_virtual_cluster(c, [{"name": "guest-1", "vcpus": 1, "memory": 131072, "imageId": "snooze-tiny"}],
                               120)["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING", vm
    placed = time.monotonic() - started
    source = vm["virtualMachineLocation"]["localControllerId"]
    target = "qemu-b" if source == "qemu-a" else "qemu-a"
    address = vm["ipAddress"]
    wait_for(lambda: answer(by_name[source], address) == "guest-1\n", 120, "the guest to answer its name")
    print(f"\n[timing] guest started in {placed:.2f} s, answering HTTP {time.monotonic() - started:.2f} s after "
          f"submission; {[a for a in vm.get('adaptations', []) if 'disk prepared' in a]}")

    started = time.monotonic()
    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "guest-1",
                                                                         "localControllerId": target}), timeout=300)
    moved = time.monotonic() - started
    assert (status, body) == (200, True), body
    assert active(by_name[target].uri) == ["guest-1"] and active(by_name[source].uri) == []
    assert answer(by_name[target], address) == "guest-1\n", "it answers at the destination"
    assert answer(by_name[source], address) == "", "and no longer at the source"
    print(f"[timing] non-shared incremental migration of the booted guest: {moved:.2f} s")
    overlay = root[target] / "instances" / "guest-1.qcow2"
    assert backing_chain(overlay)[1]["filename"].startswith(str(root[target] / "cache"))
    assert files_of(root[target]) == ["guest-1-cidata.img", "guest-1.json", "guest-1.qcow2"]
    wait_for(lambda: files_of(root[source]) == [], 10, "the source's files removed")

    assert http("POST", b + "?destroyVirtualMachine", "guest-1") == (200, True)
    assert files_of(root[target]) == []
