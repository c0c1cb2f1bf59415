"""The VIF plugins on real devices, each in a network namespace of the test's own: linux_bridge
(pyroute2: bridge, VLAN sub-interface of the uplink, MTU, the guest's tap) and ovs (ovsdbapp
against a private ovsdb-server and ovs-vswitchd with the userspace datapath). Plug makes what
the VIF says, a second plug changes nothing, unplug removes the tap (and the OVS port) and keeps
the bridge, and a plug that fails (a device in the way, the OVSDB down) leaves nothing behind."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcontroller.vif.library import VifLibrary
from snooze.codes import ErrorCode
from snooze.dev import netns
from snooze.dev import ovs as devovs
from snooze.vif import objects as o
from snooze.vif.errors import LibraryNotInitialized, NoMatchingPlugin, ObjectError, PlugException
from tests.netlab import namespace_prefix

pytestmark = pytest.mark.integration

INSTANCE = o.InstanceInfo(uuid=str(uuid.UUID(int=7)), name="vm-7")


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"{namespace_prefix('n4vif')}-host"
    netns.ip("netns", "add", name)
    try:
        netns.ip("link", "set", "lo", "up", netns=name)
        yield name
    finally:
        netns.delete_namespaces([name])


def links(ns: str) -> dict[str, dict[str, Any]]:
    """Every device of ``ns`` by name, as ``ip -j -d link`` shows it."""
    return {link["ifname"]: link for link in json.loads(netns.ip("-j", "-d", "link", "show", netns=ns))}


def in_ns(ns: str, lib: VifLibrary, verb: str, vif: o.VIFBase) -> None:
    netns.call_in(ns, getattr(lib, verb), vif, INSTANCE)


def bridge_vif(**kw: Any) -> o.VIFBridge:
    args: dict[str, Any] = {"id": str(uuid.UUID(int=1)), "address": "52:54:00:aa:00:01", "plugin": "linux_bridge",
                            "vif_name": "tap-vm7", "bridge_name": "br-vm", "network": o.Network(id="n", mtu=1400)}
    args.update(kw)
    return o.VIFBridge(**args)


def test_the_library_loads_plugins_by_entry_point_and_refuses_what_it_cannot_plug() -> None:
    lib = VifLibrary()
    with pytest.raises(LibraryNotInitialized):
        lib.plug(bridge_vif(), INSTANCE)
    with pytest.raises(NoMatchingPlugin, match="installed: linux_bridge, noop, ovs"):
        lib.initialize(["sriov"])
    lib.initialize(["linux_bridge", "noop"])
    info = lib.host_info()
    assert [p.plugin_name for p in info.plugin_info] == ["linux_bridge", "noop"]
    assert info.plugin("linux_bridge").vif_info[0].vif_object_name == "VIFBridge"  # type: ignore[union-attr]
    assert info.object_versions["VIFPortProfileOpenVSwitch"] == "1.2"
    with pytest.raises(NoMatchingPlugin, match="no loaded VIF plugin 'ovs'"):
        lib.plug(bridge_vif(plugin="ovs"), INSTANCE)


def test_linux_bridge_plugs_idempotently_and_unplugs_keeping_the_bridge(ns: str) -> None:
    lib = VifLibrary()
    lib.initialize(["linux_bridge"])
    # An uplink (one end of a veth pair): the bridge reaches the other hosts through it.
    netns.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1", netns=ns)
    vif = bridge_vif(network=o.Network(id="n", mtu=1400, bridge_interface="uplink0"))
    in_ns(ns, lib, "plug", vif)
    first = links(ns)
    br, tap, uplink = first["br-vm"], first["tap-vm7"], first["uplink0"]
    assert br["linkinfo"]["info_kind"] == "bridge" and br["mtu"] == 1400 and "UP" in br["flags"]
    assert tap["linkinfo"]["info_kind"] == "tun" and tap["master"] == "br-vm" and tap["mtu"] == 1400
    assert tap["address"] == "fe:54:00:aa:00:01", "the tap's MAC is the guest's with fe (the bridge never takes the guest's)"
    assert uplink["master"] == "br-vm"

    in_ns(ns, lib, "plug", vif)  # again: nothing changes
    again = links(ns)
    assert {k: v["ifindex"] for k, v in again.items()} == {k: v["ifindex"] for k, v in first.items()}

    in_ns(ns, lib, "unplug", vif)
    after = links(ns)
    assert "tap-vm7" not in after and "br-vm" in after and after["uplink0"]["master"] == "br-vm"
    in_ns(ns, lib, "unplug", vif)  # unplugging what is gone is no error


def kernel_has_vlans(ns: str) -> bool:
    netns.ip("link", "add", "probe0", "type", "veth", "peer", "name", "probe1", netns=ns)
    try:
        netns.ip("link", "add", "link", "probe0", "name", "probe0.5", "type", "vlan", "id", "5", netns=ns)
    except netns.NetnsError:
        return False
    finally:
        netns.ip("link", "del", "probe0", netns=ns, check=False)
    return True


def test_linux_bridge_vlan_sub_interface_or_a_clean_refusal(ns: str) -> None:
    """The VLAN sub-interface ``vlanTAG`` of the uplink, on the bridge. This machine's kernel
    has no 802.1Q support (``ip link add … type vlan`` fails): there the plug must fail
    cleanly, with the kernel's reason and nothing left behind."""
    lib = VifLibrary()
    lib.initialize(["linux_bridge"])
    netns.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1", netns=ns)
    vif = bridge_vif(network=o.Network(id="n", vlan=42, should_provide_vlan=True, bridge_interface="uplink0"))
    if kernel_has_vlans(ns):
        in_ns(ns, lib, "plug", vif)
        vlan = links(ns)["vlan42"]
        assert vlan["linkinfo"]["info_data"]["id"] == 42 and vlan["master"] == "br-vm" and vlan["link"] == "uplink0"
    else:
        with pytest.raises(PlugException, match="make VLAN 42 on uplink0: ENOTSUP"):
            in_ns(ns, lib, "plug", vif)
        assert set(links(ns)) == {"lo", "uplink0", "uplink1"}, "the bridge made on the way is removed"


def test_linux_bridge_plug_failure_leaves_nothing_behind(ns: str) -> None:
    lib = VifLibrary()
    lib.initialize(["linux_bridge"])
    # The uplink named by the network does not exist: the bridge made on the way is removed.
    vif = bridge_vif(network=o.Network(id="n", bridge_interface="eth9"))
    with pytest.raises(PlugException) as e:
        in_ns(ns, lib, "plug", vif)
    assert e.value.code == ErrorCode.VIF_PLUG_FAILED and "eth9" in str(e.value)
    assert set(links(ns)) == {"lo"}
    # A device of another kind is in the way of the tap: refused, the bridge made is removed.
    netns.ip("link", "add", "tap-vm7", "type", "veth", "peer", "name", "other0", netns=ns)
    with pytest.raises(PlugException, match="not a tap"):
        in_ns(ns, lib, "plug", bridge_vif())
    left = links(ns)
    assert set(left) == {"lo", "tap-vm7", "other0"} and left["tap-vm7"]["linkinfo"]["info_kind"] == "veth"


@pytest.fixture
def switch(ns: str) -> Iterator[devovs.OvsSwitch]:
    missing = devovs.available()
    assert missing is None, missing  # ./scripts/setup installs openvswitch-switch
    with tempfile.TemporaryDirectory(prefix="snzovs-", dir="/tmp") as d:
        sw = devovs.OvsSwitch(Path(d), netns=ns)
        try:
            sw.start()
            yield sw
        finally:
            sw.stop()


def ovs_vif(name: str = "tap-vm7") -> o.VIFOpenVSwitch:
    return o.VIFOpenVSwitch(id=str(uuid.UUID(int=1)), address="52:54:00:aa:00:01", plugin="ovs", vif_name=name,
                            bridge_name="br-int", network=o.Network(id="n", mtu=1450),
                            port_profile=o.VIFPortProfileOpenVSwitch(interface_id=str(uuid.UUID(int=9)), datapath_type="netdev"))


def ovs_ports(sw: devovs.OvsSwitch, bridge: str = "br-int") -> list[str]:
    return sw.vsctl("list-ports", bridge).split()


def test_ovs_plugs_a_port_with_os_vifs_external_ids_idempotently(ns: str, switch: devovs.OvsSwitch) -> None:
    lib = VifLibrary()
    lib.initialize(["ovs"], {"ovs": {"ovsdb": switch.remote, "datapath_type": "netdev"}})
    try:
        vif = ovs_vif()
        in_ns(ns, lib, "plug", vif)
        in_ns(ns, lib, "plug", vif)  # again: one bridge, one port
        assert switch.vsctl("list-br").split() == ["br-int"]
        assert switch.vsctl("get", "Bridge", "br-int", "datapath_type").strip() == "netdev"
        assert ovs_ports(switch) == ["tap-vm7"]
        for key, value in {"iface-id": str(uuid.UUID(int=9)), "iface-status": "active",
                           "attached-mac": "52:54:00:aa:00:01", "vm-uuid": INSTANCE.uuid}.items():
            assert switch.vsctl("get", "Interface", "tap-vm7", f"external_ids:{key}").strip().strip('"') == value, key
        assert switch.vsctl("get", "Interface", "tap-vm7", "mtu_request").strip() == "1450"
        tap = links(ns)["tap-vm7"]
        assert tap["linkinfo"]["info_kind"] == "tun" and "UP" in tap["flags"]
        assert switch.vsctl("get", "Interface", "tap-vm7", "error").strip() in ("[]", '""'), "ovs-vswitchd opened the tap"

        in_ns(ns, lib, "unplug", vif)
        assert ovs_ports(switch) == [] and switch.vsctl("list-br").split() == ["br-int"]
        assert "tap-vm7" not in links(ns)
        # A VLAN network: an access port of its tag (tagged in userspace).
        tagged = ovs_vif()
        assert tagged.network is not None
        tagged.network.vlan = 42
        in_ns(ns, lib, "plug", tagged)
        assert switch.vsctl("get", "Port", "tap-vm7", "tag").strip() == "42"
        in_ns(ns, lib, "unplug", tagged)
        assert "tap-vm7" not in links(ns)
        in_ns(ns, lib, "unplug", vif)
    finally:
        lib.close()


def test_ovs_plug_with_the_ovsdb_down_fails_cleanly_and_works_once_it_is_back(ns: str, switch: devovs.OvsSwitch) -> None:
    lib = VifLibrary()
    lib.initialize(["ovs"], {"ovs": {"ovsdb": switch.remote, "datapath_type": "netdev", "timeout": 3}})
    try:
        in_ns(ns, lib, "plug", ovs_vif("tap-a"))
        switch.kill_ovsdb()
        with pytest.raises(PlugException) as e:
            in_ns(ns, lib, "plug", ovs_vif("tap-b"))
        assert e.value.code == ErrorCode.VIF_PLUG_FAILED and e.value.code.retryable
        assert "tap-b" not in links(ns), "the tap made for the failed plug is removed"
        switch.start_ovsdb()
        in_ns(ns, lib, "plug", ovs_vif("tap-b"))  # a new connection to the restarted server
        assert ovs_ports(switch) == ["tap-a", "tap-b"]
    finally:
        lib.close()


def test_pins_make_a_host_claim_older_versions_as_during_a_rolling_upgrade() -> None:
    lib = VifLibrary()
    lib.initialize(["ovs"], {"ovs": {"ovsdb": "unix:/nonexistent/db.sock"}})  # connects only when plugging
    try:
        info = lib.host_info({"VIFPortProfileOpenVSwitch": "1.0", "Network": "1.0"})
        [vif_info] = info.plugin("ovs").vif_info  # type: ignore[union-attr]
        assert [p.max_version for p in vif_info.supported_port_profiles] == ["1.0"]
        assert info.object_versions["VIFPortProfileOpenVSwitch"] == "1.0" and info.object_versions["Network"] == "1.0"
        assert info.object_versions["VIFOpenVSwitch"] == "1.0" and info.object_versions["HostVIFInfo"] == "1.1"
        with pytest.raises(ObjectError, match="pinned to 1.3, newer than this version knows"):
            lib.host_info({"VIFPortProfileOpenVSwitch": "1.3"})
        with pytest.raises(ObjectError, match="no versioned object 'VIFVHostUser'"):
            lib.host_info({"VIFVHostUser": "1.0"})
    finally:
        lib.close()
