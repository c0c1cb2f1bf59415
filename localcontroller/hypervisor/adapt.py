"""Fitting a submitted domain XML to this host's hypervisor, and saying what was changed.

First the host's own template policy is applied (``snooze.domainxml``, with this host's image
store, resolving relative paths and symlinks there): whatever a leader accepted, a domain that
would reach outside the image store or the allowed devices never gets further than this. Then,
on a real hypervisor, the template is used as given, except that ``imageId`` must name a disk
image in the image store (its disk source is set to that file). On libvirt's test driver,
which runs no guest, the domain type becomes ``test``, the emulator is dropped, and disks
whose image does not exist are removed; every change is listed so that users can see it.
"""

from __future__ import annotations

import os
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

from localcontroller.hypervisor.errors import HypervisorError, InvalidDomainXML
from snooze.codes import ErrorCode
from snooze.domainxml import DomainPolicy, PolicyViolation, RebuiltDomain, rebuild_domain
from snooze.ids import is_valid_id
from snooze.virtualcluster import normalise_mac


class ImageNotFound(HypervisorError):
    code = ErrorCode.IMAGE_NOT_FOUND


def check_on_host(xml: str, policy: DomainPolicy, *, test_driver: bool) -> RebuiltDomain:
    """The domain rebuilt under this host's policy, or InvalidDomainXML naming the element."""
    try:
        return rebuild_domain(xml, policy, on_host=True, test_driver=test_driver)
    except PolicyViolation as exc:
        raise InvalidDomainXML(f"refused by this host's template policy: {exc}") from None


def _normalised(mac: str) -> str:
    try:
        return normalise_mac(mac)
    except ValueError:
        return mac  # not ours to judge here: libvirt refuses it with its own message


ACCELERATORS = ("auto", "kvm", "tcg")


def domain_type(requested: str | None, accelerator: str, offered: frozenset[str]) -> str | None:
    """The domain type to run with: ``accelerator`` kvm or tcg (= qemu) as told; auto keeps the
    template's when this host offers it (``offered``: its capabilities' domain types), else
    qemu (TCG, which every QEMU host offers). None: leave it as it is."""
    if accelerator == "kvm":
        return "kvm"
    if accelerator == "tcg":
        return "qemu"
    if requested in offered or not offered:
        return None
    return "qemu" if "qemu" in offered else None


def _free_target(devices: ET.Element) -> str:
    used = {t.get("dev") for d in devices.findall("disk") if (t := d.find("target")) is not None}
    return next(f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in used)


def attach_instance_disks(root: ET.Element, devices: ET.Element, overlay: Path, cidata: Path | None) -> list[str]:
    """Boot from ``overlay``: the first file disk's source (driver qcow2), or a new virtio disk
    vda; add ``cidata`` (the config drive) as a read-only raw virtio disk; make sure there is a
    serial console (pty). The changes, listed."""
    changes: list[str] = []
    first = next((d for d in devices.findall("disk") if d.get("device", "disk") == "disk" and d.get("type", "file") == "file"),
                 None)
    if first is None:
        first = ET.Element("disk", {"type": "file", "device": "disk"})
        ET.SubElement(first, "target", {"dev": _free_target(devices), "bus": "virtio"})
        devices.insert(0, first)
        changes.append("a boot disk added for the image")
    driver = first.find("driver")
    if driver is None:
        driver = ET.Element("driver")
        first.insert(0, driver)
    driver.set("name", "qemu")
    driver.set("type", "qcow2")
    src = first.find("source")
    if src is None:
        src = ET.SubElement(first, "source")
    src.set("file", str(overlay))
    for stale in first.findall("backingStore"):
        first.remove(stale)
    target = first.find("target")
    changes.append(f"disk {target.get('dev') if target is not None else ''} -> overlay {overlay.name}")
    if cidata is not None:
        drive = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(drive, "driver", {"name": "qemu", "type": "raw"})
        ET.SubElement(drive, "source", {"file": str(cidata)})
        ET.SubElement(drive, "target", {"dev": _free_target(devices), "bus": "virtio"})
        ET.SubElement(drive, "readonly")
        changes.append("config drive (NoCloud) attached read-only")
    if devices.find("serial") is None and devices.find("console") is None:
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        ET.SubElement(serial, "target", {"port": "0"})
        changes.append("serial console (pty) added")
    return changes


def retarget_disks(xml: str, paths: dict[str, str], copy: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """The domain ``xml`` with its file disks' sources renamed by ``paths`` (for the destination
    of a migration), and the targets (vda...) of the disks whose source is in ``copy``: those
    a non-shared migration copies."""
    root = ET.fromstring(xml)
    copied: list[str] = []
    for disk in root.iter("disk"):
        src, target = disk.find("source"), disk.find("target")
        old = src.get("file") if src is not None else None
        if src is None or old is None:
            continue
        if old in copy and target is not None and target.get("dev"):
            copied.append(str(target.get("dev")))
        if old in paths:
            src.set("file", paths[old])
    return ET.tostring(root, encoding="unicode"), copied


#: The XML namespace of the VIF a local controller plugged, kept in the domain's <metadata>.
VIF_XMLNS = "https://snooze.dev/xmlns/vif/1"
ET.register_namespace("snooze", VIF_XMLNS)


def attach_vif(root: ET.Element, devices: ET.Element, dev: str, mac: str | None, wire_json: str,
               no_offload: bool = False) -> list[str]:
    """The domain's network card on the tap ``dev`` a VIF plugin made (libvirt's
    ``<interface type='ethernet'>`` with ``<target dev=… managed='no'/>``: QEMU opens the
    existing device), in place of the template's first interface; the VIF itself is kept in the
    domain's metadata, so the local controller finds it again to unplug (after a restart too)."""
    old = devices.find("interface")
    model = old.find("model") if old is not None else None
    iface = ET.Element("interface", {"type": "ethernet"})
    if mac:
        ET.SubElement(iface, "mac", {"address": _normalised(mac)})
    ET.SubElement(iface, "target", {"dev": dev, "managed": "no"})
    ET.SubElement(iface, "model", {"type": model.get("type", "virtio") if model is not None else "virtio"})
    if no_offload:
        # Open vSwitch's userspace datapath reads the tap as plain packets: a guest's packets
        # with a checksum left for the host to fill (virtio's offload) would leave it unfilled.
        # QEMU then offers the guest no checksum or segmentation offload.
        driver = ET.SubElement(iface, "driver")
        ET.SubElement(driver, "host", {k: "off" for k in ("csum", "gso", "tso4", "tso6", "ecn", "ufo")})
    if old is not None:
        devices.insert(list(devices).index(old), iface)
        devices.remove(old)
    else:
        devices.append(iface)
    if root.find("uuid") is None:
        # Its UUID chosen here, so that the plug's vm-uuid and the VRS tables name the domain's.
        uuid_el = ET.Element("uuid")
        uuid_el.text = str(uuidlib.uuid4())
        root.insert(1, uuid_el)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for stale in metadata.findall(f"{{{VIF_XMLNS}}}vif"):
        metadata.remove(stale)
    ET.SubElement(metadata, f"{{{VIF_XMLNS}}}vif").text = wire_json
    return [f"network card on tap {dev} (plugged by its VIF plugin)"]


def vif_of(xml: str) -> str | None:
    """The JSON of the VIF kept in a domain's metadata by ``attach_vif``, if any."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    el = root.find(f"metadata/{{{VIF_XMLNS}}}vif")
    return el.text if el is not None and el.text else None


def adapt_domain_xml(
    xml: str, *, name: str, mac: str | None, test_driver: bool, image_id: str | None, policy: DomainPolicy,
    overlay: Path | None = None, cidata: Path | None = None, accelerator: str = "auto",
    offered_types: frozenset[str] = frozenset(), vif: tuple[str, str, bool] | None = None,
) -> tuple[str, list[str]]:
    """The domain to define here. With ``overlay`` (an image of the repository, prepared by
    the local controller) the boot disk is that overlay and ``cidata`` is attached; without,
    ``imageId`` names a file in the image store (the original's behaviour). With ``vif`` (the
    tap a VIF plugin made, the VIF's JSON) the network card is that tap (``attach_vif``)."""
    root = check_on_host(xml, policy, test_driver=test_driver).root
    changes: list[str] = []
    if not test_driver:
        new_type = domain_type(root.get("type"), accelerator, offered_types)
        if new_type is not None and new_type != root.get("type"):
            changes.append(f"domain type {root.get('type')!r} -> {new_type!r} (accelerator {accelerator})")
            root.set("type", new_type)
    name_el = root.find("name")
    if name_el is None:
        name_el = ET.SubElement(root, "name")
    if (name_el.text or "").strip() != name:
        name_el.text = name
        changes.append(f"name set to {name}")
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    if mac:
        iface = devices.find("interface")
        if iface is not None:
            mac_el = iface.find("mac")
            if mac_el is None:
                mac_el = ET.Element("mac")
                iface.insert(0, mac_el)
            # As libvirt writes it (an older group manager may send the original's unpadded form).
            mac_el.set("address", _normalised(mac))
    if vif is not None:
        # (tap device, the VIF's wire form as JSON, no offload): after the MAC above, which it keeps.
        changes += attach_vif(root, devices, vif[0], mac, vif[1], vif[2])
    if overlay is not None and not test_driver:
        changes += attach_instance_disks(root, devices, overlay, cidata)
    elif image_id and not test_driver:
        if not is_valid_id(image_id):
            raise ImageNotFound(f"image {image_id!r} is not a file name")
        path = Path(policy.image_directory) / image_id
        if not path.is_file():
            raise ImageNotFound(f"image {image_id!r} is not in {policy.image_directory}")
        for disk in devices.findall("disk"):
            src = disk.find("source")
            if disk.get("device", "disk") == "disk" and disk.get("type", "file") == "file" and src is not None:
                src.set("file", str(path))
                break
    if test_driver:
        if root.get("type") != "test":
            changes.append(f"domain type {root.get('type')!r} -> 'test' (libvirt test driver)")
            root.set("type", "test")
        emulator = devices.find("emulator")
        if emulator is not None:
            devices.remove(emulator)
            changes.append(f"emulator {emulator.text!r} removed")
        for disk in list(devices.findall("disk")):
            src = disk.find("source")
            path_text = src.get("file") if src is not None else None
            # The policy made every path absolute and inside the image store.
            if src is not None and path_text and not os.path.exists(path_text):
                # The test driver refuses a disk without a source: drop the whole disk.
                devices.remove(disk)
                changes.append(f"disk {path_text!r} removed (no such image here)")
    return ET.tostring(root, encoding="unicode"), changes
