"""Orders reach the very domain they were meant for, and a refused order says why.

In a real local cluster: an order that names a VM's old domain (as a captured and replayed
order would) is refused by the local controller once a new VM of the same name runs there;
and lifecycle verbs a VM's state does not allow (resume of a SHUTOFF VM) are a 409 with the
state and what the verb needs, through the bootstrap as through the VM's group manager.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kazoo.client import KazooClient

from snooze.dev.localcluster import LocalCluster
from snooze.rpc import RpcError
from tests.support import http, order, start_vm, wait_for

pytestmark = pytest.mark.integration



def uuid_of(c: LocalCluster, lc_port: int, name: str) -> str:
    [domain] = [d for d in order(c, lc_port, "lc.describe", None)["domains"] if d["name"] == name]
    return str(domain["uuid"])


def status(c: LocalCluster, name: str) -> str:
    return str(http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", name)[1]["status"])


def test_an_order_for_an_earlier_vm_of_the_same_name_is_refused(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2)
    b = c.bootstrap_url + "/bootstrap"
    first = start_vm(c, "reborn")
    lc = c.process(first["virtualMachineLocation"]["localControllerId"])
    old = uuid_of(c, lc["port"], "reborn")
    assert http("POST", b + "?destroyVirtualMachine", "reborn") == (200, True)
    second = start_vm(c, "reborn")
    lc = c.process(second["virtualMachineLocation"]["localControllerId"])
    new = uuid_of(c, lc["port"], "reborn")
    assert new != old

    other = next(p for p in c.processes if p["role"] == "localcontroller" and p["id"] != lc["id"])
    stale_orders = [
        ("lc.vmAction", {"vmId": "reborn", "uuid": old, "action": "suspend"}),
        ("lc.vmAction", {"vmId": "reborn", "uuid": old, "action": "destroy"}),
        ("lc.migrate", {"vmId": "reborn", "uuid": old,
                        "destination": {"id": other["id"], "address": {"address": "127.0.0.1", "port": other["port"]},
                                        "hypervisorSettings": {"testDriver": True}}}),
    ]
    for kind, body in stale_orders:
        with pytest.raises(RpcError) as refused:
            order(c, lc["port"], kind, body)
        assert (refused.value.status, refused.value.code, refused.value.field) == (409, "VIRTUAL_MACHINE_MISMATCH", "uuid")
        assert old in refused.value.message and new in refused.value.message
    assert status(c, "reborn") == "RUNNING"
    assert uuid_of(c, lc["port"], "reborn") == new, "the new VM was not touched"

    # The same order naming the current domain is obeyed.
    assert order(c, lc["port"], "lc.vmAction", {"vmId": "reborn", "uuid": new, "action": "suspend"})["ok"]
    wait_for(lambda: status(c, "reborn") == "PAUSED", 10, "the VM paused")

    # The leader recorded the domain's UUID when the VM started, and the bootstrap's orders name
    # it: the VM's own verbs go through, and the record says which domain they mean.
    assert c.zk is not None
    zk = KazooClient(hosts=c.zk.address)
    zk.start(timeout=15)
    try:
        assert json.loads(zk.get("/snooze/vms/reborn")[0])["uuid"] == new
    finally:
        zk.stop()
        zk.close()
    assert http("POST", b + "?resumeVirtualMachine", "reborn") == (200, True)
    assert http("POST", b + "?suspendVirtualMachine", "reborn") == (200, True)

    # The group manager refuses an order whose caller names another domain.
    gm = c.process(http("POST", b + "?getVirtualMachineMetaData", "reborn")[1]["virtualMachineLocation"]["groupManagerId"])
    with pytest.raises(RpcError) as refused:
        order(c, gm["port"], "gm.vmAction", {"vmId": "reborn", "uuid": old, "action": "destroy", "localControllerId": lc["id"]})
    assert (refused.value.status, refused.value.code) == (409, "VIRTUAL_MACHINE_MISMATCH")
    assert status(c, "reborn") == "PAUSED"


def test_lifecycle_verbs_a_vms_state_does_not_allow_are_a_409_with_the_reason(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=1)
    b = c.bootstrap_url + "/bootstrap"
    start_vm(c, "vm1")

    def verb(name: str) -> tuple[int, Any]:
        return http("POST", f"{b}?{name}VirtualMachine", "vm1")

    code, err = verb("resume")
    assert code == 409 and err["error"]["code"] == "INVALID_STATE", err
    assert "vm1 is RUNNING; resume applies to PAUSED" in err["error"]["message"]
    assert verb("shutdown") == (200, True)
    wait_for(lambda: status(c, "vm1") == "SHUTOFF", 10, "vm1 shut off")
    for name in ("resume", "suspend", "reboot", "shutdown"):
        code, err = verb(name)
        assert code == 409, (name, code, err)
        assert err["error"]["code"] == "INVALID_STATE" and err["error"]["field"] == "virtualMachineId"
        assert "vm1 is SHUTOFF" in err["error"]["message"], err
    code, err = verb("resume")
    assert "vm1 is SHUTOFF; resume applies to PAUSED" in err["error"]["message"]
    assert status(c, "vm1") == "SHUTOFF"
    assert verb("destroy") == (200, True), "destroy applies to every state"
    code, err = verb("resume")
    assert code == 404 and err["error"]["code"] == "VIRTUAL_MACHINE_NOT_FOUND"
