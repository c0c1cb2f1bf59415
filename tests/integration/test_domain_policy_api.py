"""Hostile templates and numbers through the bootstrap of a real small cluster: each is a 400
naming the field, nothing is recorded or allocated, and the cluster serves the next request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.hostile_domains import HOSTILE
from tests.support import get, http, wait_for

pytestmark = pytest.mark.integration

FIELD = "virtualMachineTemplates[0].libVirtTemplate"


def vms_on_hosts(c: LocalCluster) -> list[str]:
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    return [vm for gm in h["groupManagerDescriptions"] for lc in gm["localControllers"] for vm in lc["assignedVirtualMachines"]]


def refused(c: LocalCluster, body: str) -> dict[str, Any]:
    code, answer = http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster", body)
    assert code == 400, (body[:200], code, answer)
    assert isinstance(answer, dict) and set(answer["error"]) >= {"code", "message", "field"}, answer
    return dict(answer["error"])


def numeric_bodies() -> list[tuple[str, str]]:
    """(raw JSON body, the field it must name): integers >= 2**64, NaN, infinities, numbers as
    strings and booleans, in every numeric field of a template."""
    out = []
    for literal in ("18446744073709551616", "184467440737095516160000", "-18446744073709551617", "NaN", "Infinity",
                    "-Infinity", "1e400", '"one"', '"NaN"', "true", "false", "[1]"):
        for field in ("vcpus", "memory", "rxBytes", "txBytes"):
            t = {"vcpus": "@vcpus", "memory": "@memory", "name": "n1",
                 "networkCapacityDemand": {"rxBytes": "@rxBytes", "txBytes": "@txBytes"}}
            text = json.dumps({"virtualMachineTemplates": [t]})
            for other, value in (("vcpus", "1"), ("memory", "262144"), ("rxBytes", "1"), ("txBytes", "1")):
                text = text.replace(f'"@{other}"', literal if other == field else value)
            name = f"networkCapacityDemand.{field}" if field in ("rxBytes", "txBytes") else field
            out.append((text, f"virtualMachineTemplates[0].{name}"))
    return out


def test_hostile_templates_and_numbers_are_400s_naming_the_field_and_allocate_nothing(
        cluster_factory: Any, tmp_path: Path) -> None:
    c = cluster_factory(gms=2, lcs=1)  # the leader and one group manager
    b = c.bootstrap_url + "/bootstrap"
    for case, (xml, named) in sorted(HOSTILE.items()):
        err = refused(c, json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": xml}]}))
        assert err["field"] == FIELD and err["code"] == "INVALID_TEMPLATE", (case, err)
        assert named in err["message"], (case, err)

    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    xxe = (f'<!DOCTYPE domain [<!ENTITY x SYSTEM "file://{secret}">]>'
           '<domain type="kvm"><name>vm1</name><memory>262144</memory><description>&x;</description></domain>')
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    bomb = (f'<!DOCTYPE domain [<!ENTITY l0 "lol">{lol}]>'
            '<domain type="kvm"><name>vm1</name><memory>262144</memory><description>&l9;</description></domain>')
    for xml in (xxe, bomb):
        err = refused(c, json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": xml}]}))
        assert err["field"] == FIELD and "DOCTYPE" in err["message"] and "TOPSECRET" not in err["message"], err

    for body, field in numeric_bodies():
        assert refused(c, body)["field"] == field, body
    for vcpu in ("18446744073709551616", "1e3", "nan", "0"):
        xml = f'<domain type="kvm"><name>vm1</name><memory>262144</memory><vcpu>{vcpu}</vcpu></domain>'
        assert refused(c, json.dumps({"virtualMachineTemplates": [{"libVirtTemplate": xml}]}))["field"] == FIELD
    # A hostile template after a good one: the whole submission is refused.
    body = {"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "good"},
                                        {"libVirtTemplate": HOSTILE["hostdev"][0]}]}
    assert refused(c, json.dumps(body))["field"] == "virtualMachineTemplates[1].libVirtTemplate"
    for name in ('"a\\n"', '"\\ud800"', '".."', '"x/y"'):
        body_text = '{"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": ' + name + "}]}"
        assert refused(c, body_text)["field"] == "virtualMachineTemplates[0].name", name

    assert get(b + "?getVirtualMachineDescriptions")["virtualMachines"] == [], "nothing was recorded"
    assert vms_on_hosts(c) == [], "nothing was started"
    code, task = http("POST", b + "?startVirtualCluster",
                      json.dumps({"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "after"}]}))
    assert code == 200, task

    def answered() -> dict[str, Any] | None:
        status, resp = http("POST", b + "?getVirtualClusterResponse", task)
        return resp if status == 200 and resp else None

    [vm] = wait_for(answered, 30, "the next submission's response")["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING" and vm["ipAddress"] == "192.168.122.2", "no address was taken by a refused request"
