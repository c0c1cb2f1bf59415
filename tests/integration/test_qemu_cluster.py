"""The local cluster on real hypervisors (``snooze cluster up --hypervisor qemu``): every local
controller on its own private libvirtd + QEMU host in its own network namespace, the hosts
joined by the fabric. A diskless domain started through the API runs on a host, is moved to the
other one by a live migration streaming over the fabric, and ``down`` leaves nothing behind:
no process, no namespace, no host state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snooze.dev import netns
from snooze.dev.localcluster import LocalCluster
from snooze.dev.sim.libvirtd import tiny_domain_xml
from snooze.procs import alive
from tests.integration.test_qemu_migration import _require_qemu
from tests.support import FAST, http, port_range, wait_for

FAST_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def active(uri: str) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    finally:
        conn.close()


def test_a_qemu_cluster_runs_migrates_over_the_fabric_and_leaves_nothing(cluster_factory: Callable[..., LocalCluster]) -> None:
    _require_qemu()
    c = cluster_factory(gms=2, lcs=2, hypervisor="qemu", guest_image=False)
    manifest = json.loads(c.manifest_path.read_text())
    assert manifest["images"] == c.bootstrap_url and manifest["hypervisor"] == "qemu"
    lcs = {p["id"]: p for p in manifest["processes"] if p["role"] == "localcontroller"}
    assert set(lcs) == {"lc-1", "lc-2"}
    hosts = {h["name"]: h for h in manifest["hypervisors"]}
    for spec in lcs.values():
        host = hosts[spec["host"]]
        assert spec["netns"] == host["netns"] and spec["hypervisorUri"] == host["uri"]
        # The LC and its libvirtd live in the same network namespace, the LC in the host's mounts too.
        assert {spec["pid"], host["pid"]} <= set(netns.namespace_pids(spec["netns"]))
        assert os.stat(f"/proc/{spec['pid']}/ns/mnt").st_ino == host["mountNamespace"][1]
    qemu_dir = Path(manifest["qemuDir"])
    assert qemu_dir.is_dir()

    b = c.bootstrap_url + "/bootstrap"
    status, task = http("POST", b + "?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": tiny_domain_xml("fab-1", kvm=False)}]}))
    assert status == 200, task
    response: Any = wait_for(lambda: http("POST", b + "?getVirtualClusterResponse", task)[1] or None, 90, "the VM")
    [vm] = response["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING", vm
    source = vm["virtualMachineLocation"]["localControllerId"]
    target = "lc-2" if source == "lc-1" else "lc-1"
    assert active(lcs[source]["hypervisorUri"]) == ["fab-1"]
    status, body = http("POST", b + "?migrateVirtualMachine", json.dumps({"virtualMachineId": "fab-1", "localControllerId": target}),
                        timeout=180)
    assert (status, body) == (200, True), body
    assert active(lcs[target]["hypervisorUri"]) == ["fab-1"] and active(lcs[source]["hypervisorUri"]) == []
    assert http("POST", b + "?getVirtualMachineMetaData", "fab-1")[1]["virtualMachineLocation"]["localControllerId"] == target

    pids = [p["pid"] for p in manifest["processes"]] + [h["pid"] for h in hosts.values()]
    namespaces = manifest["namespaces"]
    c.down()
    assert not any(alive(pid) for pid in pids)
    assert not set(namespaces) & set(netns.namespaces())
    assert not qemu_dir.exists()
    assert not c.manifest_path.exists()


def test_a_qemu_cluster_configures_each_role_for_real_guests(tmp_path: Path) -> None:
    # Planned only (configs written, namespaces named): nothing is started.
    from snooze import config as cfg
    from snooze.dev.localcluster import ClusterOptions
    from snooze.dev.zookeeper import ZooKeeperServer

    c = LocalCluster(tmp_path / "q", ClusterOptions(base_port=port_range(1), gms=2, lcs=2, hypervisor="qemu",
                                                    extra={"groupmanager.virtual_machine_subnet": "10.77.0.0/16"}))
    (tmp_path / "q").mkdir(mode=0o700)
    assert c.fabric is not None and c.vm_gateway == "10.77.0.1/16"
    zk = c.fabric.plan_host("zookeeper")
    c.zk = ZooKeeperServer(tmp_path / "q" / "zookeeper", 2181, host=zk.address, netns=zk.netns)
    c.qemu_dir = Path("/tmp/snz-planned-qemu")
    c.processes = c.plan()
    boot = next(p for p in c.processes if p["role"] == "bootstrap")
    images = cfg.load(Path(boot["config"]), "bootstrap").images
    assert images.directory == str(tmp_path / "q" / "images")
    assert images.libvirt_uri == "qemu+unix:///system?socket=/tmp/snz-planned-qemu/repository/host1/run/libvirt/libvirt-sock"
    for i, spec in enumerate([p for p in c.processes if p["role"] == "localcontroller"], start=1):
        settings = cfg.load(Path(spec["config"]), "localcontroller")
        lc = settings.localcontroller
        assert spec["host"] == f"host{i}" and spec["netns"] == c.fabric.plan_host(spec["id"]).netns
        assert lc.hypervisor_uri == lc.remote_uri == spec["hypervisorUri"] == \
            f"qemu+unix:///system?socket=/tmp/snz-planned-qemu/host{i}/run/libvirt/libvirt-sock"
        assert lc.migration_uri == f"tcp://{spec['address']}" and lc.migration_method == "nonshared-incremental"
        assert lc.accelerator == "tcg" and lc.image_repository == f"http://{boot['address']}:{boot['port']}"
        assert settings.templates.bridges == ["br-vm"] and settings.templates.default_bridge == "br-vm"


def test_qemu_needs_what_it_needs(tmp_path: Path) -> None:
    from snooze.dev.localcluster import ClusterError, ClusterOptions

    cluster = LocalCluster(tmp_path / "c", ClusterOptions(hypervisor="xen"))
    with pytest.raises(ClusterError, match="unknown hypervisor"):
        cluster.check_options()
    assert LocalCluster(tmp_path / "q", ClusterOptions(hypervisor="qemu")).options.netns




def test_up_detached_then_down_from_another_process_stops_the_hosts_and_their_guests(tmp_path: Path) -> None:
    # `down` has only cluster.json: the hosts are found by their records (mount namespaces), and a
    # running guest (a QEMU process the daemon started) goes with them.
    _require_qemu()
    env = {k: v for k, v in os.environ.items() if k not in ("SNOOZE_URL", "SNOOZE_STATE_DIR")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    state = tmp_path / "state"
    snooze = [sys.executable, "-m", "snooze.cli", "cluster"]
    up = subprocess.run([*snooze, "up", "--hypervisor", "qemu", "--detach", "--no-demo", "--state-dir", str(state),
                         "--gms", "2", "--base-port", str(port_range(1)), *FAST_ARGS],
                        capture_output=True, text=True, timeout=300, env=env)
    manifest: dict[str, Any] = {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "images:" in up.stdout and "host lc-1: namespace" in up.stdout, up.stdout
        manifest = json.loads((state / "cluster.json").read_text())
        with urllib.request.urlopen(manifest["images"] + "/images", timeout=10) as resp:
            assert [i["id"] for i in json.loads(resp.read())["images"]] == ["snooze-tiny"], "the launcher uploaded it"
        # The repository is a libvirt dir storage pool on a libvirtd of its own.
        conn = libvirt.open(manifest["repositoryHost"]["uri"])
        try:
            pool = conn.storagePoolLookupByName("snooze-images")
            assert pool.isActive() and "snooze-tiny" in pool.listVolumes()
            assert pool.storageVolLookupByName("snooze-tiny").path() == str(state / "images" / "snooze-tiny")
        finally:
            conn.close()
        [host, _] = manifest["hypervisors"]
        conn = libvirt.open(host["uri"])
        try:
            conn.createXML(tiny_domain_xml("left-running", kvm=False))
        finally:
            conn.close()
    finally:
        down = subprocess.run([*snooze, "down", "--state-dir", str(state)], capture_output=True, text=True, timeout=120, env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    hosts = [*manifest["hypervisors"], manifest["repositoryHost"]]
    pids = [p["pid"] for p in manifest["processes"]] + [h["pid"] for h in hosts]
    assert not any(alive(pid) for pid in pids)
    assert not _in_mount_namespaces([tuple(h["mountNamespace"]) for h in hosts]), "no QEMU left"
    assert not set(manifest["namespaces"]) & set(netns.namespaces())
    assert not Path(manifest["qemuDir"]).exists()


def _in_mount_namespaces(namespaces: list[tuple[int, ...]]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/mnt")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in namespaces and alive(int(entry)):
                found.append(int(entry))
    return found


def test_console_of_a_vm_on_the_test_driver_says_it_has_none(cluster_factory: Callable[..., LocalCluster]) -> None:
    c = cluster_factory(gms=2, lcs=1)
    b = c.bootstrap_url + "/bootstrap"
    status, task = http("POST", b + "?startVirtualCluster", json.dumps({"virtualMachineTemplates": [
        {"name": "plain-1", "vcpus": 1, "memory": 65536, "imageId": "x.qcow2"}]}))
    assert status == 200, task
    wait_for(lambda: http("POST", b + "?getVirtualClusterResponse", task)[1] or None, 60, "the VM")
    done = subprocess.run([sys.executable, "-m", "snooze.cli", "console", "--url", c.bootstrap_url, "plain-1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "test driver" in done.stderr and "no console" in done.stderr, done
    done = subprocess.run([sys.executable, "-m", "snooze.cli", "console", "--url", c.bootstrap_url, "nope"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nope" in done.stderr, done
