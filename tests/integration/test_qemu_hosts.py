"""Private libvirtd hosts that live in their own network namespaces, joined by a fabric: a
guest's tap is born in its host's namespace (plugged into ``br-vm``, which holds the VM
subnet's gateway), a live migration streams over the fabric, and nothing is left behind —
also when the hosts are stopped from their record (``stop_recorded``), as ``snooze cluster
down`` does for a cluster another process started."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from localcontroller.hypervisor.migration import MigrationSettings, migrate_domain
from snooze.dev import netns
from snooze.dev.sim.libvirtd import LibvirtdCluster, stop_recorded, tiny_domain_xml
from tests.integration.test_qemu_migration import _require_qemu, _short_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NIC = ("<interface type='bridge'><source bridge='br-vm'/><mac address='54:56:c0:a8:7a:06'/>"
       "<model type='virtio'/></interface>")


def links(namespace: str) -> list[str]:
    return [line.split()[0].split("@")[0] for line in netns.ip("-br", "link", netns=namespace).splitlines() if line.strip()]


def test_hosts_in_namespaces_plug_guests_there_and_migrate_over_the_fabric(tmp_path_factory: pytest.TempPathFactory) -> None:
    _require_qemu()
    root_links = links("")
    state = _short_dir(tmp_path_factory, "lvns")
    cluster = LibvirtdCluster(state, count=2, fabric=True, vm_gateway="192.168.122.1/24", private_dirs=["/var/lib/snooze"])
    assert cluster.fabric is not None
    made = cluster.fabric.namespaces
    try:
        started = time.monotonic()
        one, two = cluster.start()
        print(f"\n[timing] 2 hosts in namespaces started in {time.monotonic() - started:.2f} s")
        assert one.netns and two.netns and one.netns != two.netns
        assert one.migration_uri == f"tcp://{one.address}" and one.address != "127.0.0.1"
        for host in (one, two):
            assert "192.168.122.1/24" in netns.ip("-o", "addr", "show", "dev", "br-vm", netns=host.netns)
        # Each host keeps its own /var/lib/snooze, which a process entering it sees.
        seen = subprocess.run([*one.enter_argv(), "sh", "-c", "touch /var/lib/snooze/mine && ip -br addr"],
                              capture_output=True, text=True, timeout=30)
        assert seen.returncode == 0, seen.stderr
        assert one.address in seen.stdout and "192.168.122.1" in seen.stdout
        assert (one.state_dir / "private/var/lib/snooze/mine").exists()
        assert not (two.state_dir / "private/var/lib/snooze/mine").exists()

        source, destination = libvirt.open(one.uri), libvirt.open(two.uri)
        try:
            domain = source.defineXML(tiny_domain_xml("ns-1", kvm=False).replace("<memballoon", NIC + "<memballoon"))
            domain.create()
            assert "vnet0" in links(one.netns), "the tap is born in the host's namespace"
            assert links("") == root_links, "nothing appears in the root namespace"
            result = migrate_domain(domain, two.uri, two.migration_uri, MigrationSettings(method="live"))
            print(f"[timing] live migration over the fabric: {result.duration:.2f} s")
            assert [d.name() for d in destination.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)] == ["ns-1"]
            assert source.listAllDomains() == []
            assert "vnet0" in links(two.netns) and "vnet0" not in links(one.netns)
        finally:
            source.close()
            destination.close()

        # Stopped from the record, as another process would: the running guest goes too.
        records = cluster.records()
        assert stop_recorded(records) == 2
        for record in records:
            assert not Path(f"/proc/{record['pid']}").exists() or "Z" in Path(f"/proc/{record['pid']}/stat").read_text().split(") ")[-1][:1]
    finally:
        cluster.stop()
    assert not set(made) & set(netns.namespaces()), "the hosts' namespaces are gone"
    assert links("") == root_links
