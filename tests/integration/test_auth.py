"""Authentication and authorization on a real local cluster started with ``auth=True``
(``snooze cluster up --auth``): tokens kept hashed in the cluster's ZooKeeper, made through the
API, the CLI and straight in ZooKeeper; every call without a token refused; a user sees and
touches only their own VMs; a revoked token stops working within a second; the audit log; the
original's clients with a token; the EC2 gateway behind its own keys."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from snooze.cli import main as snooze_main
from snooze.client import SnoozeClientError
from snooze.client.sync import SyncSnoozeClient
from tests.support import http, wait_for

pytestmark = [pytest.mark.integration]

TEMPLATE = {"vcpus": 1, "memory": 262144, "imageId": "debian.qcow2"}


def _audit(c: Any, node_id: str) -> list[dict[str, Any]]:
    path = Path(c.state_dir) / "logs" / f"audit-{node_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_tokens_roles_owners_revocation_and_audit(cluster_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster_factory(gms=2, lcs=2, auth=True)
    url = c.bootstrap_url
    admin = c.admin_token
    manifest = json.loads(c.manifest_path.read_text())
    assert admin and manifest["adminToken"] == admin
    boot = next(p for p in c.processes if p["role"] == "bootstrap")
    gm = next(p for p in c.processes if p["role"] == "groupmanager")
    body = json.dumps({"virtualMachineTemplates": [{"name": "anon-vm", **TEMPLATE}]})

    # -- no token: every call of the public API is 401 (reads too), naming the header ------
    anonymous = [
        ("POST", "/bootstrap?startVirtualCluster", body), ("POST", "/bootstrap?destroyVirtualMachine", "anon-vm"),
        ("POST", "/bootstrap?migrateVirtualMachine", json.dumps({"virtualMachineId": "x", "localControllerId": "lc-1"})),
        ("POST", "/bootstrap?suspendEnergySaver", ""), ("POST", "/bootstrap?startReconfiguration", "gm-1"),
        ("POST", "/networks", json.dumps({"id": "n1"})), ("DELETE", "/images/debian.qcow2", None),
        ("POST", "/tokens", json.dumps({"user": "eve", "role": "admin"})), ("GET", "/bootstrap?getCompleteHierarchy", None),
        ("GET", "/images", None),
    ]
    for method, path, data in anonymous:
        status, answer = http(method, url + path, data)
        assert status == 401, (method, path, answer)
        assert answer["error"]["code"] == "UNAUTHORIZED" and answer["error"]["field"] == "Authorization"
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:  # open, and counting the refusals
        assert 'snooze_auth_refused_total{reason="missing"}' in resp.read().decode()
    gm_url = f"http://127.0.0.1:{gm['port']}"
    assert http("POST", gm_url + "/groupmanager?startVirtualCluster", body)[0] == 401
    assert http("GET", gm_url + "/health")[0] in (200, 503)  # health and metrics stay open
    assert http("GET", gm_url + "/metrics")[0] == 200

    # -- tokens: through the API (admin), the CLI (the cluster's adminToken), ZooKeeper -----
    status, made = http("POST", url + "/tokens", json.dumps({"user": "alice", "role": "user", "name": "laptop"}), token=admin)
    assert status == 201 and made["user"] == "alice" and made["token"].startswith("snz_"), made
    alice = made["token"]
    for bad, field in (({"user": "a/b"}, "user"), ({"user": "x", "role": "root"}, "role"), ({"user": "x", "admin": 1}, "admin")):
        status, answer = http("POST", url + "/tokens", json.dumps(bad), token=admin)
        assert (status, answer["error"]["field"]) == (400, field), answer
    capsys.readouterr()
    assert snooze_main(["token", "create", "--state-dir", str(c.state_dir), "--user", "bob"]) == 0
    bob = capsys.readouterr().out.strip()
    assert bob.startswith("snz_")
    assert snooze_main(["token", "create", "--zookeeper", c.zookeeper_address, "--user", "carol", "--role", "admin",
                        "--json"]) == 0
    carol = json.loads(capsys.readouterr().out)["token"]
    status, listed = http("GET", url + "/tokens", token=carol)
    assert status == 200 and {t["user"] for t in listed["tokens"]} >= {"admin", "alice", "bob", "carol"}
    assert all("token" not in t and "sha256" not in t for t in listed["tokens"])
    assert http("GET", url + "/tokens", token=alice)[0] == 403  # users do not manage tokens

    # -- owners: alice's VM is hers; bob neither sees nor touches it -----------------------
    with SyncSnoozeClient(url, token=alice) as api:
        resp = api.submit_virtual_cluster([{"name": "alice-vm", **TEMPLATE}], timeout=60)
    [vm] = resp["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING" and vm["owner"] == "alice", vm
    task = str(vm["taskId"])
    with SyncSnoozeClient(url, token=bob) as api:
        for call in (lambda: api.get_virtual_machine_meta_data("alice-vm"), lambda: api.destroy_virtual_machine("alice-vm"),
                     lambda: api.suspend_virtual_machine("alice-vm")):
            with pytest.raises(SnoozeClientError) as err:
                call()
            assert err.value.status == 404 and err.value.code == "VIRTUAL_MACHINE_NOT_FOUND"
        with pytest.raises(SnoozeClientError) as err:
            api.get_virtual_cluster_response(task)
        assert err.value.status == 404
        assert api.get_virtual_machine_descriptions()["virtualMachines"] == []
        hierarchy = api.get_complete_hierarchy()
        lcs = [lc for g in hierarchy["groupManagerDescriptions"] for lc in g.get("localControllers", [])]
        assert len(lcs) == 2 and all(not lc.get("virtualMachineMetaData") for lc in lcs)  # hosts yes, her VM no
        with pytest.raises(SnoozeClientError) as err:
            api.migrate_virtual_machine("alice-vm", "lc-1")
        assert err.value.status == 403
    # bob's own token on a group manager's verbs: 403 (they are for admins).
    assert http("GET", gm_url + "/groupmanager?getGroupManagerDescription", token=bob)[0] == 403
    assert http("GET", gm_url + "/groupmanager?getGroupManagerDescription", token=admin)[0] == 200
    with SyncSnoozeClient(url, token=admin) as api:
        assert api.get_virtual_machine_meta_data("alice-vm")["owner"] == "alice"
        assert [v["virtualMachineId"] for v in api.get_virtual_machine_descriptions()["virtualMachines"]] == ["alice-vm"]
    with SyncSnoozeClient(url, token=alice) as api:
        assert api.get_virtual_machine_meta_data("alice-vm")["status"] == "RUNNING"
        assert api.suspend_virtual_machine("alice-vm") is True

    # -- networks: a user's token uses and sees the default network and those granted --------
    for i, net in enumerate(("blue", "red")):
        assert http("POST", url + "/networks", json.dumps({"id": net}), token=admin)[0] == 201
        assert http("POST", url + "/subnets", json.dumps({"id": f"{net}-s", "network": net, "cidr": f"10.77.{i}.0/24"}),
                    token=admin)[0] == 201
    status, dave = http("POST", url + "/tokens", json.dumps({"user": "dave", "networks": ["blue"]}), token=admin)
    assert status == 201 and dave["networks"] == ["blue"], dave
    assert http("POST", url + "/tokens", json.dumps({"user": "x", "networks": ["a/b"]}), token=admin)[1]["error"]["field"] == "networks"
    capsys.readouterr()
    assert snooze_main(["token", "create", "--state-dir", str(c.state_dir), "--user", "erin", "--network", "red", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["networks"] == ["red"]
    dave = dave["token"]
    assert {n["id"] for n in http("GET", url + "/networks", token=dave)[1]["networks"]} == {"default", "blue"}
    assert {n["id"] for n in http("GET", url + "/networks", token=admin)[1]["networks"]} == {"default", "blue", "red"}
    assert {s["id"] for s in http("GET", url + "/subnets", token=dave)[1]["subnets"]} == {"default", "blue-s"}
    for path in ("/networks/red", "/subnets/red-s", "/subnets/red-s/addresses"):
        status, answer = http("GET", url + path, token=dave)
        assert (status, answer["error"]["code"]) == (404, "NETWORK_OBJECT_NOT_FOUND"), (path, answer)  # as if missing
    assert http("GET", url + "/networks/blue", token=dave)[0] == 200
    for template, field in (({"network": "red"}, "network"), ({"subnet": "red-s"}, "subnet")):
        status, answer = http("POST", url + "/bootstrap?startVirtualCluster",
                              json.dumps({"virtualMachineTemplates": [{"name": "dave-red", **TEMPLATE, **template}]}), token=dave)
        assert (status, answer["error"]["code"], answer["error"]["field"]) == (
            403, "FORBIDDEN", f"virtualMachineTemplates[0].{field}"), answer
    with SyncSnoozeClient(url, token=dave) as api:
        [vm] = api.submit_virtual_cluster([{"name": "dave-blue", **TEMPLATE, "network": "blue"}], timeout=60)["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING" and vm["ipAddress"].startswith("10.77.0."), vm

    # -- revocation: within a second every process refuses the token -----------------------
    status, _ = http("DELETE", url + f"/tokens/{made['id']}", token=admin)
    assert status == 200
    revoked_at = time.monotonic()
    wait_for(lambda: http("GET", url + "/bootstrap?getCompleteHierarchy", token=alice)[0] == 401, 1.0,
             "alice's revoked token refused")
    assert time.monotonic() - revoked_at < 1.0
    assert http("DELETE", url + f"/tokens/{made['id']}", token=admin)[0] == 404

    # -- the audit log: who did what, refused calls too; reads are not in it ----------------
    lines = _audit(c, boot["id"])
    seen = {(x["user"], x["verb"], x["status"]) for x in lines}
    assert (None, "startVirtualCluster", 401) in seen
    assert ("alice", "startVirtualCluster", 200) in seen and ("alice", "suspendVirtualMachine", 200) in seen
    assert ("bob", "destroyVirtualMachine", 404) in seen and ("bob", "migrateVirtualMachine", 403) in seen
    assert ("admin", "", 201) in {(x["user"], x["verb"], x["status"]) for x in lines if x["path"] == "/tokens"}
    assert not any(x["method"] == "GET" and x["status"] == 200 and x["path"] != "/tokens" for x in lines)


def test_the_original_clients_with_a_token(cluster_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from libcloud.compute.base import NodeImage, NodeSize
    from libcloud.compute.drivers.ec2 import EC2NodeDriver
    from libcloud.compute.providers import get_driver
    from libcloud.compute.types import Provider

    from snooze.client.java import BootstrapAPI, NetworkAddress

    c = cluster_factory(gms=2, lcs=1, auth=True, ec2=True)
    port = int(c.bootstrap_url.rsplit(":", 1)[1])
    snooze: Any = get_driver(Provider.SNOOZE)  # type: ignore[attr-defined]  # registered by snooze's hook
    # Without a token the seed's libcloud session is refused, with the server's code.
    monkeypatch.delenv("SNOOZE_TOKEN", raising=False)
    driver = snooze("127.0.0.1", str(port))
    with pytest.raises(Exception) as err:
        driver.list_nodes()
    assert "UNAUTHORIZED" in str(err.value)
    driver.close()
    # One line for an old script: the token in the environment (or token= for the driver).
    monkeypatch.setenv("SNOOZE_TOKEN", c.admin_token)
    driver = snooze("127.0.0.1", str(port))
    try:
        assert driver.list_nodes() == []
    finally:
        driver.close()
    with BootstrapAPI(NetworkAddress("127.0.0.1", port)) as bootstrap:
        assert bootstrap.getGroupLeaderDescription().id.startswith("gm-")
    monkeypatch.delenv("SNOOZE_TOKEN")
    # The EC2 gateway authenticates its clients by their keys (AWS Signature Version 4) and
    # reaches the bootstrap with a token of its own process.
    ec2 = json.loads(c.manifest_path.read_text())["ec2"]
    driver_class: Any = EC2NodeDriver
    ec2_driver = driver_class(ec2["accessKey"], ec2["secretKey"], secure=False, host="127.0.0.1",
                              port=int(ec2["url"].rstrip("/").rsplit(":", 1)[1]), region=ec2["region"], signature_version="4")
    size: Any = NodeSize("m1.small", "m1.small", 256, 0, 0, 0, ec2_driver)
    image: Any = NodeImage("debian.qcow2", "debian.qcow2", ec2_driver)
    node = ec2_driver.create_node(name="ignored", size=size, image=image)
    assert node.id in {n.id for n in ec2_driver.list_nodes()}
    assert ec2_driver.destroy_node(node)
