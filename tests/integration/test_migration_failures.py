"""Failed migrations in a real local cluster give back what they reserved, and a group
manager's ?migrateVirtualMachine refuses hostile MigrationRequests before anything moves.

Each failure is produced for real (libvirt's test driver refusing a domain, a killed local
controller), and after each one every group manager's ``reservedCapacity`` is back to zero,
the VM still runs where it was, and the next migration goes through.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import get, http, order, start_vm

pytestmark = pytest.mark.integration



def meta(c: LocalCluster, name: str) -> dict[str, Any]:
    status, body = http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", name)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def reserved(c: LocalCluster) -> list[list[float]]:
    """Every group manager's reservedCapacity (the leader manages no host and has none)."""
    gms = get(c.bootstrap_url + "/bootstrap?getGroupManagerDescriptions")
    return [gm["summaryInformation"]["reservedCapacity"] for gm in gms if gm.get("summaryInformation")]


def nothing_reserved(c: LocalCluster) -> None:
    held = reserved(c)
    assert held and all(r == [0.0, 0.0, 0.0, 0.0] for r in held), held



def migrate(c: LocalCluster, name: str, target: str) -> tuple[int, Any]:
    return http("POST", c.bootstrap_url + "/bootstrap?migrateVirtualMachine",
                json.dumps({"virtualMachineId": name, "localControllerId": target}), timeout=60)


def managing_gm_url(c: LocalCluster, lc_id: str) -> str:
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    for gm in h["groupManagerDescriptions"]:
        if any(lc["id"] == lc_id for lc in gm["localControllers"]):
            return f"http://127.0.0.1:{c.process(gm['id'])['port']}/groupmanager"
    raise AssertionError(f"no group manager manages {lc_id}")


def test_a_group_managers_migrate_refuses_bad_settings_client_uris_and_bad_ids(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2)
    vm = start_vm(c, "mover")
    source = vm["virtualMachineLocation"]["localControllerId"]
    target = next(p["id"] for p in c.processes if p["role"] == "localcontroller" and p["id"] != source)
    url = managing_gm_url(c, source) + "?migrateVirtualMachine"
    base = {"sourceVirtualMachineLocation": {"virtualMachineId": "mover", "localControllerId": source},
            "destinationVirtualMachineLocation": {"localControllerId": target}}

    def with_settings(settings: Any) -> dict[str, Any]:
        return {**base, "destinationHypervisorSettings": settings}

    hostile: list[tuple[Any, str]] = [
        (with_settings("fast"), "destinationHypervisorSettings"),
        (with_settings([1, 2]), "destinationHypervisorSettings"),
        (with_settings({"migration": 7}), "destinationHypervisorSettings.migration"),
        (with_settings({"migration": {"timeout": "soon"}}), "destinationHypervisorSettings.migration.timeout"),
        (with_settings({"migration": {"timeout": 2**64}}), "destinationHypervisorSettings.migration.timeout"),
        (with_settings({"migration": {"method": ["live"]}}), "destinationHypervisorSettings.migration.method"),
        (with_settings({"port": "16509"}), "destinationHypervisorSettings.port"),
        # A client never chooses where a migration goes (documentation-range addresses).
        (with_settings({"remoteUri": "qemu+tcp://192.0.2.1/system"}), "destinationHypervisorSettings.remoteUri"),
        (with_settings({"migrationUri": "tcp://192.0.2.1:49152"}), "destinationHypervisorSettings.migrationUri"),
        ({**base, "sourceVirtualMachineLocation": {"virtualMachineId": "\ud800", "localControllerId": source}},
         "sourceVirtualMachineLocation.virtualMachineId"),
        ({**base, "sourceVirtualMachineLocation": {"virtualMachineId": "..", "localControllerId": source}},
         "sourceVirtualMachineLocation.virtualMachineId"),
        ({**base, "sourceVirtualMachineLocation": {"virtualMachineId": "mover", "localControllerId": 5}},
         "sourceVirtualMachineLocation.localControllerId"),
        ({**base, "destinationVirtualMachineLocation": {"localControllerId": "a\n"}},
         "destinationVirtualMachineLocation.localControllerId"),
        ({**base, "sourceVirtualMachineLocation": "mover"}, "sourceVirtualMachineLocation"),
        ([base], "body"),
    ]
    for body, field in hostile:
        status, err = http("POST", url, json.dumps(body))
        assert status == 400, (body, status, err)
        assert err["error"]["field"] == field, (body, err)
    status, err = http("POST", url, json.dumps(with_settings({"remoteUri": "qemu+tcp://192.0.2.1/system"})))
    assert err["error"]["code"] == "CLIENT_URI_REFUSED" and "registration" in err["error"]["message"]
    nothing_reserved(c)
    assert meta(c, "mover")["virtualMachineLocation"]["localControllerId"] == source

    # The original's request with the destination's settings echoed as listed, and a migration
    # option the client may choose: it moves.
    listed = {lc["id"]: lc for lc in get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]}
    settings = dict(listed[target]["hypervisorSettings"])
    settings["migration"] = {**settings["migration"], "timeout": 20}
    assert http("POST", url, json.dumps(with_settings(settings)), timeout=60) == (200, True)
    moved = meta(c, "mover")
    assert moved["virtualMachineLocation"]["localControllerId"] == target and moved["status"] == "RUNNING"
    nothing_reserved(c)


def test_each_failed_migration_releases_the_destinations_reservation(cluster_factory: Any) -> None:
    # Failure detection slowed down, so that killed local controllers stay in the hierarchy
    # long enough to be asked for a migration.
    c = cluster_factory(gms=2, lcs=3, heartbeat_timeout=8.0, session_timeout=8.0)
    vm = start_vm(c, "victim", hostId="lc-1")
    assert vm["virtualMachineLocation"]["localControllerId"] == "lc-1"
    lc1, lc2 = (c.process(f"lc-{i}")["port"] for i in (1, 2))
    [domain] = [d for d in order(c, lc1, "lc.describe", None)["domains"] if d["name"] == "victim"]
    uuid = domain["uuid"]
    nothing_reserved(c)

    def failed(target: str, status: int, code: str) -> str:
        got, err = migrate(c, "victim", target)
        assert (got, err["error"]["code"]) == (status, code), err
        nothing_reserved(c)
        again = meta(c, "victim")
        assert again["status"] == "RUNNING" and again["virtualMachineLocation"]["localControllerId"] == "lc-1", again
        return str(err["error"]["message"])

    # 1. The destination refuses: a domain of that name already runs there.
    squatter = '<domain type="test"><name>victim</name><memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>'
    assert order(c, lc2, "lc.receiveDomain", {"vmId": "victim", "xml": squatter})["ok"]
    assert "already exists" in failed("lc-2", 409, "MIGRATION_FAILED")
    assert order(c, lc2, "lc.vmAction", {"vmId": "victim", "action": "destroy"})["ok"]

    # 2. A libvirt error at the destination: a domain with the VM's UUID under another name.
    twin = (f'<domain type="test"><name>twin</name><uuid>{uuid}</uuid><memory>131072</memory><vcpu>1</vcpu>'
            "<os><type>hvm</type></os></domain>")
    assert order(c, lc2, "lc.receiveDomain", {"vmId": "twin", "xml": twin})["ok"]
    assert f"already defined with uuid {uuid}" in failed("lc-2", 409, "MIGRATION_FAILED")
    assert order(c, lc2, "lc.vmAction", {"vmId": "twin", "action": "destroy"})["ok"]

    # 3. The destination is gone (kill -9), still listed for a few seconds.
    c.kill("lc-3")
    failed("lc-3", 409, "MIGRATION_FAILED")

    # Nothing was left held: the next migration goes through at once.
    assert migrate(c, "victim", "lc-2") == (200, True)
    assert meta(c, "victim")["virtualMachineLocation"]["localControllerId"] == "lc-2"
    nothing_reserved(c)

    # 4. The source itself is unreachable (kill -9), still listed for a few seconds.
    c.kill("lc-2")
    got, err = migrate(c, "victim", "lc-1")
    assert (got, err["error"]["code"]) == (503, "LOCAL_CONTROLLER_UNREACHABLE"), err
    nothing_reserved(c)
