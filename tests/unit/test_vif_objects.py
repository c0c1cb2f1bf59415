"""The versioned VIF objects (snooze.vif): the wire form, back-levelling for an older receiver,
refusal of what this side cannot read (each error naming its field), the fingerprints that
catch a field changed without a version bump, and the group manager's choice of plugin and
versions for a host."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snooze.codes import ErrorCode
from snooze.vif import objects as o
from snooze.vif.errors import NoMatchingPlugin, ObjectError, VersionTooNew
from snooze.vif.negotiate import check_host, choose
from snooze.vif.versioned import (
    VersionedObject,
    fingerprints,
    from_wire,
    newest_versions,
    register,
    since,
    to_wire,
)

# Every class's version and the hash of its fields. A change to a class's fields must come with
# a new VERSION (a minor one for an added field with a default, with ``since``), and then this
# list is updated: the failure below says which class changed.
EXPECTED = {
    "HostInfo": "1.0-862bd65fd7f3ae86",
    "HostPluginInfo": "1.0-68bdbcfde0ae10c9",
    "HostPortProfileInfo": "1.0-93faf07db23d33f8",
    "HostVIFInfo": "1.1-de4136fbcb3c3852",
    "InstanceInfo": "1.0-657f33099017d761",
    "Network": "1.1-efb0d84bcc3f8c0b",
    "Subnet": "1.0-cf4e3474c5ce7612",
    "VIFBase": "1.0-97f1decd6ab790a9",
    "VIFBridge": "1.0-1938fc4063c2d76f",
    "VIFGeneric": "1.0-0c4118256fa9bb92",
    "VIFOpenVSwitch": "1.0-1938fc4063c2d76f",
    "VIFPortProfileBase": "1.0-e3b0c44298fc1c14",
    "VIFPortProfileOpenVSwitch": "1.2-e0da96d8da4b065c",
}

ID, IFACE, VM = (str(uuid.UUID(int=n)) for n in (1, 2, 3))


def ovs_vif(**kw: Any) -> o.VIFOpenVSwitch:
    net = o.Network(id="default", bridge="br-vm", mtu=1400, subnets=[
        o.Subnet(cidr="192.168.122.0/24", gateway="192.168.122.1", dns=["192.168.122.1"], ips=["192.168.122.5"])])
    profile = o.VIFPortProfileOpenVSwitch(interface_id=IFACE, datapath_type="netdev", create_port=True)
    args: dict[str, Any] = {"id": ID, "address": "52:54:00:00:00:05", "network": net, "plugin": "ovs",
                            "vif_name": "tap-vm1", "bridge_name": "br-vm", "port_profile": profile}
    args.update(kw)
    return o.VIFOpenVSwitch(**args)


def test_fingerprints_change_only_with_the_version() -> None:
    got = fingerprints()
    changed = {name: (EXPECTED.get(name), got.get(name)) for name in set(got) | set(EXPECTED)
               if got.get(name) != EXPECTED.get(name)}
    assert not changed, ("versioned objects changed (expected, now): bump VERSION where fields changed, "
                         f"then update EXPECTED: {changed}")


def test_a_field_change_without_a_bump_changes_the_fingerprint() -> None:
    # What the test above guards against, shown on a class made for the purpose.
    @dataclasses.dataclass(kw_only=True)
    class Probe(VersionedObject):
        VERSION = "1.0"
        a: str = ""

    @dataclasses.dataclass(kw_only=True)
    class Probe2(VersionedObject):
        VERSION = "1.0"
        a: str = ""
        b: int = 0

    from snooze.vif.versioned import fingerprint
    assert fingerprint(Probe).split("-")[1] != fingerprint(Probe2).split("-")[1]


def test_the_wire_form_round_trips_nested_and_polymorphic_objects() -> None:
    vif = ovs_vif()
    wire = to_wire(vif)
    assert set(wire) == {"name", "namespace", "version", "data"}
    assert (wire["name"], wire["namespace"], wire["version"]) == ("VIFOpenVSwitch", "snooze.vif", "1.0")
    assert wire["data"]["port_profile"]["name"] == "VIFPortProfileOpenVSwitch"
    assert wire["data"]["network"]["data"]["subnets"][0]["data"]["cidr"] == "192.168.122.0/24"
    assert from_wire(wire, o.VIFBase) == vif


def test_back_levelling_leaves_out_what_the_receiver_does_not_know() -> None:
    wire = to_wire(ovs_vif(), {"VIFPortProfileOpenVSwitch": "1.0", "Network": "1.0"})
    profile = wire["data"]["port_profile"]
    assert profile["version"] == "1.0" and set(profile["data"]) == {"interface_id", "profile_id"}
    assert wire["data"]["network"]["version"] == "1.0" and "mtu" not in wire["data"]["network"]["data"]
    back = from_wire(wire, o.VIFOpenVSwitch)  # an older receiver reads it, with its defaults
    assert back.port_profile == o.VIFPortProfileOpenVSwitch(interface_id=IFACE)
    assert back.network is not None and back.network.mtu is None
    # A receiver newer than us gets our own version.
    assert to_wire(ovs_vif(), {"VIFPortProfileOpenVSwitch": "1.9"})["data"]["port_profile"]["version"] == "1.2"


def test_a_newer_minor_version_is_refused_naming_our_maximum() -> None:
    wire = to_wire(ovs_vif())
    wire["data"]["port_profile"]["version"] = "1.3"
    with pytest.raises(VersionTooNew) as e:
        from_wire(wire)
    assert e.value.code == ErrorCode.VIF_VERSION_TOO_NEW
    assert "VIFPortProfileOpenVSwitch 1.3 is newer than this side knows (maximum 1.2)" in str(e.value)
    assert e.value.field == "object.data.port_profile.version"
    wire["data"]["port_profile"]["version"] = "2.0"
    with pytest.raises(VersionTooNew, match="major version 1"):
        from_wire(wire)


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (lambda w: w.update(namespace="os_vif"), "object.namespace", "namespace must be"),
    (lambda w: w.update(name="VIFVHostUser"), "object.name", "no object named"),
    (lambda w: w.update(extra=1), "object", "unknown keys"),
    (lambda w: w.update(version="one"), "object.version", "MAJOR.MINOR"),
    (lambda w: w["data"].update(colour="red"), "object.data.colour", "has no field colour"),
    (lambda w: w["data"].pop("vif_name"), "object.data.vif_name", "missing"),
    (lambda w: w["data"].update(address="52:54:00:00:00"), "address", "MAC address"),
    (lambda w: w["data"].update(address="01:00:5e:00:00:01"), "address", "unicast"),
    (lambda w: w["data"].update(id="not-a-uuid"), "id", "UUID"),
    (lambda w: w["data"].update(vif_name="../../etc"), "vif_name", "device name"),
    (lambda w: w["data"].update(vif_name="a-name-longer-than-15"), "vif_name", "device name"),
    (lambda w: w["data"].update(active="yes"), "active", "must be bool"),
    (lambda w: w["data"].update(network=[]), "object.data.network", "must be an object"),
    (lambda w: w["data"]["network"]["data"].update(vlan=4095), "vlan", "VLAN tag"),
    (lambda w: w["data"]["network"]["data"]["subnets"][0]["data"].update(cidr="10.0.0.1/8"), "cidr", "no host bits"),
    (lambda w: w["data"]["port_profile"]["data"].update(datapath_type="dpdk"), "datapath_type", "one of system, netdev"),
])
def test_what_does_not_read_is_refused_naming_the_field(mutate: Any, field: str, message: str) -> None:
    wire = to_wire(ovs_vif())
    mutate(wire)
    with pytest.raises(ObjectError) as e:
        from_wire(wire)
    assert e.value.code == ErrorCode.INVALID_VIF_OBJECT
    assert e.value.field == field and message in str(e.value)


def test_a_field_newer_than_the_version_sent_is_refused() -> None:
    wire = to_wire(ovs_vif(), {"VIFPortProfileOpenVSwitch": "1.0"})
    wire["data"]["port_profile"]["data"]["create_port"] = True  # 1.2's, in a 1.0 object
    with pytest.raises(ObjectError, match="VIFPortProfileOpenVSwitch 1.0 has no field create_port"):
        from_wire(wire)


def test_expecting_a_class_refuses_another() -> None:
    with pytest.raises(ObjectError, match="must be a VIFBase, not a Network"):
        from_wire(to_wire(o.Network(id="n")), o.VIFBase)


def test_a_class_adding_a_field_without_a_default_is_refused_at_registration() -> None:
    @dataclasses.dataclass(kw_only=True)
    class Bad(VersionedObject):
        VERSION = "1.1"
        later: str = dataclasses.field(metadata=since("1.1"))

    with pytest.raises(TypeError, match="needs a default"):
        register(Bad)


@given(mtu=st.one_of(st.none(), st.integers(68, 65535)), vlan=st.one_of(st.none(), st.integers(1, 4094)),
       create=st.booleans(), target=st.sampled_from(["1.0", "1.1", "1.2"]))
def test_any_back_level_reads_back(mtu: int | None, vlan: int | None, create: bool, target: str) -> None:
    vif = ovs_vif(network=o.Network(id="n", mtu=mtu, vlan=vlan),
                  port_profile=o.VIFPortProfileOpenVSwitch(interface_id=IFACE, create_port=create))
    back = from_wire(to_wire(vif, {"VIFPortProfileOpenVSwitch": target}), o.VIFOpenVSwitch)
    assert isinstance(back.port_profile, o.VIFPortProfileOpenVSwitch)
    assert back.port_profile.create_port == (create if target == "1.2" else False)
    assert back.network == vif.network


# -- negotiation ---------------------------------------------------------------------------
def host(ovs_max: str = "1.0", profile_max: str = "1.2", versions: dict[str, str] | None = None) -> o.HostInfo:
    profiles = [o.HostPortProfileInfo(profile_object_name="VIFPortProfileOpenVSwitch", min_version="1.0", max_version=profile_max)]
    return o.HostInfo(plugin_info=[
        o.HostPluginInfo(plugin_name="ovs", vif_info=[o.HostVIFInfo(vif_object_name="VIFOpenVSwitch", min_version="1.0",
                                                                     max_version=ovs_max, supported_port_profiles=profiles)]),
        o.HostPluginInfo(plugin_name="linux_bridge", vif_info=[o.HostVIFInfo(vif_object_name="VIFBridge", min_version="1.0",
                                                                              max_version="1.0")]),
    ], object_versions=versions if versions is not None else newest_versions())


def test_a_host_as_new_or_older_joins() -> None:
    check_host("lc-1", host())
    check_host("lc-1", host(profile_max="1.0", versions={"Network": "1.0", "VIFPortProfileOpenVSwitch": "1.0"}))


def test_a_host_newer_than_its_group_manager_is_refused_naming_the_versions() -> None:
    with pytest.raises(VersionTooNew) as e:
        check_host("lc-2", host(versions={**newest_versions(), "VIFPortProfileOpenVSwitch": "1.3"}))
    assert "lc-2's VIF objects are newer than this group manager's: VIFPortProfileOpenVSwitch 1.3 " \
           "(this group manager has 1.2)" in str(e.value)
    assert "Upgrade the group managers before the local controllers" in str(e.value)
    with pytest.raises(VersionTooNew, match="VIFOpenVSwitch 1.1"):
        check_host("lc-2", host(ovs_max="1.1"))


def test_choice_follows_preferences_and_back_levels_to_the_host() -> None:
    old = host(versions={**newest_versions(), "VIFPortProfileOpenVSwitch": "1.0", "Network": "1.0"})
    c = choose("lc-1", old, ["ovs", "linux_bridge"])
    assert (c.plugin, c.vif_object_name, c.version) == ("ovs", "VIFOpenVSwitch", "1.0")
    assert c.manifest["VIFPortProfileOpenVSwitch"] == "1.0" and c.manifest["Network"] == "1.0"
    wire = to_wire(ovs_vif(), c.manifest)
    assert "create_port" not in wire["data"]["port_profile"]["data"]
    assert choose("lc-1", old, ["sriov", "linux_bridge"]).plugin == "linux_bridge"
    with pytest.raises(NoMatchingPlugin) as e:
        choose("lc-1", old, ["sriov"])
    assert e.value.code == ErrorCode.NO_MATCHING_VIF_PLUGIN and e.value.code.retryable
    assert "lc-1 has no VIF plugin of sriov" in str(e.value) and "ovs, linux_bridge" in str(e.value)
