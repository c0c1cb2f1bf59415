"""The group manager's side of os-vif's version rule: check a joining host's ``HostInfo``, and
choose, for a VM's interface on that host, the plugin, the VIF class and the versions to send.

os-vif's rule is that the network side must be at least as new as the compute side ("upgrade
network hosts first"). Here the group manager builds the VIF objects and the local controller
plugs them, so a local controller whose objects are newer than its group manager's is refused
when it joins, with a message naming both versions; an older one gets every object
back-levelled to what it knows (``manifest``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from snooze.vif.errors import NoMatchingPlugin, VersionTooNew
from snooze.vif.objects import HostInfo
from snooze.vif.versioned import newest_versions, parse_version

__all__ = ["Choice", "check_host", "choose"]


@dataclass(frozen=True)
class Choice:
    """What a VM's interface on one host is plugged with."""

    plugin: str
    vif_object_name: str
    version: str
    #: Object name → the version to send it at (``snooze.vif.versioned.to_wire``).
    manifest: Mapping[str, str]


def _newer(host: HostInfo, ours: Mapping[str, str]) -> list[str]:
    """Each object the host knows in a newer version than ``ours``, as "NAME HOST (ours OURS)"."""
    found: dict[str, str] = {}
    claims = dict(host.object_versions)
    for plugin in host.plugin_info:
        for vif in plugin.vif_info:
            claims.setdefault(vif.vif_object_name, vif.max_version)
            for profile in vif.supported_port_profiles:
                claims.setdefault(profile.profile_object_name, profile.max_version)
            if vif.vif_object_name in ours and parse_version(vif.max_version) > parse_version(claims[vif.vif_object_name]):
                claims[vif.vif_object_name] = vif.max_version
    for name, theirs in sorted(claims.items()):
        mine = ours.get(name)
        if mine is not None and parse_version(theirs) > parse_version(mine):
            found[name] = f"{name} {theirs} (this group manager has {mine})"
    return list(found.values())


def check_host(host_id: str, host: HostInfo, ours: Mapping[str, str] | None = None) -> None:
    """VersionTooNew if the host's VIF objects are newer than this side's."""
    newer = _newer(host, ours if ours is not None else newest_versions())
    if newer:
        raise VersionTooNew(f"{host_id}'s VIF objects are newer than this group manager's: {'; '.join(newer)}. "
                            "Upgrade the group managers before the local controllers", field="hostInfo")


def choose(host_id: str, host: HostInfo, preferences: Sequence[str], ours: Mapping[str, str] | None = None) -> Choice:
    """The first plugin of ``preferences`` the host has, with the first VIF class of it (the
    host's order) that both sides know at a common version."""
    ours = ours if ours is not None else newest_versions()
    for name in preferences:
        plugin = host.plugin(name)
        if plugin is None:
            continue
        for vif in plugin.vif_info:
            mine = ours.get(vif.vif_object_name)
            if mine is None:
                continue
            low, high, own = (parse_version(vif.min_version), parse_version(vif.max_version), parse_version(mine))
            version = min(high, own)
            if version < low or version[0] != own[0]:
                continue
            manifest = {k: v for k, v in host.object_versions.items() if k in ours}
            manifest[vif.vif_object_name] = f"{version[0]}.{version[1]}"
            for profile in vif.supported_port_profiles:
                if profile.profile_object_name in ours:
                    manifest.setdefault(profile.profile_object_name, profile.max_version)
            return Choice(name, vif.vif_object_name, manifest[vif.vif_object_name], manifest)
    has = ", ".join(p.plugin_name for p in host.plugin_info) or "none"
    raise NoMatchingPlugin(f"{host_id} has no VIF plugin of {', '.join(preferences) or 'none'} "
                           f"at a version this group manager knows (it has: {has})")
