"""A local controller's VIF plugging: the plugins it loaded (``[localcontroller] vif_plugins``),
what it reports when it joins, and the plug before a domain starts / unplug after it is gone,
run off the event loop (pyroute2 and ovsdbapp block).

The VIF a domain was plugged with is kept in the domain's own metadata
(``localcontroller.hypervisor.adapt.attach_vif``), so that it is found again to unplug, after a
restart of the local controller too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from localcontroller.hypervisor.adapt import vif_of
from localcontroller.vif.library import VifLibrary
from snooze.codes import CodedError
from snooze.config import LocalControllerSettings
from snooze.vif.errors import ObjectError
from snooze.vif.objects import InstanceInfo, VIFBase, VIFOpenVSwitch, VIFPortProfileOpenVSwitch
from snooze.vif.versioned import from_wire, to_wire

__all__ = ["HostVifs", "Plugging"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugging:
    """A VM's VIF from its start order: the tap its domain opens, and the VIF to keep."""

    vif: VIFBase
    tap: str
    wire_json: str
    #: The port is read by Open vSwitch's userspace datapath: the domain gets no checksum offload.
    no_offload: bool = False


class HostVifs:
    def __init__(self, settings: LocalControllerSettings) -> None:
        self.datapath_type = settings.vif_datapath_type
        self.pins = dict(settings.vif_object_versions)
        self.library = VifLibrary()
        self.library.initialize(settings.vif_plugins, {
            "ovs": {"ovsdb": settings.vif_ovsdb, "datapath_type": settings.vif_datapath_type}})
        self.library.host_info(self.pins)  # a bad pin stops the start, naming it

    def host_info(self) -> dict[str, Any]:
        """The join's ``hostInfo``."""
        return to_wire(self.library.host_info(self.pins))

    def read(self, raw: Any) -> Plugging:
        """The VIF of a start order; a CodedError (INVALID_VIF_OBJECT, VIF_VERSION_TOO_NEW,
        NO_MATCHING_VIF_PLUGIN) if it does not read here or no plugin of ours plugs it."""
        vif = from_wire(raw, VIFBase, field="vif")
        self.library.plugin_for(vif)
        tap = getattr(vif, "vif_name", None)
        if not isinstance(tap, str):
            raise ObjectError(f"a {type(vif).__name__} names no device for the domain", field="vif")
        profile = vif.port_profile
        datapath = profile.datapath_type if isinstance(profile, VIFPortProfileOpenVSwitch) and profile.datapath_type != "system" \
            else self.datapath_type
        # Kept as received (checked whole above): the versions its group manager sent.
        return Plugging(vif, tap, json.dumps(raw, separators=(",", ":")),
                        no_offload=isinstance(vif, VIFOpenVSwitch) and datapath == "netdev")

    @staticmethod
    def instance(name: str, xml: str) -> InstanceInfo:
        """The VM as os-vif's InstanceInfo: its domain's name and UUID."""
        try:
            text = (ET.fromstring(xml).findtext("uuid") or "").strip().lower()
            domain_uuid = str(uuid.UUID(text))
        except (ET.ParseError, ValueError):
            domain_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
        return InstanceInfo(uuid=domain_uuid, name=name)

    async def plug(self, plugging: Plugging, instance: InstanceInfo) -> None:
        await asyncio.to_thread(self.library.plug, plugging.vif, instance)

    async def unplug_domain(self, name: str, xml: str | None) -> None:
        """Unplug the VIF kept in a domain's XML (that is gone now); logged, never raised: the
        domain is gone whatever becomes of its tap."""
        raw = vif_of(xml) if xml else None
        if raw is None:
            return
        try:
            vif = from_wire(json.loads(raw), VIFBase, field="vif")
            await asyncio.to_thread(self.library.unplug, vif, self.instance(name, xml or ""))
        except (ValueError, CodedError) as exc:
            log.warning("could not unplug the VIF of %s: %s", name, exc)

    def close(self) -> None:
        self.library.close()

