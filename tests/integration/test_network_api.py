"""The network model's HTTP API on a real bootstrap of a real local cluster (its own ZooKeeper,
two group managers, two local controllers): every endpoint's happy path, every bad object refused
with the field named, deletes while in use refused with the users named, version-checked PUTs
(one of two concurrent ones wins), addresses reserved, listed, released and exhausted, path ids
that are attacks answered 400/404 (never 500), and the ``snooze`` CLI against it.

One cluster for the module (starting one takes seconds); each test uses ids of its own, so each
can fail alone."""

from __future__ import annotations

import copy
import http.client as httpclient
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kazoo.client import KazooClient

from snooze.dev.localcluster import LocalCluster
from snooze.network.model import default_objects
from snooze.network.store import NetworkStore
from tests.support import fast_options, port_range, wait_for

pytestmark = pytest.mark.integration

EXAMPLES: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "lochness" / "examples.json").read_text())
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("netapi"), fast_options(gms=2, lcs=2, base_port=port_range(2 + 2 + 2)))
    try:
        c.up(wait=True, timeout=60)
        yield c
    finally:
        c.down()


@pytest.fixture
def base(cluster: LocalCluster) -> str:
    return cluster.bootstrap_url


@pytest.fixture
def zk(cluster: LocalCluster) -> Iterator[KazooClient]:
    c = KazooClient(hosts=cluster.zookeeper_address, timeout=10)
    c.start(timeout=15)
    try:
        yield c
    finally:
        c.stop()
        c.close()


def call(base: str, method: str, target: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request with http.client: the target is sent exactly as given (no normalisation)."""
    u = urlsplit(base)
    conn = httpclient.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=20)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    if data is not None:
        h["Content-Length"] = str(len(data))
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.endheaders()
        if data is not None:
            conn.send(data)
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(text) if text else None
    finally:
        conn.close()


def ok(base: str, method: str, target: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
    got, _h, answer = call(base, method, target, body, **kw)
    assert got == status, (method, target, got, answer)
    return answer


def refused(base: str, method: str, target: str, body: Any = None, *, status: int, code: str, field: str | None = None,
            **kw: Any) -> dict[str, Any]:
    got, _h, answer = call(base, method, target, body, **kw)
    assert got == status, (method, target, got, answer)
    err = answer["error"]
    assert err["code"] == code, err
    if field is not None:
        assert err.get("field") == field, err
    return dict(err)


def objects(prefix: str) -> dict[str, list[dict[str, Any]]]:
    """The Loch Ness examples with their ids (and the references between them) prefixed, so
    that each test has objects of its own in the shared cluster."""
    ex = copy.deepcopy(EXAMPLES)
    p = prefix
    for kind in ("networks", "subnets", "flavors", "fwgroups", "vlangroups", "guests"):
        for o in ex[kind]:
            o["id"] = p + o["id"]
    for s in ex["subnets"]:
        s["network"] = p + s["network"]
    for g in ex["fwgroups"]:
        for r in g["rules"]:
            if r["group"]:
                r["group"] = p + r["group"]
    return ex


def test_every_kind_round_trips_through_the_api(base: str) -> None:
    ex = objects("rt-")
    for kind in ("networks", "subnets", "flavors", "fwgroups"):
        for o in reversed(ex[kind]) if kind == "fwgroups" else ex[kind]:  # admin before web, which names it
            status, headers, answer = call(base, "POST", f"/{kind}", o)
            assert status == 201, answer
            assert answer == o
            assert headers["etag"] == '"0"'
            assert headers["location"] == f"/{kind}/{o['id']}"
            assert ok(base, "GET", f"/{kind}/{o['id']}") == o
    vlans = [{"tag": 1100 + i, "description": f"v{i}"} for i in range(2)]
    for v in vlans:
        assert ok(base, "POST", "/vlans", v, 201) == v
    assert ok(base, "GET", "/vlans/1100") == vlans[0]
    group = {"id": "rt-front", "description": "front", "metadata": {}, "vlans": [1100, 1101]}
    assert ok(base, "POST", "/vlangroups", group, 201) == group
    listed = ok(base, "GET", "/networks")["networks"]
    assert ex["networks"][0] in listed
    assert [v for v in ok(base, "GET", "/vlans")["vlans"] if v["tag"] in (1100, 1101)] == vlans
    assert {g["id"] for g in ok(base, "GET", "/fwgroups")["fwgroups"]} >= {"rt-web", "rt-admin"}

    # A guest: its address, MAC and bridge are filled in by the store, in one transaction.
    guest = {"id": "rt-vm-1", "flavor": "rt-small", "network": "rt-net1", "subnet": "rt-sub4", "fwgroup": "rt-web",
             "vlangroup": "rt-front"}
    created = ok(base, "POST", "/guests", guest, 201)
    assert created["ip"] == "10.10.0.10" and created["mac"] == "54:56:0a:0a:00:0a", created
    assert ok(base, "GET", "/guests/rt-vm-1") == created
    assert ok(base, "GET", "/subnets/rt-sub4/addresses") == {
        "subnet": "rt-sub4", "addresses": [{"address": "10.10.0.10", "guest": "rt-vm-1"}]}

    # Every kind's PUT, at the version its GET said: the change is kept, the version moves on.
    changes: list[tuple[str, str, dict[str, Any]]] = [
        ("networks", "rt-net1", {"metadata": {"owner": "dev"}}),
        ("subnets", "rt-sub4", {"dns": ["10.10.0.3"], "metadata": {"zone": "a"}}),
        ("flavors", "rt-small", {"vcpus": 2}),
        ("fwgroups", "rt-admin", {"rules": [{"source": "10.0.0.0/8", "group": None, "portStart": 22, "portEnd": 22,
                                             "protocol": "tcp", "action": "allow"}]}),
        ("vlans", "1100", {"description": "renamed"}),
        ("vlangroups", "rt-front", {"vlans": [1101]}),
        ("guests", "rt-vm-1", {"hypervisor": "lc-2", "metadata": {"moved": "yes"}}),  # a migration
    ]
    for kind, key, change in changes:
        status, headers, before = call(base, "GET", f"/{kind}/{key}")
        assert status == 200, before
        version = int(headers["etag"].strip('"'))
        status, headers, after = call(base, "PUT", f"/{kind}/{key}", {**before, **change},
                                      headers={"If-Match": f'"{version}"'})
        assert status == 200, (kind, after)
        assert after == {**before, **change} and headers["etag"] == f'"{version + 1}"'
        assert ok(base, "GET", f"/{kind}/{key}") == after
    assert ok(base, "GET", "/hypervisors/lc-2")["guests"] == ["rt-vm-1"]
    refused(base, "DELETE", "/hypervisors/lc-2", status=405, code="METHOD_NOT_ALLOWED")

    # Deletes in order of use: each one's users first (a guest's at its version, when given).
    refused(base, "DELETE", "/guests/rt-vm-1", headers={"If-Match": '"0"'}, status=409, code="CONFLICT")
    assert ok(base, "DELETE", "/guests/rt-vm-1", headers={"If-Match": '"1"'}) is True
    refused(base, "GET", "/guests/rt-vm-1", status=404, code="NETWORK_OBJECT_NOT_FOUND", field="id")
    for kind, key in (("vlangroups", "rt-front"), ("vlans", "1100"), ("vlans", "1101"), ("subnets", "rt-sub4"),
                      ("subnets", "rt-sub6"), ("networks", "rt-net1"), ("flavors", "rt-small"), ("fwgroups", "rt-web"),
                      ("fwgroups", "rt-admin")):
        assert ok(base, "DELETE", f"/{kind}/{key}") is True, (kind, key)
        refused(base, "GET", f"/{kind}/{key}", status=404, code="NETWORK_OBJECT_NOT_FOUND")
    assert ok(base, "GET", "/subnets/rt-sub4/addresses", status=404) is not None


def test_the_default_network_shows_when_created(base: str) -> None:
    network, subnet = default_objects("10.77.0.0/24")
    # Another helper makes the leader create these; here the test creates them itself (the
    # cluster's own may exist already: then it is the one shown).
    for kind, obj in (("networks", network), ("subnets", subnet)):
        status, _h, answer = call(base, "POST", f"/{kind}", obj.to_json())
        assert status in (201, 409), answer
    shown = ok(base, "GET", "/subnets/default")
    assert shown["network"] == "default" and shown["id"] == "default"
    assert "default" in {n["id"] for n in ok(base, "GET", "/networks")["networks"]}


def test_bad_objects_are_refused_naming_the_field(base: str) -> None:
    ok(base, "POST", "/networks", {"id": "bad-net"}, 201)
    ok(base, "POST", "/subnets", {"id": "bad-a", "network": "bad-net", "cidr": "10.20.0.0/24"}, 201)
    cases: list[tuple[str, Any, str, str]] = [
        ("subnets", {"id": "bad-b", "network": "bad-net", "cidr": "10.20.0.128/25"}, "INVALID_NETWORK_OBJECT", "cidr"),
        ("subnets", {"id": "bad-c", "network": "bad-net", "cidr": "10.21.0.0/24", "start": "10.22.0.5"},
         "INVALID_NETWORK_OBJECT", "start"),
        ("subnets", {"id": "bad-c", "network": "bad-net", "cidr": "10.21.0.0/24", "gateway": "10.21.0.9",
                     "start": "10.21.0.2", "end": "10.21.0.100"}, "INVALID_NETWORK_OBJECT", "gateway"),
        ("subnets", {"id": "bad-c", "network": "nowhere", "cidr": "10.21.0.0/24"}, "UNKNOWN_REFERENCE", "network"),
        ("subnets", {"id": "bad-c", "network": "bad-net", "cidr": "10.21.0.1/24"}, "INVALID_NETWORK_OBJECT", "cidr"),
        ("vlans", {"tag": 4095}, "INVALID_NETWORK_OBJECT", "tag"),
        ("vlans", {"tag": "ten"}, "INVALID_NETWORK_OBJECT", "tag"),
        ("vlangroups", {"id": "bad-g", "vlans": [3999]}, "UNKNOWN_REFERENCE", "vlans[0]"),
        ("flavors", {"id": "bad-f", "vcpus": 0, "memory": 1024}, "INVALID_NETWORK_OBJECT", "vcpus"),
        ("flavors", {"id": "bad-f", "vcpus": 1, "memory": "lots"}, "INVALID_NETWORK_OBJECT", "memory"),
        ("fwgroups", {"id": "bad-w", "rules": [{"protocol": "tcp", "portStart": 90, "portEnd": 80}]},
         "INVALID_NETWORK_OBJECT", "rules[0].portEnd"),
        ("fwgroups", {"id": "bad-w", "rules": [{"group": "nobody"}]}, "UNKNOWN_REFERENCE", "rules[0].group"),
        ("guests", {"id": "bad-vm", "flavor": "nothing", "network": "bad-net"}, "UNKNOWN_REFERENCE", "flavor"),
        ("guests", {"id": "bad-vm", "flavor": "nothing", "network": "bad-net", "ip": "10.20.0.7"},
         "INVALID_NETWORK_OBJECT", "ip"),
        ("guests", {"id": "bad-vm", "flavor": "nothing", "network": "bad-net", "mac": "54:56:zz:00:00:01"},
         "INVALID_NETWORK_OBJECT", "mac"),
        ("guests", {"id": "bad-vm", "flavor": "nothing", "network": "nowhere"}, "UNKNOWN_REFERENCE", "network"),
        ("networks", {"id": "bad-x", "colour": "red"}, "INVALID_NETWORK_OBJECT", "colour"),
        ("networks", {"id": "../etc"}, "INVALID_NETWORK_OBJECT", "id"),
        ("networks", ["not", "an", "object"], "INVALID_NETWORK_OBJECT", "network"),
    ]
    for kind, body, code, field in cases:
        refused(base, "POST", f"/{kind}", body, status=400, code=code, field=field)
    refused(base, "POST", "/networks", raw=b"{not json", status=400, code="MALFORMED_JSON", field="body")
    refused(base, "POST", "/networks", raw=b"", status=400, code="EMPTY_BODY", field="body")
    refused(base, "POST", "/networks", raw=b'{"id": "' + b"x" * (600 * 1024) + b'"}', status=413, code="BODY_TOO_LARGE",
            field="body")
    refused(base, "POST", "/networks", {"id": "bad-net"}, status=409, code="NETWORK_OBJECT_EXISTS", field="id")
    # A field that may not change.
    got, headers, _a = call(base, "GET", "/subnets/bad-a")
    refused(base, "PUT", "/subnets/bad-a", {"id": "bad-a", "network": "bad-net", "cidr": "10.30.0.0/24"},
            headers={"If-Match": headers["etag"]}, status=400, code="INVALID_NETWORK_OBJECT", field="cidr")
    # Nothing of the refused ones was written.
    assert {s["id"] for s in ok(base, "GET", "/subnets")["subnets"]} & {"bad-b", "bad-c"} == set()
    assert ok(base, "GET", "/networks/bad-x", status=404)


def test_deletes_while_in_use_name_the_users(base: str) -> None:
    p = "use-"
    ok(base, "POST", "/networks", {"id": p + "net"}, 201)
    ok(base, "POST", "/subnets", {"id": p + "sub", "network": p + "net", "cidr": "10.40.0.0/24"}, 201)
    ok(base, "POST", "/flavors", {"id": p + "flv", "vcpus": 1, "memory": 524288}, 201)
    ok(base, "POST", "/fwgroups", {"id": p + "adm", "rules": []}, 201)
    ok(base, "POST", "/fwgroups", {"id": p + "web", "rules": [{"group": p + "adm", "portStart": 22, "portEnd": 22}]}, 201)
    ok(base, "POST", "/vlans", {"tag": 1200}, 201)
    ok(base, "POST", "/vlangroups", {"id": p + "vg", "vlans": [1200]}, 201)
    ok(base, "POST", "/guests", {"id": p + "vm", "flavor": p + "flv", "network": p + "net", "fwgroup": p + "web",
                                 "vlangroup": p + "vg"}, 201)
    expect = {
        "/networks/use-net": ["subnet:use-sub"],
        "/subnets/use-sub": ["guest:use-vm"],
        "/flavors/use-flv": ["guest:use-vm"],
        "/fwgroups/use-web": ["guest:use-vm"],
        "/fwgroups/use-adm": ["fwgroup:use-web"],
        "/vlans/1200": ["vlangroup:use-vg"],
        "/vlangroups/use-vg": ["guest:use-vm"],
    }
    for target, users in expect.items():
        err = refused(base, "DELETE", target, status=409, code="NETWORK_OBJECT_IN_USE")
        assert err["users"][: len(users)] == users, (target, err)
        for user in users:
            assert user in err["message"]
    # A bare reservation keeps a subnet in use too, named by its address.
    ok(base, "DELETE", "/guests/use-vm")
    ok(base, "POST", "/subnets/use-sub/addresses", {"guest": "someone"}, 201)
    err = refused(base, "DELETE", "/subnets/use-sub", status=409, code="NETWORK_OBJECT_IN_USE")
    assert err["users"] == ["address 10.40.0.1 (guest someone)"], err
    ok(base, "DELETE", "/subnets/use-sub/addresses/10.40.0.1")
    for target in ("/subnets/use-sub", "/networks/use-net", "/vlangroups/use-vg", "/vlans/1200", "/fwgroups/use-web",
                   "/fwgroups/use-adm", "/flavors/use-flv"):
        ok(base, "DELETE", target)


def test_put_is_version_checked_and_one_of_two_concurrent_puts_wins(base: str) -> None:
    ok(base, "POST", "/flavors", {"id": "ver-f", "vcpus": 1, "memory": 1024}, 201)
    status, headers, flavor = call(base, "GET", "/flavors/ver-f")
    assert headers["etag"] == '"0"'
    # No version: refused, not a blind overwrite.
    refused(base, "PUT", "/flavors/ver-f", {**flavor, "vcpus": 2}, status=428, code="VERSION_REQUIRED", field="If-Match")
    refused(base, "PUT", "/flavors/ver-f", {**flavor, "vcpus": 2}, headers={"If-Match": "soon"}, status=400,
            code="BAD_REQUEST", field="If-Match")
    refused(base, "PUT", "/flavors/ver-f", {**flavor, "id": "other"}, headers={"If-Match": '"0"'}, status=400,
            code="BAD_REQUEST", field="id")
    # Two writers read version 0; both PUT at once: exactly one wins.
    results: list[tuple[int, Any]] = []
    barrier = threading.Barrier(2)

    def put(vcpus: int) -> None:
        barrier.wait()
        got, _h, answer = call(base, "PUT", "/flavors/ver-f", {**flavor, "vcpus": vcpus}, headers={"If-Match": '"0"'})
        results.append((got, answer))

    threads = [threading.Thread(target=put, args=(n,)) for n in (3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for s, _a in results)
    assert statuses == [200, 409], results
    winner = next(a for s, a in results if s == 200)
    loser = next(a for s, a in results if s == 409)
    assert loser["error"]["code"] == "CONFLICT", loser
    status, headers, now = call(base, "GET", "/flavors/ver-f")
    assert now == winner and headers["etag"] == '"1"'
    # ?version= works too; the id may be left out of the body.
    body = {k: v for k, v in now.items() if k != "id"}
    assert ok(base, "PUT", "/flavors/ver-f?version=1", {**body, "vcpus": 8})["vcpus"] == 8
    refused(base, "DELETE", "/flavors/ver-f", headers={"If-Match": '"1"'}, status=409, code="CONFLICT")
    ok(base, "DELETE", "/flavors/ver-f", headers={"If-Match": '"2"'})


def test_addresses_reserve_list_release_and_exhaustion(base: str, zk: KazooClient) -> None:
    ok(base, "POST", "/networks", {"id": "adr-net"}, 201)
    ok(base, "POST", "/subnets", {"id": "adr-sub", "network": "adr-net", "cidr": "10.50.0.0/29",
                                  "gateway": "10.50.0.1"}, 201)  # 10.50.0.2 - .6: five addresses
    got = [ok(base, "POST", "/subnets/adr-sub/addresses", {"guest": f"g{i}"}, 201) for i in range(5)]
    assert [g["address"] for g in got] == [f"10.50.0.{i}" for i in range(2, 7)]
    assert got[0] == {"address": "10.50.0.2", "subnet": "adr-sub", "guest": "g0"}
    err = refused(base, "POST", "/subnets/adr-sub/addresses", {"guest": "g5"}, status=409, code="NO_FREE_IP_ADDRESS")
    assert "adr-sub" in err["message"]
    listing = ok(base, "GET", "/subnets/adr-sub/addresses")["addresses"]
    assert listing == [{"address": f"10.50.0.{i + 2}", "guest": f"g{i}"} for i in range(5)]
    ok(base, "DELETE", "/subnets/adr-sub/addresses/10.50.0.4")
    refused(base, "DELETE", "/subnets/adr-sub/addresses/10.50.0.4", status=404, code="NETWORK_OBJECT_NOT_FOUND", field="ip")
    assert ok(base, "POST", "/subnets/adr-sub/addresses", {"guest": "g6"}, 201)["address"] == "10.50.0.4"
    # Bad reservations and releases.
    refused(base, "POST", "/subnets/adr-sub/addresses", {"guest": "a/b"}, status=400, code="INVALID_ID", field="guest")
    refused(base, "POST", "/subnets/adr-sub/addresses", {}, status=400, code="BAD_REQUEST", field="guest")
    refused(base, "POST", "/subnets/adr-sub/addresses", {"guest": "x", "ip": "10.50.0.9"}, status=400,
            code="BAD_REQUEST", field="ip")
    refused(base, "POST", "/subnets/nope/addresses", {"guest": "x"}, status=404, code="NETWORK_OBJECT_NOT_FOUND")
    refused(base, "DELETE", "/subnets/adr-sub/addresses/10.50.0.300", status=400, code="BAD_REQUEST", field="ip")
    refused(base, "DELETE", "/subnets/adr-sub/addresses/10.99.0.1", status=404, code="NETWORK_OBJECT_NOT_FOUND", field="ip")
    # A guest's address is released with the guest, never alone.
    ok(base, "POST", "/flavors", {"id": "adr-f", "vcpus": 1, "memory": 1024}, 201)
    for ip in ("10.50.0.5", "10.50.0.6"):
        ok(base, "DELETE", f"/subnets/adr-sub/addresses/{ip}")
    vm = ok(base, "POST", "/guests", {"id": "adr-vm", "flavor": "adr-f", "network": "adr-net"}, 201)
    err = refused(base, "DELETE", f"/subnets/adr-sub/addresses/{vm['ip']}", status=409, code="NETWORK_OBJECT_IN_USE")
    assert err["users"] == ["guest:adr-vm"]
    ok(base, "DELETE", "/guests/adr-vm")
    store = NetworkStore(zk, "/snooze")
    assert store.ipam.audit("adr-sub") == {k: [] for k in store.ipam.audit("adr-sub")}


def test_hypervisors_are_the_local_controllers(base: str) -> None:
    hvs = wait_for(lambda: [h for h in ok(base, "GET", "/hypervisors")["hypervisors"] if h["alive"]], 20, "two hypervisors")
    assert sorted(h["id"] for h in hvs)[:2] == ["lc-1", "lc-2"]
    lc1 = next(h for h in hvs if h["id"] == "lc-1")
    assert lc1["ip"] == "127.0.0.1" and lc1["total_resources"]["cpu"] > 0, lc1
    ok(base, "POST", "/networks", {"id": "hv-net"}, 201)
    ok(base, "POST", "/subnets", {"id": "hv-sub", "network": "hv-net", "cidr": "10.60.0.0/24"}, 201)
    served = ok(base, "PUT", "/hypervisors/lc-1/subnets/hv-sub", {"bridge": "br-hv"})
    assert served["subnets"]["hv-sub"] == "br-hv"
    shown = ok(base, "GET", "/hypervisors/lc-1")
    assert shown["subnets"]["hv-sub"] == "br-hv" and shown["alive"] is True and shown["guests"] == []
    # A guest on a host that does not serve its subnet is refused; on the one that does, it gets its bridge.
    ok(base, "POST", "/flavors", {"id": "hv-f", "vcpus": 1, "memory": 1024}, 201)
    refused(base, "POST", "/guests", {"id": "hv-vm", "flavor": "hv-f", "network": "hv-net", "subnet": "hv-sub",
                                      "hypervisor": "lc-2"}, status=400, code="INVALID_NETWORK_OBJECT", field="subnet")
    vm = ok(base, "POST", "/guests", {"id": "hv-vm", "flavor": "hv-f", "network": "hv-net", "hypervisor": "lc-1"}, 201)
    assert vm["bridge"] == "br-hv" and vm["subnet"] == "hv-sub"
    assert ok(base, "GET", "/hypervisors/lc-1")["guests"] == ["hv-vm"]
    refused(base, "DELETE", "/subnets/hv-sub", status=409, code="NETWORK_OBJECT_IN_USE")
    # Bad serving requests.
    refused(base, "PUT", "/hypervisors/lc-1/subnets/hv-sub", {"bridge": "bad bridge!"}, status=400,
            code="INVALID_NETWORK_OBJECT", field="bridge")
    refused(base, "PUT", "/hypervisors/lc-1/subnets/hv-sub", {"bridge": "br0", "mtu": 9000}, status=400,
            code="BAD_REQUEST", field="mtu")
    refused(base, "PUT", "/hypervisors/lc-1/subnets/none", {"bridge": "br0"}, status=404,
            code="NETWORK_OBJECT_NOT_FOUND", field="subnet")
    refused(base, "PUT", "/hypervisors/lc-9/subnets/hv-sub", {"bridge": "br0"}, status=404,
            code="NETWORK_OBJECT_NOT_FOUND", field="id")
    refused(base, "GET", "/hypervisors/lc-9", status=404, code="NETWORK_OBJECT_NOT_FOUND", field="id")
    refused(base, "DELETE", "/hypervisors/lc-2/subnets/hv-sub", status=404, code="NETWORK_OBJECT_NOT_FOUND",
            field="subnet")
    ok(base, "DELETE", "/guests/hv-vm")
    unserved = ok(base, "DELETE", "/hypervisors/lc-1/subnets/hv-sub")
    assert "hv-sub" not in unserved["subnets"]
    ok(base, "DELETE", "/subnets/hv-sub")


@pytest.mark.parametrize("target", [
    "/networks/..", "/networks/%2e%2e", "/networks/a%2Fb", "/networks/a%00b", "/networks/a%0Ab", "/networks/" + "a" * 64,
    "/networks/%C3%A9t%C3%A9", "/networks/-lead", "/vlans/0", "/vlans/4095", "/vlans/01x", "/vlans/%31%30%30%30%30",
    "/subnets/%2e%2e/addresses", "/hypervisors/%2e%2e", "/hypervisors/lc-1/subnets/%2e%2e", "/guests/a%20b",
])
def test_path_ids_that_are_attacks_are_refused(base: str, target: str) -> None:
    for method, body in (("GET", None), ("PUT", {"id": "x"}), ("DELETE", None)):
        status, _h, answer = call(base, method, target, body, headers={"If-Match": '"0"'})
        assert status in (400, 404, 405), (method, target, status, answer)
        if answer is not None:
            assert answer["error"]["code"] in ("INVALID_ID", "NOT_FOUND", "METHOD_NOT_ALLOWED",
                                               "NETWORK_OBJECT_NOT_FOUND"), answer


def test_the_cli_against_the_bootstrap(base: str) -> None:
    def snooze(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "snooze.cli", "--url", base, *args], capture_output=True, text=True,
                              timeout=60, cwd=REPOSITORY)

    done = snooze("network", "create", "cli-net")
    assert done.returncode == 0, done.stderr
    done = snooze("subnet", "create", "cli-sub", "--network", "cli-net", "--cidr", "10.70.0.0/24", "--gateway", "10.70.0.1")
    assert done.returncode == 0, done.stderr
    done = snooze("flavor", "create", "cli-f", "--vcpus", "2", "--memory", "1048576")
    assert done.returncode == 0, done.stderr
    done = snooze("vlan", "create", "1300", "--description", "cli vlan")
    assert done.returncode == 0, done.stderr
    done = snooze("subnet", "list")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:6] == ["ID", "NETWORK", "CIDR", "GATEWAY", "START", "END"]
    assert any(r.split()[:6] == ["cli-sub", "cli-net", "10.70.0.0/24", "10.70.0.1", "10.70.0.2", "10.70.0.254"] for r in rows)
    done = snooze("flavor", "show", "cli-f")
    assert done.returncode == 0 and "1.0 GiB" in done.stdout, done
    done = snooze("network", "delete", "cli-net")
    assert done.returncode == 1 and "NETWORK_OBJECT_IN_USE" in done.stderr and "subnet:cli-sub" in done.stderr, done
    for kind, key in (("subnet", "cli-sub"), ("network", "cli-net"), ("flavor", "cli-f"), ("vlan", "1300")):
        done = snooze(kind, "delete", key)
        assert done.returncode == 0, (kind, done.stderr)
    done = snooze("vlan", "show", "1300")
    assert done.returncode == 1 and "NETWORK_OBJECT_NOT_FOUND" in done.stderr
