"""The ``noop`` plugin (os-vif's): plugs nothing. For interfaces the hypervisor sets up itself
(libvirt's bridge interfaces on a bridge the host already has)."""

from __future__ import annotations

from localcontroller.vif.base import VifPlugin
from snooze.vif.objects import InstanceInfo, VIFBase, VIFBridge, VIFGeneric

__all__ = ["NoopPlugin"]


class NoopPlugin(VifPlugin):
    name = "noop"
    vif_classes = ((VIFGeneric, "1.0"), (VIFBridge, "1.0"))

    def plug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        return None

    def unplug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        return None
