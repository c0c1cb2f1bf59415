"""Fitting a submitted domain XML to this host's hypervisor, and saying what was changed.

On a real hypervisor the template is used as given, except that ``imageId`` must name a disk
image in the image directory (its disk source is set to that file). On libvirt's test driver,
which runs no guest, the domain type becomes ``test``, the emulator is dropped, and disk
disks whose image does not exist are removed; every change is listed so that users can see it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from localcontroller.hypervisor.errors import HypervisorError, InvalidDomainXML


class ImageNotFound(HypervisorError):
    code = "IMAGE_NOT_FOUND"


def adapt_domain_xml(
    xml: str, *, name: str, mac: str | None, test_driver: bool, image_id: str | None, image_dir: str
) -> tuple[str, list[str]]:
    try:
        root = ET.fromstring(xml.encode())
    except ET.ParseError as exc:
        raise InvalidDomainXML(f"domain XML does not parse: {exc}") from exc
    changes: list[str] = []
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
            mac_el.set("address", mac)
    if image_id and not test_driver:
        path = Path(image_dir) / image_id
        if not path.is_file():
            raise ImageNotFound(f"image {image_id!r} is not in {image_dir}")
        for disk in devices.findall("disk"):
            src = disk.find("source")
            if disk.get("device", "disk") == "disk" and src is not None:
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
            if src is not None and path_text and not os.path.exists(path_text):
                # The test driver refuses a disk without a source: drop the whole disk.
                devices.remove(disk)
                changes.append(f"disk {path_text!r} removed (no such image here)")
    return ET.tostring(root, encoding="unicode"), changes
