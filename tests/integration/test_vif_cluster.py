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
import subprocess
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
from tests.support import get, http, response, wait_for

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


def nuage(c: LocalCluster, lc_id: str, table: str) -> list[dict[str, Any]]:
    """Every row of a Nuage table of the host's OVSDB, read with ovsdb-client (the server's own
    schema: the Open vSwitch tools know nothing of these tables)."""
    db = spec(c, lc_id)["ovsdb"]
    out = subprocess.run(["ovsdb-client", "-f", "json", "dump", db, "Open_vSwitch", table],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    dump = json.loads(out)
    rows = [dict(zip(dump["headings"], row, strict=True)) for row in dump["data"]]

    def plain(v: Any) -> Any:
        if isinstance(v, list) and v and v[0] == "set":
            return sorted(plain(x) for x in v[1])
        if isinstance(v, list) and v and v[0] == "map":
            return {k: x for k, x in v[1]}
        return v
    return [{k: plain(v) for k, v in r.items()} for r in rows]


def transact(c: LocalCluster, lc_id: str, *ops: dict[str, Any]) -> None:
    subprocess.run(["ovsdb-client", "transact", spec(c, lc_id)["ovsdb"], json.dumps(["Open_vSwitch", *ops])],
                   capture_output=True, text=True, check=True, timeout=10)


def vm_rows(c: LocalCluster, lc_id: str) -> dict[str, dict[str, Any]]:
    return {r["vm_name"]: r for r in nuage(c, lc_id, "Nuage_VM_Table")}


def port_rows(c: LocalCluster, lc_id: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in nuage(c, lc_id, "Nuage_Port_Table")}


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
        # Nuage VRS's rows: the port, then the entity, Started/Booted, Running/Booted.
        entity = wait_for(lambda lc=lc, name=name: vm_rows(c, lc).get(name), 15, f"{name}'s Nuage_VM_Table row")
        assert (entity["event"], entity["event_type"], entity["state"], entity["reason"]) == (2, 0, 1, 1), entity
        assert entity["vm_uuid"] == ids["vm-uuid"] and entity["ports"] == tap and entity["type"] == 0, entity
        port = port_rows(c, lc)[tap]
        assert (port["mac"], port["bridge"], port["ip_addr"], port["subnet_mask"], port["gateway"]) == (
            ids["attached-mac"], "br-vm", meta["ipAddress"], "255.255.255.0", "192.168.122.1"), port
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
    wait_for(lambda: "web-1" not in vm_rows(c, lc_gone) and tap_name("web-1") not in port_rows(c, lc_gone), 15,
             "web-1's Nuage rows removed after its destroy")
    assert "web-2" in vm_rows(c, host_of(kept))

    # The audit: a row removed behind Snooze's back comes back, a stale one goes.
    lc_kept = host_of(kept)
    transact(c, lc_kept, {"op": "delete", "table": "Nuage_VM_Table", "where": [["vm_name", "==", "web-2"]]},
             {"op": "insert", "table": "Nuage_VM_Table", "row": {"vm_uuid": "00000000-0000-0000-0000-00000000dead",
                                                                  "vm_name": "ghost", "ports": "tapghost"}},
             {"op": "insert", "table": "Nuage_Port_Table", "row": {"name": "tapghost", "mac": "52:54:00:de:ad:00"}})
    wait_for(lambda: set(vm_rows(c, lc_kept)) == {"web-2"} and set(port_rows(c, lc_kept)) == {tap_name("web-2")}, 15,
             "the audit restoring web-2's row and removing the ghost's")

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
    # The rows survived in the database file; after the restart the audit keeps them right.
    wait_for(lambda: "web-2" in vm_rows(c, lc_kept), 15, "web-2's row after the OVSDB restart")
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
