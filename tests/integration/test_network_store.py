"""The network model's store on a real ZooKeeper: create-only and version-checked saves, unknown
references and overlapping subnets refused with the field named, every delete-while-in-use
refused with the users named, guests written whole with their address, and a crash injected at
every step of a guest's creation (a process killed with os._exit) leaving no orphan."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from typing import Any

import pytest
from kazoo.client import KazooClient

from snooze.codes import ErrorCode
from snooze.coordination.store import Changed
from snooze.dev.zookeeper import ZooKeeperServer
from snooze.network.model import (
    VLAN,
    FirewallGroup,
    FirewallRule,
    Flavor,
    Guest,
    Network,
    NetworkObject,
    NetworkObjectError,
    Subnet,
    VLANGroup,
)
from snooze.network.store import (
    Exists,
    InUse,
    NetworkStore,
    NotFound,
    UnknownReference,
    default_objects,
)

pytestmark = pytest.mark.integration
ROOT = "/snooze-test"


@pytest.fixture
def client(kazoo_client: KazooClient) -> KazooClient:
    return kazoo_client


def subnet(sid: str, cidr: str, network: str = "net1", **kw: Any) -> Subnet:
    return Subnet.from_json({"id": sid, "network": network, "cidr": cidr, **kw})


def populate(store: NetworkStore) -> None:
    store.create(Network("net1"))
    store.create(subnet("sub1", "10.20.0.0/24", gateway="10.20.0.1"))
    store.create(Flavor("small", 1, 524288))
    store.create(FirewallGroup("admin"))
    store.create(FirewallGroup("web", [FirewallRule("tcp", 22, 22, group="admin"), FirewallRule("all", group="web")]))
    store.create(VLAN(100, "front"))
    store.create(VLANGroup("front", [100]))
    store.serve_subnet("lc-1", "sub1", "br-vm")


def test_objects_are_saved_create_only_and_version_checked(client: KazooClient) -> None:
    store = NetworkStore(client, ROOT)
    populate(store)
    with pytest.raises(Exists) as exists:
        store.create(Network("net1"))
    assert exists.value.code is ErrorCode.NETWORK_OBJECT_EXISTS and exists.value.field == "id"
    assert [n.key for n in store.objects("networks")] == ["net1"]
    assert [v.key for v in store.objects("vlans")] == ["100"]

    flavor, version = store.get("flavors", "small")
    assert isinstance(flavor, Flavor)
    bigger = Flavor("small", 2, 1048576)
    new_version = store.update(bigger, version)
    with pytest.raises(Changed):
        store.update(Flavor("small", 4, 1048576), version)  # a stale version: refused
    assert store.get("flavors", "small") == (bigger, new_version)
    with pytest.raises(NotFound):
        store.get("flavors", "large")

    # Unknown references, named by field; nothing written.
    unknowns: list[tuple[NetworkObject, str]] = [
        (subnet("sub9", "10.99.0.0/24", network="nowhere"), "network"),
        (FirewallGroup("db", [FirewallRule("tcp", 5432, 5432, group="ghosts")]), "rules[0].group"),
        (VLANGroup("back", [100, 200]), "vlans[1]"),
    ]
    for obj, fld in unknowns:
        with pytest.raises(UnknownReference) as unknown:
            store.create(obj)
        assert unknown.value.field == fld and unknown.value.code is ErrorCode.UNKNOWN_REFERENCE, unknown.value
        assert store.find(obj.KIND, obj.key) is None
    with pytest.raises(UnknownReference) as unknown:
        store.update(FirewallGroup("web", [FirewallRule("tcp", 80, 80, group="ghosts")]))
    assert unknown.value.field == "rules[0].group"

    # Overlapping subnets in one network; another family or another network is fine.
    with pytest.raises(NetworkObjectError) as overlap:
        store.create(subnet("sub2", "10.20.0.128/25"))
    assert overlap.value.field == "cidr" and "sub1" in str(overlap.value)
    store.create(subnet("sub6", "2001:db8::/64"))
    store.create(Network("net2"))
    store.create(subnet("sub3", "10.20.0.0/24", network="net2"))
    with pytest.raises(NetworkObjectError) as fixed:
        store.update(subnet("sub1", "10.20.0.0/23"))
    assert fixed.value.field == "cidr"
    store.update(subnet("sub1", "10.20.0.0/24", gateway="10.20.0.1", dns=["10.20.0.1"]))


def test_deletes_in_use_are_refused_naming_the_users(client: KazooClient) -> None:
    store = NetworkStore(client, ROOT)
    populate(store)
    guest = store.create_guest(Guest("vm-1", "small", "net1", fwgroup="web", vlangroup="front", hypervisor="lc-1"))
    assert guest.subnet == "sub1" and str(guest.ip) == "10.20.0.2" and guest.bridge == "br-vm"
    assert guest.mac == "54:56:0a:14:00:02"
    assert store.get("guests", "vm-1")[0] == guest

    refused = {
        ("networks", "net1"): ["subnet:sub1"],
        ("subnets", "sub1"): ["guest:vm-1", "hypervisor:lc-1", "address 10.20.0.2 (guest vm-1)"],
        ("flavors", "small"): ["guest:vm-1"],
        ("fwgroups", "web"): ["guest:vm-1"],
        ("fwgroups", "admin"): ["fwgroup:web"],  # named by web's rule
        ("vlangroups", "front"): ["guest:vm-1"],
        ("vlans", "100"): ["vlangroup:front"],
        ("hypervisors", "lc-1"): ["guest:vm-1"],
    }
    for (kind, key), users in refused.items():
        with pytest.raises(InUse) as in_use:
            store.delete(kind, key)
        assert in_use.value.code is ErrorCode.NETWORK_OBJECT_IN_USE
        assert in_use.value.users == users, (kind, key)
        for user in users:
            assert user in str(in_use.value)
        assert store.find(kind, key) is not None

    # Users gone, deletes go through, in dependency order.
    assert store.delete_guest("vm-1")
    assert not store.delete_guest("vm-1")
    assert store.ipam.addresses("sub1") == {}
    store.unserve_subnet("lc-1", "sub1")
    for kind, key in [("hypervisors", "lc-1"), ("flavors", "small"), ("fwgroups", "web"), ("fwgroups", "admin"),
                      ("vlangroups", "front"), ("vlans", "100"), ("subnets", "sub1"), ("networks", "net1")]:
        store.delete(kind, key)
        assert store.find(kind, key) is None
    assert not client.exists(f"{ROOT}/network/pools/sub1"), "the subnet's pool goes with it"


def test_a_bare_reservation_keeps_its_subnet(client: KazooClient) -> None:
    store = NetworkStore(client, ROOT)
    populate(store)
    ip = store.ipam.reserve("sub1", "outside-1")
    with pytest.raises(InUse) as in_use:
        store.delete("subnets", "sub1")
    assert f"address {ip} (guest outside-1)" in in_use.value.users
    store.ipam.release("sub1", ip, "outside-1")
    store.unserve_subnet("lc-1", "sub1")
    store.delete("subnets", "sub1")


def test_guest_creation_failing_at_its_transaction_leaks_nothing(client: KazooClient) -> None:
    """Loch Ness's AddGuest reserved the address, then failed on a later step and leaked it:
    here the address is in the same transaction as what fails."""
    store = NetworkStore(client, ROOT)
    populate(store)
    pool_before = store.ipam.pool("sub1").raw
    for bad, fld in [(Guest("vm-2", "nosuch", "net1"), "flavor"), (Guest("vm-2", "small", "net1", fwgroup="nosuch"), "fwgroup"),
                     (Guest("vm-2", "small", "net1", vlangroup="nosuch"), "vlangroup")]:
        with pytest.raises(UnknownReference) as unknown:
            store.create_guest(bad)
        assert unknown.value.field == fld
    with pytest.raises(UnknownReference):
        store.create_guest(Guest("vm-2", "small", "net1", hypervisor="lc-9"))
    with pytest.raises(NetworkObjectError) as wrong:
        store.create(Network("net2"))
        store.create_guest(Guest("vm-2", "small", "net2", subnet="sub1"))
    assert wrong.value.field == "subnet"
    assert store.ipam.addresses("sub1") == {}
    assert store.ipam.pool("sub1").raw == pool_before
    assert not any(store.audit().values())
    store.create_guest(Guest("vm-2", "small", "net1"))
    with pytest.raises(Exists):
        store.create_guest(Guest("vm-2", "small", "net1"))
    assert list(store.ipam.addresses("sub1").values()) == ["vm-2"], "the loser's address is not kept"


# -- crash injection ---------------------------------------------------------------------------
def _create_and_die(address: str, step: str, action: str) -> None:
    """In a child process: create (or delete) guest vm-c and kill the process at ``step``."""
    c = KazooClient(hosts=address, timeout=10)
    c.start(timeout=15)
    store = NetworkStore(c, ROOT)

    def hook(name: str) -> None:
        if name == step:
            os._exit(9)  # no clean-up of any kind: as a kill

    store.hook = hook
    if action == "create":
        store.create_guest(Guest("vm-c", "small", "net1", fwgroup="web", hypervisor="lc-1"))
    else:
        store.delete_guest("vm-c")
    os._exit(0)


@pytest.mark.parametrize("action", ["create", "delete"])
def test_a_crash_at_any_step_leaves_no_orphan(zookeeper: ZooKeeperServer, client: KazooClient, action: str) -> None:
    store = NetworkStore(client, ROOT)
    populate(store)
    ctx = multiprocessing.get_context("spawn")
    steps = ["read", "planned", "commit", "committed"] if action == "create" else ["commit", "committed"]
    for step in steps:
        if action == "delete" and store.find("guests", "vm-c") is None:
            store.create_guest(Guest("vm-c", "small", "net1", fwgroup="web", hypervisor="lc-1"))
        child = ctx.Process(target=_create_and_die, args=(zookeeper.address, step, action))
        child.start()
        child.join(60)
        assert child.exitcode == 9, f"killed at {step}"
        # Recovery: a new session looks at what is there.
        problems = store.audit()
        print(f"{action}, killed at {step}: audit {problems}")
        assert not any(problems.values()), (step, problems)
        guest = store.find("guests", "vm-c")
        held = store.ipam.addresses("sub1")
        written = action == "create" and step == "committed" or action == "delete" and step != "committed"
        if written:
            assert isinstance(guest, Guest) and held == {str(guest.ip): "vm-c"}
            assert store.users("flavors", "small") == ["guest:vm-c"] and store.users("hypervisors", "lc-1") == ["guest:vm-c"]
        else:
            assert guest is None and held == {}
            assert store.users("flavors", "small") == [] and store.users("fwgroups", "web") == []
        if action == "create" and guest is not None:
            store.delete_guest("vm-c")


def test_default_network_maps_virtual_machine_subnet(client: KazooClient) -> None:
    network, sub = default_objects("192.168.122.0/24")
    assert (network.id, sub.id, sub.network) == ("default", "default", "default")
    assert (str(sub.gateway), str(sub.start), str(sub.end), sub.size) == ("192.168.122.1", "192.168.122.2", "192.168.122.254", 253)
    store = NetworkStore(client, ROOT)
    store.create(network)
    store.create(sub)
    assert str(store.ipam.reserve("default", "vm-1")) == "192.168.122.2", "the first address today's path hands out"


def test_hypervisor_links_follow_serving_and_migration(client: KazooClient) -> None:
    store = NetworkStore(client, ROOT)
    populate(store)
    with pytest.raises(UnknownReference) as unknown:
        store.serve_subnet("lc-1", "nosuch", "br0")
    assert unknown.value.field == "subnets.nosuch"
    assert store.hypervisors_serving("sub1") == ["lc-1"]
    assert store.serves("lc-1", "sub1") and not store.serves("lc-2", "sub1")
    store.ensure_hypervisor("lc-2")
    with pytest.raises(NetworkObjectError) as unserved:
        store.create_guest(Guest("vm-m", "small", "net1", subnet="sub1", hypervisor="lc-2"))
    assert unserved.value.field == "subnet" and "lc-1" in str(unserved.value)
    with pytest.raises(Exception) as bad_ip:
        store.ipam.release("sub1", "10.20.0.999")
    assert getattr(bad_ip.value, "field", None) == "ip"
    guest = store.create_guest(Guest("vm-m", "small", "net1", hypervisor="lc-1"))
    assert guest.bridge == "br-vm"
    _g, version = store.get("guests", "vm-m")
    store.update(replace(guest, hypervisor="lc-2"), version)
    assert store.users("hypervisors", "lc-1") == [] and store.users("hypervisors", "lc-2") == ["guest:vm-m"]
    with pytest.raises(Changed):
        store.update(replace(guest, hypervisor="lc-1"), version)  # from a stale read
    with pytest.raises(NetworkObjectError) as fixed:
        store.update(replace(guest, hypervisor="lc-2", ip=None))
    assert fixed.value.field == "ip"
    store.unserve_subnet("lc-1", "sub1")
    assert store.hypervisors_serving("sub1") == [] and store.serves("lc-9", "sub1"), "served by none: by all"
    store.delete("hypervisors", "lc-1")
    assert not any(store.audit().values())
