"""os-vif's library interface for the local controller: ``initialize`` loads the plugins (entry
point group ``snooze.vif``), ``host_info`` says what they plug (sent when the host joins), and
``plug``/``unplug`` hand a VIF to the plugin it names.

Errors are os-vif's: ``LibraryNotInitialized``, ``NoMatchingPlugin``, ``PlugException``,
``UnplugException`` (``snooze.vif.errors``); anything unexpected a plugin raises becomes a
Plug/UnplugException naming the plugin, so a failed plug fails that VM with
``VIF_PLUG_FAILED`` and never the local controller.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from localcontroller.vif.base import VifPlugin
from snooze.codes import CodedError
from snooze.vif.errors import (
    LibraryNotInitialized,
    NoMatchingPlugin,
    PlugException,
    UnplugException,
)
from snooze.vif.objects import HostInfo, InstanceInfo, VIFBase
from snooze.vif.versioned import ObjectError, newest_versions, parse_version

__all__ = ["ENTRY_POINT_GROUP", "VifLibrary", "available_plugins"]

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "snooze.vif"


def available_plugins() -> dict[str, type[VifPlugin]]:
    """Every plugin installed (by entry point), by name."""
    found: dict[str, type[VifPlugin]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, VifPlugin)):
            raise TypeError(f"entry point {ep.name} of {ENTRY_POINT_GROUP} is not a VifPlugin: {ep.value}")
        found[ep.name] = cls
    return found


class VifLibrary:
    def __init__(self) -> None:
        self._plugins: dict[str, VifPlugin] | None = None

    @property
    def initialized(self) -> bool:
        return self._plugins is not None

    def initialize(self, names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Load the plugins ``names`` (each with ``options[name]``); an unknown name is a
        NoMatchingPlugin naming the installed ones."""
        installed = available_plugins()
        plugins: dict[str, VifPlugin] = {}
        for name in names:
            cls = installed.get(name)
            if cls is None:
                raise NoMatchingPlugin(f"no VIF plugin {name!r} is installed (installed: {', '.join(sorted(installed)) or 'none'})")
            plugins[name] = cls((options or {}).get(name))
        self._plugins = plugins
        log.info("VIF plugins: %s", ", ".join(plugins) or "none")

    def _loaded(self) -> dict[str, VifPlugin]:
        if self._plugins is None:
            raise LibraryNotInitialized("the VIF library is used before initialize()")
        return self._plugins

    def host_info(self, pins: Mapping[str, str] | None = None) -> HostInfo:
        """What this host plugs; with ``pins`` (object name -> version), no newer version of
        those objects is claimed (a rolling upgrade's pins, as Nova's upgrade_levels)."""
        ours = newest_versions()
        pins = dict(pins or {})
        for name, version in pins.items():
            if name not in ours:
                raise ObjectError(f"no versioned object {name!r} to pin", field=name)
            if parse_version(version, field=name) > parse_version(ours[name]):
                raise ObjectError(f"{name} pinned to {version}, newer than this version knows ({ours[name]})", field=name)

        def capped(name: str, version: str) -> str:
            return pins[name] if name in pins and parse_version(pins[name]) < parse_version(version) else version

        plugins = []
        for plugin in self._loaded().values():
            info = plugin.describe()
            for vif in info.vif_info:
                vif.max_version = capped(vif.vif_object_name, vif.max_version)
                for profile in vif.supported_port_profiles:
                    profile.max_version = capped(profile.profile_object_name, profile.max_version)
            plugins.append(info)
        return HostInfo(plugin_info=plugins, object_versions={k: capped(k, v) for k, v in ours.items()})

    def plugin_for(self, vif: VIFBase) -> VifPlugin:
        plugin = self._loaded().get(vif.plugin)
        if plugin is None or not plugin.supports(vif):
            raise NoMatchingPlugin(f"no loaded VIF plugin {vif.plugin!r} plugs a {type(vif).__name__} "
                                   f"(loaded: {', '.join(self._loaded()) or 'none'})")
        return plugin

    def plug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        plugin = self.plugin_for(vif)
        try:
            plugin.plug(vif, instance)
        except CodedError:
            raise
        except Exception as exc:  # a plugin's bug or an unmapped library error: that VM fails, not the host
            raise PlugException(f"VIF plugin {plugin.name} failed to plug {type(vif).__name__} {vif.id}: {exc!r}") from exc

    def unplug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        plugin = self.plugin_for(vif)
        try:
            plugin.unplug(vif, instance)
        except CodedError:
            raise
        except Exception as exc:
            raise UnplugException(f"VIF plugin {plugin.name} failed to unplug {type(vif).__name__} {vif.id}: {exc!r}") from exc

    def close(self) -> None:
        for plugin in (self._plugins or {}).values():
            plugin.close()
        self._plugins = None
