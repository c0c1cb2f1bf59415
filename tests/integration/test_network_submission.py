"""Submissions on the network model (issue 12, phase 2) on a real local cluster: templates that
name a flavor, a network and a firewall group; placement only on the hosts that serve the
subnet, with the reasons of the others' rejection recorded; one address space shared with the
API's reservations; the default network for a template that names nothing; unknown references
failing the VM with a coded reason naming the field."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from snooze.dev.localcluster import LocalCluster
from snooze.network.ipam import Ipam
from snooze.network.model import FirewallGroup, Flavor, Guest, Network, Subnet
from snooze.network.store import NetworkStore
from tests.support import get, http, run_virtual_cluster, wait_for

pytestmark = pytest.mark.integration

ROOT = "/snooze"
DEFAULT_CIDR = "192.168.122.0/24"  # [groupmanager] virtual_machine_subnet's default


@pytest.fixture
def zk(request: pytest.FixtureRequest) -> Iterator[Any]:
    clients: list[KazooClient] = []

    def connect(c: LocalCluster) -> KazooClient:
        assert c.zk is not None
        client = KazooClient(hosts=c.zk.address)
        client.start(timeout=15)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            client.stop()
            client.close()


def hierarchy(c: LocalCluster) -> dict[str, list[str]]:
    """group manager id -> its local controllers' ids (the leader has none)."""
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return {gm["id"]: sorted(lc["id"] for lc in gm["localControllers"]) for gm in h["groupManagerDescriptions"]}


def migrate(c: LocalCluster, name: str, target: str) -> tuple[int, Any]:
    return http("POST", c.bootstrap_url + "/bootstrap?migrateVirtualMachine",
                json.dumps({"virtualMachineId": name, "localControllerId": target}), timeout=60)


def by_name(resp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {vm["virtualMachineId"]: vm for vm in resp["virtualMachineMetaData"]}


def test_a_submission_on_a_network_lands_only_on_hosts_serving_it(cluster_factory: Any, zk: Any) -> None:
    c = cluster_factory(gms=3, lcs=4)
    client = zk(c)
    store = NetworkStore(client, ROOT)
    # The leader made the default network when it took office (virtual_machine_subnet).
    default = wait_for(lambda: store.find("subnets", "default"), 15, "the default subnet")
    assert isinstance(default, Subnet) and str(default.cidr) == DEFAULT_CIDR and default.network == "default"

    def spread() -> dict[str, list[str]]:
        h = hierarchy(c)
        return h if sorted(len(v) for v in h.values() if v) == [2, 2] else {}

    groups = wait_for(spread, 30, "2 group managers of 2 hosts each")
    serving_gm, other_gm = sorted(g for g, lcs in groups.items() if lcs)
    serving_lc, idle_lc = groups[serving_gm]
    store.create(Flavor("small", vcpus=1, memory=262144, image="debian.qcow2"))
    store.create(Network("blue"))
    store.create(Subnet.from_json({"id": "blue1", "network": "blue", "cidr": "10.50.0.0/29"}))  # .1-.6
    store.create(FirewallGroup.from_json({"id": "web", "rules": [{"protocol": "tcp", "portStart": 80, "portEnd": 80}]}))
    store.serve_subnet(serving_lc, "blue1", "br-blue")
    # An address reserved through the API (POST /subnets/blue1/addresses): the first one, which
    # the pool would otherwise hand out first.
    taken = Ipam(client, ROOT).reserve("blue1", "api-guest")
    assert str(taken) == "10.50.0.1"

    blue = {"flavor": "small", "network": "blue", "firewallGroup": "web"}
    resp = run_virtual_cluster(c, [
        {"name": "f1", **blue},
        {"name": "f2", **blue},
        {"name": "big", "vcpus": 2, "memory": 524288, **blue},  # explicit vcpus/memory override the flavor
        {"name": "huge", "vcpus": 8, **blue},  # serving host too small: rejected everywhere, with reasons
        {"name": "plain", "vcpus": 1, "memory": 262144, "imageId": "debian.qcow2"},  # no network: the default
        {"name": "no-flavor", "flavor": "nope"},
        {"name": "no-net", "vcpus": 1, "memory": 262144, "network": "nowhere"},
    ], timeout=60)
    vms = by_name(resp)

    for name in ("f1", "f2", "big"):
        vm = vms[name]
        assert vm["status"] == "RUNNING", vm
        assert vm["virtualMachineLocation"]["localControllerId"] == serving_lc, vm
        assert ipaddress.ip_address(vm["ipAddress"]) in ipaddress.ip_network("10.50.0.0/29")
        assert vm["ipAddress"] != str(taken), "an address reserved through the API went to a VM"
        guest = store.find("guests", name)
        assert isinstance(guest, Guest), name
        assert (guest.hypervisor, guest.subnet, guest.network, guest.fwgroup, guest.flavor) == \
            (serving_lc, "blue1", "blue", "web", "small")
        assert str(guest.ip) == vm["ipAddress"] and guest.mac == vm["macAddress"]
    assert vms["f1"]["requestedCapacity"][:2] == [1.0, 262144.0], "the flavor's vcpus and memory"
    assert vms["big"]["requestedCapacity"][:2] == [2.0, 524288.0], "explicit vcpus/memory override the flavor"
    assert len({vms[n]["ipAddress"] for n in ("f1", "f2", "big")}) == 3

    huge = vms["huge"]
    assert huge["status"] == "ERROR" and huge["errorCode"] == "NOT_ENOUGH_CAPACITY", huge
    # The other group manager, and the serving one's other host, were rejected for not serving
    # blue1: the plan says so (the serving host itself for capacity).
    assert huge["rejections"].get("subnet", 0) >= 1, huge
    assert huge["ipAddress"] is None, "a VM that did not start gives its address back"

    plain = vms["plain"]
    assert plain["status"] == "RUNNING", plain
    assert ipaddress.ip_address(plain["ipAddress"]) in ipaddress.ip_network(DEFAULT_CIDR)
    ipam = Ipam(client, ROOT)
    assert ipam.owner("default", plain["ipAddress"]) == "plain", "the default subnet's pool holds it"
    assert ipam.owner("blue1", str(taken)) == "api-guest"
    assert {ip: g for ip, g in ipam.addresses("blue1").items()} == {
        str(taken): "api-guest", **{vms[n]["ipAddress"]: n for n in ("f1", "f2", "big")}}

    for name, where, ref in (("no-flavor", "virtualMachineTemplates[5].flavor", "nope"),
                             ("no-net", "virtualMachineTemplates[6].network", "nowhere")):
        vm = vms[name]
        assert vm["status"] == "ERROR" and vm["errorCode"] == "UNKNOWN_REFERENCE", vm
        assert where in vm["message"] and ref in vm["message"], vm
        assert vm["ipAddress"] is None

    # A VM of blue1 moves only to a host serving blue1, and its guest follows it.
    status, err = migrate(c, "f2", idle_lc)
    assert status == 400 and err["error"]["field"] == "localControllerId" and "blue1" in err["error"]["message"], err
    assert store.find("guests", "f2").hypervisor == serving_lc  # type: ignore[union-attr]
    store.serve_subnet(idle_lc, "blue1", "br-blue")
    status, body = migrate(c, "f2", idle_lc)
    assert status == 200, body
    guest = store.find("guests", "f2")
    assert isinstance(guest, Guest) and guest.hypervisor == idle_lc, guest

    # Destroyed: its address goes back to the pool and its guest is gone, in one transaction.
    assert http("POST", c.bootstrap_url + "/bootstrap?destroyVirtualMachine", "f1") == (200, True)
    wait_for(lambda: store.find("guests", "f1") is None, 15, "f1's guest deleted")
    assert vms["f1"]["ipAddress"] not in ipam.addresses("blue1")
    for sub in ("blue1", "default"):
        assert not any(ipam.audit(sub).values()), (sub, ipam.audit(sub))

