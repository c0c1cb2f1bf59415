"""What a VIF plugin is (os-vif's ``PluginBase``): a name, the VIF classes it plugs at which
versions, and ``plug``/``unplug``. Plugins are found by entry point (group ``snooze.vif``) and
made with their options (``[vif.PLUGIN]`` of the local controller's configuration)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from snooze.vif.objects import (
    HostPluginInfo,
    HostPortProfileInfo,
    HostVIFInfo,
    InstanceInfo,
    VIFBase,
)
from snooze.vif.versioned import VersionedObject

__all__ = ["VifPlugin"]


class VifPlugin(abc.ABC):
    #: The name VIFs name it by (``VIFBase.plugin``) and its entry point's.
    name: ClassVar[str]
    #: The VIF classes it plugs, first the one it prefers, each with the oldest version it reads.
    vif_classes: ClassVar[tuple[tuple[type[VIFBase], str], ...]]
    #: The port profiles it understands, with the oldest version of each.
    port_profiles: ClassVar[tuple[tuple[type[VersionedObject], str], ...]] = ()

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def describe(self) -> HostPluginInfo:
        """What this plugin can plug (os-vif's ``describe()``)."""
        profiles = [HostPortProfileInfo(profile_object_name=cls.__name__, min_version=low, max_version=cls.VERSION)
                    for cls, low in self.port_profiles]
        return HostPluginInfo(plugin_name=self.name, vif_info=[
            HostVIFInfo(vif_object_name=cls.__name__, min_version=low, max_version=cls.VERSION,
                        supported_port_profiles=profiles) for cls, low in self.vif_classes])

    def supports(self, vif: VIFBase) -> bool:
        return any(type(vif) is cls for cls, _ in self.vif_classes)

    @abc.abstractmethod
    def plug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        """Make the host side of ``vif`` ready for the hypervisor; idempotent. On failure,
        remove what this call made and raise."""

    @abc.abstractmethod
    def unplug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        """Remove the host side of ``vif`` (keeping shared things such as the bridge);
        idempotent: what is gone already is not an error."""

    def close(self) -> None:  # noqa: B027 - most plugins hold nothing to release
        """Release connections (the OVSDB's)."""
