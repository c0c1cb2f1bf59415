"""Building virtual-machine templates and submission requests in the API's JSON shape.

A template is either a libvirt domain XML (``libVirtTemplate``) or the four fields
``vcpus``, ``memory`` (KiB), ``imageId`` and ``name``; both carry a network demand. These
helpers check what a client can check before the request leaves, so that a typo is reported
with the field's name rather than as a server 400.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from snooze.client.errors import SnoozeClientError
from snooze.client.types import NetworkDemandJson, VirtualMachineTemplateJson
from snooze.codes import ErrorCode

# The seed's examples ask for 12800 bytes/s each way; it is also the original driver's default.
DEFAULT_NETWORK_DEMAND = 12800.0

BAD_TEMPLATE = ErrorCode.BAD_TEMPLATE


def network_demand(rx: float = DEFAULT_NETWORK_DEMAND, tx: float = DEFAULT_NETWORK_DEMAND) -> NetworkDemandJson:
    for name, value in (("rxBytes", rx), ("txBytes", tx)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise SnoozeClientError(BAD_TEMPLATE, f"{name} must be a number >= 0, got {value!r}",
                                    f"networkCapacityDemand.{name}")
    return {"rxBytes": float(rx), "txBytes": float(tx)}


def libvirt_template(xml: str, *, rx: float = DEFAULT_NETWORK_DEMAND,
                     tx: float = DEFAULT_NETWORK_DEMAND) -> VirtualMachineTemplateJson:
    """A template from a libvirt domain XML string."""
    if not xml.strip():
        raise SnoozeClientError(BAD_TEMPLATE, "the libvirt template is empty", "libVirtTemplate")
    return {"libVirtTemplate": xml, "networkCapacityDemand": network_demand(rx, tx)}


def libvirt_template_file(path: str | os.PathLike[str], *, rx: float = DEFAULT_NETWORK_DEMAND,
                          tx: float = DEFAULT_NETWORK_DEMAND) -> VirtualMachineTemplateJson:
    """A template from a file holding a libvirt domain XML (the seed's ``debian1.xml``)."""
    try:
        xml = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SnoozeClientError(BAD_TEMPLATE, f"cannot read {os.fspath(path)}: {exc.strerror or exc}",
                                "libVirtTemplate") from exc
    return libvirt_template(xml, rx=rx, tx=tx)


def sized_template(*, vcpus: int, memory: int, image_id: str, name: str,
                   rx: float = DEFAULT_NETWORK_DEMAND, tx: float = DEFAULT_NETWORK_DEMAND) -> VirtualMachineTemplateJson:
    """A template from a size (``memory`` in KiB, as everywhere in the API), an image and a name."""
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
        raise SnoozeClientError(BAD_TEMPLATE, f"vcpus must be an integer >= 1, got {vcpus!r}", "vcpus")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
        raise SnoozeClientError(BAD_TEMPLATE, f"memory (KiB) must be an integer >= 1, got {memory!r}", "memory")
    if not image_id:
        raise SnoozeClientError(BAD_TEMPLATE, "imageId is required without a libvirt template", "imageId")
    if not name:
        raise SnoozeClientError(BAD_TEMPLATE, "name is required without a libvirt template", "name")
    return {"vcpus": vcpus, "memory": memory, "imageId": image_id, "name": name,
            "networkCapacityDemand": network_demand(rx, tx)}


def submission_request(templates: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``startVirtualCluster`` body: ``{"virtualMachineTemplates": [...]}``."""
    items = [dict(t) for t in templates]
    if not items:
        raise SnoozeClientError(BAD_TEMPLATE, "a virtual cluster needs at least one template",
                                "virtualMachineTemplates")
    return {"virtualMachineTemplates": items}


def domain_name(xml: str) -> str | None:
    """The ``<name>`` of a libvirt domain XML, or None if it has none or is not XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    name = root.findtext("name")
    return name.strip() if name and name.strip() else None
