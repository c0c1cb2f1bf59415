"""``GET /metrics`` on every role, in the Prometheus text format (parsed with prometheus_client's
own parser), on a real local cluster: the values follow a submission and a failover."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import http, leader_id, run_virtual_cluster, wait_for

pytestmark = [pytest.mark.integration]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version="), resp.headers["Content-Type"]
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def url_of(c: Any, node_id: str) -> str:
    return f"http://127.0.0.1:{c.process(node_id)['port']}"


def test_every_role_reports_metrics_that_follow_a_submission_and_a_failover(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2)
    leader = leader_id(c)
    for p in c.processes:
        s = scrape(url_of(c, p["id"]))
        assert value(s, "snooze_info", role=p["role"], id=p["id"]) == 1.0, p["id"]
        assert value(s, "snooze_zookeeper_connected") == 1.0, p["id"]
        assert value(s, "process_resident_memory_bytes") > 0, p["id"]
        if p["role"] == "groupmanager":
            assert value(s, "snooze_group_leader") == (1.0 if p["id"] == leader else 0.0), p["id"]
    lead = scrape(url_of(c, leader))
    assert value(lead, "snooze_group_managers") == 2.0
    assert value(lead, "snooze_leader_epoch") >= 1

    resp = run_virtual_cluster(c, [{"name": "metric-vm", "vcpus": 1, "memory": 262144}])
    [vm] = resp["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING", vm
    managers = [p["id"] for p in c.processes if p["role"] == "groupmanager" and p["id"] != leader]
    wait_for(lambda: sum(value(scrape(url_of(c, m)), "snooze_virtual_machines", status="RUNNING") for m in managers) == 1.0,
             10, "the VM counted RUNNING by its group manager")
    assert sum(value(scrape(url_of(c, m)), "snooze_local_controllers", status="ACTIVE") for m in managers) == 2.0
    boot = scrape(c.bootstrap_url)
    assert value(boot, "snooze_http_requests_total", path="/bootstrap", verb="startVirtualCluster", method="POST", status="200") >= 1
    # An unknown verb is counted under "unknown", never under its own (unbounded) name.
    assert http("GET", c.bootstrap_url + "/bootstrap?noSuchVerb")[0] == 404
    boot = scrape(c.bootstrap_url)
    assert value(boot, "snooze_http_requests_total", path="/bootstrap", verb="unknown", method="GET", status="404") >= 1
    assert not any(dict(labels).get("verb") == "noSuchVerb" for _name, labels in boot)
    some_lc = next(p["id"] for p in c.processes if p["role"] == "localcontroller")
    wait_for(lambda: value(scrape(url_of(c, some_lc)), "snooze_heartbeats_sent_total", kind="lc.heartbeat") > 0, 10,
             "the local controller's heartbeats counted")
    wait_for(lambda: sum(value(scrape(url_of(c, m)), "snooze_heartbeats_received_total", kind="lc.heartbeat") for m in managers) > 0,
             10, "its group manager counting them")
    assert value(scrape(url_of(c, managers[0])), "snooze_heartbeats_received_total", kind="gl.heartbeat") > 0

    # Failover: the new leader says so, with a newer epoch.
    epoch = value(lead, "snooze_leader_epoch")
    c.kill(leader)
    wait_for(lambda: leader_id(c) != leader, 30, "a new leader")
    new = leader_id(c)
    wait_for(lambda: value(scrape(url_of(c, new)), "snooze_group_leader") == 1.0, 10, "the new leader's metric")
    assert value(scrape(url_of(c, new)), "snooze_leader_epoch") > epoch
