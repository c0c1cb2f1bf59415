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
import xml.etree.ElementTree as ET
from pathlib import Path

from localcontroller.hypervisor.errors import HypervisorError, InvalidDomainXML
from snooze.codes import ErrorCode
from snooze.domainxml import DomainPolicy, PolicyViolation, RebuiltDomain, rebuild_domain
from snooze.ids import is_valid_id


class ImageNotFound(HypervisorError):
    code = ErrorCode.IMAGE_NOT_FOUND


def check_on_host(xml: str, policy: DomainPolicy, *, test_driver: bool) -> RebuiltDomain:
    """The domain rebuilt under this host's policy, or InvalidDomainXML naming the element."""
    try:
        return rebuild_domain(xml, policy, on_host=True, test_driver=test_driver)
    except PolicyViolation as exc:
        raise InvalidDomainXML(f"refused by this host's template policy: {exc}") from None


def adapt_domain_xml(
    xml: str, *, name: str, mac: str | None, test_driver: bool, image_id: str | None, policy: DomainPolicy
) -> tuple[str, list[str]]:
    root = check_on_host(xml, policy, test_driver=test_driver).root
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
