"""Template validation, MAC encoding, and adapting domain XML to the hypervisor."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from localcontroller.hypervisor.adapt import ImageNotFound, adapt_domain_xml
from snooze.domainxml import DomainPolicy
from snooze.virtualcluster import (
    InvalidSubmission,
    mac_for_ip,
    parse_submission,
    set_mac,
    subnet_hosts,
)

KVM = ('<domain type="kvm"><name>d1</name><memory>200000</memory><vcpu>2</vcpu><devices><emulator>/usr/bin/kvm</emulator>'
       '<disk device="disk" type="file"><source file="/var/lib/snooze/images/nonexistent/d1.qcow2"/><target dev="vda"/></disk>'
       '<interface type="bridge"><mac address="52:54:01:84:26:2c"/><source bridge="virbr0"/></interface></devices></domain>')


def test_mac_encodes_the_ip_as_the_original() -> None:
    # The original's 54:56 + IP encoding, zero-padded as libvirt and OVS write MACs.
    assert mac_for_ip("192.168.122.6") == "54:56:c0:a8:7a:06"
    assert mac_for_ip("10.0.0.255") == "54:56:0a:00:00:ff"
    assert subnet_hosts("192.168.122.0/24")[0] == "192.168.122.2", "network and gateway .1 are never handed out"
    assert len(subnet_hosts("192.168.122.0/24")) == 253


def test_set_mac_replaces_the_first_interfaces_mac_and_leaves_nic_less_domains_alone() -> None:
    # The original's unpadded form (a record from the seed) is written as libvirt would.
    out = ET.fromstring(set_mac(KVM, "54:56:C0:A8:7A:6").split("?>", 1)[1])
    assert out.find("devices/interface/mac").get("address") == "54:56:c0:a8:7a:06"  # type: ignore[union-attr]
    bare = "<domain><name>x</name><memory>1024</memory></domain>"
    assert set_mac(bare, "54:56:1:2:3:4") == bare


def test_submission_parses_both_template_forms() -> None:
    specs = parse_submission({"virtualMachineTemplates": [
        {"libVirtTemplate": KVM, "networkCapacityDemand": {"rxBytes": 12800.0, "txBytes": 6400.0}},
        {"vcpus": 2, "memory": 524288, "name": "v2", "imageId": "debian.qcow2"},
    ]})
    assert specs[0].id == "d1" and specs[0].requested == (2.0, 200000.0, 12800.0, 6400.0)
    assert specs[1].id == "v2" and specs[1].requested == (2.0, 524288.0, 0.0, 0.0)
    assert ET.fromstring(specs[1].xml).find("devices/disk/source").get("file") == "debian.qcow2"  # type: ignore[union-attr]


def test_the_originals_lenient_template_forms() -> None:
    # Numbers as JSON strings, a blank libVirtTemplate beside vcpus/memory, hostId "UNKNOWN",
    # the libVirtDescription alias and fields this version does not know: as the original's Jackson took them.
    specs = parse_submission({"virtualMachineTemplates": [
        {"vcpus": "2", "memory": " 524288 ", "name": "v1", "libVirtTemplate": "  ", "hostId": "UNKNOWN",
         "networkCapacityDemand": {"rxBytes": "12800", "txBytes": "6400.5"}, "type": "id_based", "future": [1]},
        {"libVirtDescription": KVM, "hostId": ""},
    ]})
    assert specs[0].requested == (2.0, 524288.0, 12800.0, 6400.5) and specs[0].host_id is None
    assert specs[1].id == "d1" and specs[1].host_id is None
    # Still refused, naming the field: text that is not a plain number, or out of range once read.
    for bad, where in (({"vcpus": "two"}, "vcpus"), ({"vcpus": "NaN"}, "vcpus"), ({"vcpus": "0x10"}, "vcpus"),
                       ({"memory": "1e400"}, "memory"), ({"vcpus": "2.5"}, "vcpus")):
        template = {"vcpus": 1, "memory": 524288, "name": "v", **bad}
        with pytest.raises(InvalidSubmission) as err:
            parse_submission({"virtualMachineTemplates": [template]})
        assert err.value.field == f"virtualMachineTemplates[0].{where}", (bad, err.value)


def test_memory_units_in_domain_xml_are_converted_to_kib() -> None:
    xml = '<domain><name>m</name><memory unit="MiB">512</memory></domain>'
    assert parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": xml}]})[0].requested[1] == 524288.0
    with pytest.raises(InvalidSubmission) as err:
        parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": xml.replace("MiB", "parsecs")}]})
    assert err.value.field == "virtualMachineTemplates[0].libVirtTemplate"


def test_adaptation_to_the_test_driver_is_recorded() -> None:
    xml, changes = adapt_domain_xml(KVM, name="d1", mac="54:56:c0:a8:7a:6", test_driver=True, image_id=None,
                                    policy=DomainPolicy.default())
    root = ET.fromstring(xml)
    assert root.get("type") == "test" and root.find("devices/emulator") is None and root.find("devices/disk") is None
    assert root.find("devices/interface/mac").get("address") == "54:56:c0:a8:7a:06"  # type: ignore[union-attr]
    assert len(changes) == 3 and any("kvm" in c for c in changes)


def test_on_a_real_hypervisor_the_template_is_kept_and_images_must_exist(tmp_path: Path) -> None:
    policy = dataclasses.replace(DomainPolicy.default(), image_directory=str(tmp_path))
    kvm = KVM.replace("/var/lib/snooze/images/nonexistent", str(tmp_path))
    with pytest.raises(ImageNotFound) as err:
        adapt_domain_xml(kvm, name="d1", mac=None, test_driver=False, image_id="missing.qcow2", policy=policy)
    assert err.value.code == "IMAGE_NOT_FOUND" and "missing.qcow2" in str(err.value)
    (tmp_path / "debian.qcow2").write_bytes(b"")
    xml, changes = adapt_domain_xml(kvm, name="d1", mac=None, test_driver=False, image_id="debian.qcow2", policy=policy)
    root = ET.fromstring(xml)
    assert root.get("type") == "kvm" and root.find("devices/emulator") is not None
    assert root.find("devices/disk/source").get("file") == str(tmp_path / "debian.qcow2")  # type: ignore[union-attr]
    assert changes == []
