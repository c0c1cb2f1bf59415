"""The local controller's domain changes for a VM booting from an image of the repository:
its overlay as the boot disk, the config drive read-only after it, a serial console, the
accelerator, and the re-pointing of disks for a migration's destination."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from localcontroller.hypervisor.adapt import adapt_domain_xml, domain_type, retarget_disks
from snooze.domainxml import DomainPolicy
from snooze.virtualcluster import domain_xml

POLICY = DomainPolicy.default()
OVERLAY, CIDATA = Path("/var/lib/snooze/instances/vm-1.qcow2"), Path("/var/lib/snooze/instances/vm-1-cidata.img")


def _disks(xml: str) -> list[tuple[str | None, str | None, str | None, bool]]:
    root = ET.fromstring(xml)
    return [(d.find("target").get("dev"), d.find("source").get("file"), d.find("driver").get("type"),  # type: ignore[union-attr]
             d.find("readonly") is not None) for d in root.iter("disk")]


def test_a_generated_domain_boots_from_its_overlay_with_the_config_drive_after_it() -> None:
    xml, changes = adapt_domain_xml(domain_xml("vm-1", 1, 131072, "snooze-tiny", POLICY), name="vm-1", mac="54:56:c0:a8:7a:2",
                                    test_driver=False, image_id="snooze-tiny", policy=POLICY, overlay=OVERLAY, cidata=CIDATA,
                                    accelerator="tcg", offered_types=frozenset({"qemu", "kvm"}))
    assert _disks(xml) == [("vda", str(OVERLAY), "qcow2", False), ("vdb", str(CIDATA), "raw", True)]
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.find("devices/interface/mac").get("address") == "54:56:c0:a8:7a:02"  # type: ignore[union-attr]
    assert root.find("devices/interface/model").get("type") == "virtio"  # type: ignore[union-attr]
    assert root.find("devices/serial") is not None
    assert any("overlay vm-1.qcow2" in c for c in changes) and any("config drive" in c for c in changes)


def test_a_template_without_disk_or_console_gets_both() -> None:
    template = ("<domain type='kvm'><name>vm-1</name><memory>65536</memory><vcpu>1</vcpu>"
                "<os><type arch='x86_64'>hvm</type></os><devices/></domain>")
    xml, changes = adapt_domain_xml(template, name="vm-1", mac=None, test_driver=False, image_id="img", policy=POLICY,
                                    overlay=OVERLAY, cidata=CIDATA)
    assert _disks(xml) == [("vda", str(OVERLAY), "qcow2", False), ("vdb", str(CIDATA), "raw", True)]
    assert "serial console (pty) added" in changes
    assert ET.fromstring(xml).get("type") == "kvm", "accelerator auto, host capabilities unknown: as given"


def test_accelerator() -> None:
    assert domain_type("kvm", "auto", frozenset({"qemu"})) == "qemu"
    assert domain_type("kvm", "auto", frozenset({"qemu", "kvm"})) is None
    assert domain_type("qemu", "kvm", frozenset({"qemu"})) == "kvm"
    assert domain_type("kvm", "tcg", frozenset({"qemu", "kvm"})) == "qemu"


def test_disks_re_pointed_for_the_destination() -> None:
    xml, _ = adapt_domain_xml(domain_xml("vm-1", 1, 131072, "img", POLICY), name="vm-1", mac=None, test_driver=False,
                              image_id="img", policy=POLICY, overlay=OVERLAY, cidata=CIDATA)
    there = {str(OVERLAY): "/b/instances/vm-1.qcow2", str(CIDATA): "/b/instances/vm-1-cidata.img"}
    moved, copied = retarget_disks(xml, there, copy=(str(OVERLAY),))
    assert copied == ["vda"]
    assert [d[1] for d in _disks(moved)] == ["/b/instances/vm-1.qcow2", "/b/instances/vm-1-cidata.img"]
