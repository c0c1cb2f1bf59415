"""A local controller runs the host's side of the network model: its firewall daemon keeps
``table inet snooze`` of its own network namespace equal to the guests placed on it in
ZooKeeper, and its CNI agent answers on 127.0.0.1 of that namespace, where snooze-cni run with
the ``cniConfig`` of cluster.json gives a container (a namespace the test makes) an address of
the default network, and DEL releases it.

A ``--netns`` local cluster (each process in its own namespace): guests are written through
the bootstrap's ``/guests`` API, the table is read with ``nft -j`` inside the local
controller's namespace. Nothing is created or read in the root namespace's ruleset.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localcontroller.cni.runtime import run_plugin
from localcontroller.firewall import nft
from snooze.dev import netns
from snooze.dev.localcluster import LocalCluster
from tests.support import fast_options, get, http, port_range, wait_for

pytestmark = pytest.mark.integration

AGENT_PORT = 9091
PLUGIN = str(Path(sys.executable).with_name("snooze-cni"))


@pytest.fixture(autouse=True)
def needs_netns_and_nft() -> None:
    reason = netns.available() or nft.available()
    if reason:
        pytest.skip(reason)


def guest_addresses(ns: str) -> dict[str, str] | None:
    """Guest address -> the chain its packets go to, from ``table inet snooze`` in ``ns``;
    None while the table does not exist."""
    done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "snooze"],
                          capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        return None
    out: dict[str, str] = {}
    for item in json.loads(done.stdout)["nftables"]:
        m = item.get("map")
        if m and m.get("name") in ("to_guest4", "to_guest6"):
            for addr, verdict in m.get("elem") or []:
                out[str(addr)] = verdict["goto"]["target"]
    return out


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = http("POST", url, json.dumps(body), timeout=10)
    assert status in (200, 201), (url, status, answer)
    assert isinstance(answer, dict)
    return answer


def test_the_local_controller_applies_its_guests_firewall_and_serves_the_cni_agent(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", fast_options(
        netns=True, gms=2, lcs=1, base_port=port_range(1),
        cni=True, extra={"localcontroller.firewall": "on"}))
    try:
        cluster.up(wait=True, timeout=60)
        lc = next(p for p in cluster.manifest()["processes"] if p["role"] == "localcontroller")
        ns = lc["netns"]
        b = cluster.bootstrap_url
        # No guest yet: the daemon has made the (empty) table in the LC's namespace.
        wait_for(lambda: guest_addresses(ns) is not None, 20, "table inet snooze in the LC's namespace")
        assert guest_addresses(ns) == {}

        post(b + "/flavors", {"id": "small", "vcpus": 1, "memory": 65536})
        post(b + "/fwgroups", {"id": "web", "rules": [{"portStart": 8080, "portEnd": 8080, "protocol": "tcp"}]})
        g1 = post(b + "/guests", {"id": "g1", "flavor": "small", "network": "default", "fwgroup": "web",
                                  "hypervisor": lc["id"]})
        g2 = post(b + "/guests", {"id": "g2", "flavor": "small", "network": "default"})  # placed nowhere
        seen = wait_for(lambda: (lambda m: m if m and g1["ip"] in m else None)(guest_addresses(ns)), 10,
                        "g1's address in the LC's table")
        assert seen[g1["ip"]] != "no_group", "g1 goes to its group's chain"
        assert g2["ip"] not in seen, "a guest placed elsewhere is not this host's to filter"

        status, _ = http("DELETE", b + "/guests/g1", timeout=10)
        assert status in (200, 204)
        wait_for(lambda: (lambda m: m is not None and g1["ip"] not in m)(guest_addresses(ns)), 10,
                 "g1's address gone from the table")

        # The CNI agent listens on 127.0.0.1 of the LC's namespace (never in the root one), and
        # cluster.json gives its URL and a network configuration list snooze-cni runs with as is.
        assert lc["cniAgent"] == f"http://127.0.0.1:{AGENT_PORT}"

        def agent_status() -> dict[str, Any]:
            with urllib.request.urlopen(lc["cniAgent"] + "/status", timeout=5) as r:
                return dict(json.load(r))

        assert netns.call_in(ns, agent_status).get("ok") is True
        conflist = json.loads(Path(lc["cniConfig"]).read_text())
        conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        container = f"cnilc{secrets.token_hex(3)}"
        netns.ip("netns", "add", container)
        try:
            def cni(command: str) -> Any:
                return asyncio.run(run_plugin(PLUGIN, command, conf, container_id="c1", netns=f"/run/netns/{container}",
                                              prefix=["ip", "netns", "exec", ns], path=[str(Path(PLUGIN).parent)]))

            added = cni("ADD")
            assert added.ok, (added.output, added.stderr)
            address = added.output["ips"][0]["address"].split("/")[0]
            guests = get(b + "/guests")["guests"]
            mine = [g for g in guests if g.get("ip") == address]
            assert len(mine) == 1 and mine[0]["hypervisor"] == lc["id"], mine
            assert address in netns.ip("-o", "addr", "show", "dev", "eth0", netns=container)
            deleted = cni("DEL")
            assert deleted.ok, (deleted.output, deleted.stderr)
            assert all(g.get("ip") != address for g in get(b + "/guests")["guests"]), "DEL released the address"
        finally:
            netns.ip("netns", "del", container)
        log = Path(lc["log"]).read_text()
        assert "firewall: on ([localcontroller] firewall = on)" in log

        # /metrics says so too (read inside the LC's namespace, where its address is local).
        assert netns.route_device(ns, lc["address"]) == "lo"

        def scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://{lc['address']}:{lc['port']}/metrics", timeout=5) as r:
                text = r.read().decode()
            return {s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
                    for f in text_string_to_metric_families(text) for s in f.samples}

        seen_metrics = netns.call_in(ns, scrape)
        assert seen_metrics["snooze_firewall_running"] == 1.0
        assert seen_metrics["snooze_firewall_applies_total"] >= 3, "the empty table, g1 added, g1 removed"
        assert seen_metrics["snooze_firewall_sync_failures"] == 0.0
        assert "snooze_cni_ports[('state', 'known')]" in seen_metrics
    finally:
        cluster.down()
