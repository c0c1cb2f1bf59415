"""The EC2 API with real EC2 clients (boto3 and libcloud's EC2 driver) against a real local
cluster: create, describe, stop/start, reboot, terminate; errors in EC2's codes; no anonymous
or wrongly signed access."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from libcloud.compute.drivers.ec2 import EC2NodeDriver
from libcloud.compute.types import NodeState

from tests.support import wait_for

pytestmark = pytest.mark.integration

TYPES = {"m1.small": [1, 262144], "m1.medium": [2, 524288]}


@dataclass
class Endpoint:
    url: str
    port: int
    access: str
    secret: str
    region: str


@pytest.fixture
def ec2(cluster_factory: Any) -> Iterator[tuple[Any, Endpoint]]:
    # The bootstrap serves the EC2 API; cluster.json gives its URL and a demo key pair.
    cluster = cluster_factory(gms=2, lcs=2, lc_cpus=4, ec2=True,
                              extra={"ec2.instance_types": TYPES})
    e = json.loads((cluster.state_dir / "cluster.json").read_text())["ec2"]
    endpoint = Endpoint(e["url"], int(e["url"].rstrip("/").rsplit(":", 1)[1]), e["accessKey"], e["secretKey"], e["region"])
    client = boto3.client("ec2", endpoint_url=endpoint.url, region_name=endpoint.region, aws_access_key_id=endpoint.access,
                          aws_secret_access_key=endpoint.secret, config=Config(retries={"total_max_attempts": 1}))
    yield client, endpoint


def states(client: Any, ids: list[str]) -> dict[str, str]:
    answer = client.describe_instances(InstanceIds=ids)
    return {i["InstanceId"]: i["State"]["Name"] for r in answer["Reservations"] for i in r["Instances"]}


def test_boto3_runs_describes_stops_starts_reboots_and_terminates(ec2: tuple[Any, Endpoint]) -> None:
    client, _ = ec2
    types = client.describe_instance_types()["InstanceTypes"]
    assert {t["InstanceType"]: (t["VCpuInfo"]["DefaultVCpus"], t["MemoryInfo"]["SizeInMiB"]) for t in types} == {
        "m1.small": (1, 256), "m1.medium": (2, 512)}

    run = client.run_instances(ImageId="debian.qcow2", InstanceType="m1.medium", MinCount=2, MaxCount=2,
                               ClientToken="token-1")
    ids = [i["InstanceId"] for i in run["Instances"]]
    assert len(ids) == 2 and all(i.startswith("i-") for i in ids)
    assert {i["State"]["Name"] for i in run["Instances"]} == {"running"}
    assert {i["InstanceType"] for i in run["Instances"]} == {"m1.medium"}
    # The same ClientToken again: the same instances, nothing started twice.
    again = client.run_instances(ImageId="debian.qcow2", InstanceType="m1.medium", MinCount=2, MaxCount=2,
                                 ClientToken="token-1")
    assert [i["InstanceId"] for i in again["Instances"]] == ids
    listed = client.describe_instances()["Reservations"]
    assert sorted(i["InstanceId"] for r in listed for i in r["Instances"]) == sorted(ids)
    described = client.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"][0]
    assert described["InstanceType"] == "m1.medium" and described["PrivateIpAddress"]

    stopped = client.stop_instances(InstanceIds=[ids[0]])["StoppingInstances"][0]
    assert (stopped["PreviousState"]["Name"], stopped["CurrentState"]["Name"]) == ("running", "stopped")
    wait_for(lambda: states(client, ids)[ids[0]] == "stopped", 10, "the instance stopped")
    client.start_instances(InstanceIds=[ids[0]])
    wait_for(lambda: states(client, ids)[ids[0]] == "running", 10, "the instance running again")
    client.reboot_instances(InstanceIds=ids)

    gone = client.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {g["CurrentState"]["Name"] for g in gone} == {"terminated"}
    wait_for(lambda: not client.describe_instances()["Reservations"], 10, "no instance left")


def test_ec2_errors_have_ec2_codes(ec2: tuple[Any, Endpoint]) -> None:
    client, endpoint = ec2

    def code(call: Any, **kw: Any) -> str:
        with pytest.raises(ClientError) as err:
            call(**kw)
        return str(err.value.response["Error"]["Code"])

    assert code(client.describe_instances, InstanceIds=["i-00000000000000000"]) == "InvalidInstanceID.NotFound"
    assert code(client.terminate_instances, InstanceIds=["i-00000000000000000"]) == "InvalidInstanceID.NotFound"
    assert code(client.run_instances, ImageId="debian.qcow2", InstanceType="x9.huge", MinCount=1, MaxCount=1) == (
        "InvalidParameterValue")
    assert code(client.run_instances, ImageId="debian.qcow2", MinCount=3, MaxCount=1) == "InvalidParameterValue"
    # 2 hosts of 4 vcpus: 5 instances of 2 vcpus cannot all start; MinCount 5 means none may stay.
    assert code(client.run_instances, ImageId="debian.qcow2", InstanceType="m1.medium", MinCount=5,
                MaxCount=5) == "InsufficientInstanceCapacity"
    # The ones that had started are destroyed; the failed ones stay listed a while as terminated (as EC2's).
    wait_for(lambda: {i["State"]["Name"] for r in client.describe_instances()["Reservations"] for i in r["Instances"]}
             <= {"terminated"}, 10, "no instance left running")

    for wrong in (dict(aws_secret_access_key="wrong"), dict(aws_access_key_id="AKIDOTHER")):
        creds = {"aws_access_key_id": endpoint.access, "aws_secret_access_key": endpoint.secret, **wrong}
        bad = boto3.client("ec2", endpoint_url=endpoint.url, region_name=endpoint.region, **creds)
        assert code(bad.describe_instances) in ("SignatureDoesNotMatch", "AuthFailure")
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as anon:
        urllib.request.urlopen(endpoint.url + "?Action=DescribeInstances&Version=2016-11-15", timeout=10)
    assert anon.value.code == 401 and b"<Code>AuthFailure</Code>" in anon.value.read()


def test_libcloud_ec2_driver(ec2: tuple[Any, Endpoint]) -> None:
    _client, endpoint = ec2
    driver_class: Any = EC2NodeDriver  # libcloud has no type hints
    driver = driver_class(endpoint.access, endpoint.secret, secure=False, host="127.0.0.1", port=endpoint.port,
                          region=endpoint.region,
                           signature_version="4")
    sizes = {s.id for s in driver.list_sizes()}
    assert sizes  # libcloud's own table of AWS sizes; what this endpoint serves is DescribeInstanceTypes
    from libcloud.compute.base import NodeImage, NodeSize

    size: Any = NodeSize("m1.small", "m1.small", 256, 0, 0, 0, driver)
    image: Any = NodeImage("debian.qcow2", "debian.qcow2", driver)
    node = driver.create_node(name="ignored", size=size, image=image)
    assert node.id.startswith("i-") and node.state == NodeState.RUNNING
    nodes = {n.id: n for n in driver.list_nodes()}
    assert nodes[node.id].state == NodeState.RUNNING and nodes[node.id].private_ips
    assert driver.reboot_node(node)
    assert driver.destroy_node(node)
    wait_for(lambda: node.id not in {n.id for n in driver.list_nodes()}, 10, "the node gone")
