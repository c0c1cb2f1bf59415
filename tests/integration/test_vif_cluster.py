"""VIF plugging through the whole system (issue 13), on a --netns local cluster whose hosts each
run their own Open vSwitch (``vif="ovs"``; libvirt's test driver, so no guest runs): a joining
host reports its HostInfo, its group manager chooses the plugin and sends each VM's VIF with the
start order, the local controller plugs it (tap and OVS port with os-vif's external_ids) before
libvirt defines the domain and unplugs it after a destroy; with the OVSDB down a VM fails with
VIF_PLUG_FAILED and leaves nothing behind; a host whose VIF objects are newer than its group
manager's is refused at its join, with a message naming the versions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from groupmanager.manager.vifs import tap_name
from snooze.codes import ErrorCode
from snooze.dev import netns
from snooze.dev.localcluster import LocalCluster
from snooze.models import NetworkAddress
from snooze.protocol.messages import LocalControllerJoin
from snooze.rpc import RpcClient, RpcError
from snooze.vif.objects import HostInfo, HostPluginInfo, HostVIFInfo
from snooze.vif.versioned import newest_versions, to_wire
from tests.support import get, http, response

pytestmark = pytest.mark.integration


def submit(c: LocalCluster, names: list[str]) -> dict[str, dict[str, Any]]:
    status, task = http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster", json.dumps(
        {"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": n, "imageId": "debian.qcow2"} for n in names]}))
    assert status == 200, task
    return {m["virtualMachineId"]: m for m in response(c, str(task))["virtualMachineMetaData"]}


def spec(c: LocalCluster, process_id: str) -> dict[str, Any]:
    return next(p for p in c.processes if p["id"] == process_id)


def vsctl(c: LocalCluster, lc_id: str, *args: str) -> str:
    return c.switches[lc_id].vsctl(*args).strip()


def taps(c: LocalCluster, lc_id: str) -> set[str]:
    links = json.loads(netns.ip("-j", "link", "show", netns=spec(c, lc_id)["netns"]))
    return {link["ifname"] for link in links if link["ifname"].startswith("tap")}


def ovs_ports(c: LocalCluster, lc_id: str) -> set[str]:
    return set(vsctl(c, lc_id, "list-ports", "br-vm").split())


def host_of(meta: dict[str, Any]) -> str:
    return str(meta["virtualMachineLocation"]["localControllerId"])


def test_vms_are_plugged_into_their_hosts_open_vswitch_and_a_newer_host_is_refused(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2, vif="ovs")
    manifest = json.loads(c.manifest_path.read_text())
    lcs = [p for p in manifest["processes"] if p["role"] == "localcontroller"]
    assert all(p["ovsdb"].startswith("unix:/tmp/") and p["netns"] for p in lcs), "cluster.json names each host's OVSDB"

    metas = submit(c, ["web-1", "web-2"])
    assert {m["status"] for m in metas.values()} == {"RUNNING"}, metas
    for name, meta in metas.items():
        lc = host_of(meta)
        tap = tap_name(name)  # the same name on every host, so that a migrated domain finds it
        assert tap in ovs_ports(c, lc)
        ids = {k: vsctl(c, lc, "get", "Interface", tap, f"external_ids:{k}").strip('"')
               for k in ("iface-id", "iface-status", "attached-mac", "vm-uuid")}
        assert ids["iface-status"] == "active" and len(ids["iface-id"]) == 36 and len(ids["vm-uuid"]) == 36, ids
        link = json.loads(netns.ip("-j", "link", "show", tap, netns=spec(c, lc)["netns"]))[0]
        assert link["address"] == "fe" + ids["attached-mac"][2:], "the tap was made for this VM's MAC"
        assert vsctl(c, lc, "get", "Bridge", "br-vm", "datapath_type") == "netdev"
    assert sum(len(taps(c, lc["id"])) for lc in lcs) == 2

    # Destroyed: its port and tap go, the bridge and the other VM's stay.
    gone, kept = metas["web-1"], metas["web-2"]
    before_kept = ovs_ports(c, host_of(kept))
    status, body = http("POST", c.bootstrap_url + "/bootstrap?destroyVirtualMachine", '"web-1"')
    assert status == 200, body
    lc_gone = host_of(gone)
    left = ovs_ports(c, lc_gone) - (before_kept if host_of(kept) == lc_gone else set())
    assert not left and not (taps(c, lc_gone) - (before_kept if host_of(kept) == lc_gone else set()))
    assert ovs_ports(c, host_of(kept)) == before_kept and vsctl(c, lc_gone, "list-br") == "br-vm"

    # The OVSDB of every host down: the VM fails, cleanly, with the plug's code.
    for lc in lcs:
        c.kill_ovsdb(lc["id"])
    taps_before = {lc["id"]: taps(c, lc["id"]) for lc in lcs}
    failed = submit(c, ["web-3"])["web-3"]
    assert failed["status"] == "ERROR" and failed["errorCode"] == ErrorCode.VIF_PLUG_FAILED, failed
    assert {lc["id"]: taps(c, lc["id"]) for lc in lcs} == taps_before, "a failed plug leaves no tap"
    # Back: the local controllers connect again, the next VM is plugged.
    for lc in lcs:
        c.start_ovsdb(lc["id"])
    again = submit(c, ["web-4"])["web-4"]
    assert again["status"] == "RUNNING", again
    assert tap_name("web-4") in ovs_ports(c, host_of(again))

    refuse_a_newer_host(c)


def refuse_a_newer_host(c: LocalCluster) -> None:
    """A joining local controller is a peer here: its join is sent from the fabric's namespace
    to the real group manager, claiming VIF objects newer than the group manager's."""
    hierarchy = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    [gm] = hierarchy["groupManagerDescriptions"]
    lc = gm["localControllers"][0]
    address = NetworkAddress(gm["listenSettings"]["controlDataAddress"]["address"],
                             gm["listenSettings"]["controlDataAddress"]["port"])
    fabric = json.loads(c.manifest_path.read_text())["fabric"]["netns"]
    assert netns.route_device(fabric, address.address) == "br0", "only ever sent inside the cluster's namespaces"
    newer = HostInfo(plugin_info=[HostPluginInfo(plugin_name="ovs", vif_info=[
        HostVIFInfo(vif_object_name="VIFOpenVSwitch", min_version="1.0", max_version="1.1")])],
        object_versions={**newest_versions(), "VIFOpenVSwitch": "1.1"})
    join = LocalControllerJoin({**lc, "id": "lc-future"}, [], host_info=to_wire(newer))
    epoch = get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")["epoch"]

    async def call() -> Any:
        client = RpcClient(c.options.key.encode(), "lc-future")
        try:
            return await client.call(address, LocalControllerJoin.KIND, join.to_wire(), epoch=epoch, timeout=10)
        finally:
            await client.close()

    with pytest.raises(RpcError) as e:
        netns.call_in(fabric, lambda: asyncio.run(call()))
    assert e.value.code == ErrorCode.VIF_VERSION_TOO_NEW, e.value
    assert "VIFOpenVSwitch 1.1 (this group manager has 1.0)" in str(e.value)
    assert "Upgrade the group managers before the local controllers" in str(e.value)
    assert "lc-future" not in {x["id"] for x in get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
                               ["groupManagerDescriptions"][0]["localControllers"]}
