"""snooze-cni's pure parts: environment, configuration, versions, error objects, results, names."""

from __future__ import annotations

import io
import json

import pytest

from localcontroller.cni import spec
from localcontroller.cni.plugin import poll_config, run
from localcontroller.cni.spec import CniError

CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "snooze-cni",
        "snooze": {"agent": "http://127.0.0.1:1", "network": "net1", "pollTimeout": 0.05, "pollRetries": 3}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def invoke(env: dict[str, str], stdin: bytes) -> tuple[int, dict]:
    out = io.StringIO()
    code = run(env, io.BytesIO(stdin), out)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


def test_version_lists_the_three_versions() -> None:
    code, out = invoke({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert code == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize(("env", "stdin", "code"), [
    ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, json.dumps(CONF).encode(), 4),
    ({**ENV, "CNI_IFNAME": "a/b"}, json.dumps(CONF).encode(), 4),
    ({**ENV, "CNI_COMMAND": "FROB"}, json.dumps(CONF).encode(), 4),
    ({**ENV, "CNI_ARGS": "NOEQUALS"}, json.dumps(CONF).encode(), 4),
    (ENV, b"{not json", 6),
    (ENV, b"[1]", 6),
    (ENV, json.dumps({**CONF, "cniVersion": "9.9.9"}).encode(), 1),
    (ENV, json.dumps({**CONF, "snooze": {"frobnicate": 1}}).encode(), 2),
    (ENV, json.dumps({**CONF, "snooze": {"mode": "ipvlan"}}).encode(), 7),
    (ENV, json.dumps({**CONF, "snooze": {"pollRetries": 0}}).encode(), 7),
    (ENV, json.dumps({k: v for k, v in CONF.items() if k != "name"}).encode(), 7),
    ({**ENV, "CNI_COMMAND": "STATUS"}, json.dumps(CONF).encode(), 1),  # STATUS is 1.1.0's
    ({**ENV, "CNI_COMMAND": "CHECK"}, json.dumps(CONF).encode(), 7),  # CHECK needs prevResult
])
def test_errors_are_the_specs_objects_with_a_non_zero_exit(env: dict[str, str], stdin: bytes, code: int) -> None:
    rc, out = invoke(env, stdin)
    assert rc != 0
    assert out["code"] == code and set(out) == {"cniVersion", "code", "msg", "details"} and out["msg"]


def test_an_agent_that_never_answers_is_code_11_within_retries_times_timeout() -> None:
    conf = spec.read_config(json.dumps(CONF).encode())
    env = spec.read_env(ENV)
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    with pytest.raises(CniError) as err:
        poll_config(conf, "c1.eth0", env, sleep=sleep, clock=lambda: now[0])
    assert err.value.code == 11
    assert now[0] <= 0.05 * 3


def test_names_are_stable_short_and_distinct() -> None:
    env = spec.read_env({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0"})
    assert spec.container_name(env) == "ns/web-0"
    assert spec.port_key("ns/web-0", "eth0") == "ns.web-0.eth0"
    long = spec.port_key("c" * 64, "eth0")
    assert long.startswith("cni-") and len(long) <= 63
    a, b = spec.host_ifname("ns.web-0.eth0"), spec.host_ifname("ns.web-0.net1")
    assert a != b and len(a) == 15 and a == spec.host_ifname("ns.web-0.eth0")


def test_results_per_version() -> None:
    cfg = spec.PortConfig.from_json({"id": "p", "ip": "10.1.0.5", "plen": 24, "gateway": "10.1.0.1", "dns": ["10.1.0.2"],
                                     "mac": "0A:00:00:00:00:05", "bridge": "br0"})
    r = spec.build_result(cfg, "snzabc", "02:00:00:00:00:01", "eth0", "/run/netns/x", 1400)
    v4 = spec.result_json(r, "0.4.0")
    assert v4["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1, "version": "4"}]
    v1 = spec.result_json(r, "1.0.0")
    assert "version" not in v1["ips"][0] and "mtu" not in v1["interfaces"][1]
    assert v1["interfaces"][1] == {"name": "eth0", "mac": "0a:00:00:00:00:05", "sandbox": "/run/netns/x"}
    assert v1["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}] and v1["dns"] == {"nameservers": ["10.1.0.2"]}
    assert spec.result_json(r, "1.1.0")["interfaces"][1]["mtu"] == 1400
    with pytest.raises(CniError) as err:
        spec.PortConfig.from_json({"id": "p", "ip": "nope", "plen": 24, "mac": "x"})
    assert err.value.code == 102
