"""Real guests on plugged networks (issue 13): a QEMU local cluster with ``--vif`` (each host's
VM bridge made by its VIF plugin and joined to the others' by an uplink to the guests' network
in the fabric namespace, which holds the gateway). Two guests of ``snooze-tiny`` on two hosts
answer from the guests' network, reach each other (ping and HTTP, asked of one guest through
its CGI programs), and a destroyed guest's tap is gone from its host."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from groupmanager.manager.vifs import tap_name
from snooze.client import SyncSnoozeClient
from snooze.dev import guestimage, netns
from snooze.dev.localcluster import GUEST_IMAGE, LocalCluster, guest_answer
from tests.integration.test_qemu_migration import _require_qemu
from tests.netlab import Pinger
from tests.support import fast_options, http, port_range, response, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["linux_bridge", "ovs"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    _require_qemu()
    image = guestimage.ensure_image()
    c = LocalCluster(tmp_path_factory.mktemp("vifguests") / "cluster",
                     fast_options(gms=2, lcs=2, hypervisor="qemu", vif=request.param, guest_image=False,
                                  base_port=port_range(1)))
    try:
        c.up(wait=True, timeout=120)
        with SyncSnoozeClient(c.bootstrap_url) as api:
            api.upload_image(image, GUEST_IMAGE)
        yield c
    finally:
        c.down()


def ask(fabric: str, guest: str, path: str) -> str:
    """``GET http://GUEST/PATH`` from the fabric namespace (after checking the route is the
    guests' network), the guest's answer."""
    assert netns.route_device(fabric, guest) == netns.GUEST_BRIDGE, "sent only on the guests' network"

    def get() -> str:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://{guest}/{path}", timeout=15) as r:
            return str(r.read().decode())

    return netns.call_in(fabric, get)


def nuage_vm(c: LocalCluster, lc_id: str, name: str) -> tuple[int, int, int, int] | None:
    """(event, event_type, state, reason) of ``name``'s Nuage_VM_Table row on a host, if any."""
    out = subprocess.run(["ovsdb-client", "-f", "json", "dump", c.process(lc_id)["ovsdb"], "Open_vSwitch", "Nuage_VM_Table"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    dump = json.loads(out)
    for row in dump["data"]:
        r = dict(zip(dump["headings"], row, strict=True))
        if r["vm_name"] == name:
            return (r["event"], r["event_type"], r["state"], r["reason"])
    return None


def test_guests_on_two_hosts_reach_each_other_over_the_plugged_network(cluster: LocalCluster) -> None:
    manifest = json.loads(cluster.manifest_path.read_text())
    fabric = manifest["guestNetwork"]["netns"]
    names = {"lc-1": "near", "lc-2": "far"}
    templates = [{"name": n, "vcpus": 1, "memory": 131072, "imageId": GUEST_IMAGE, "hostId": lc} for lc, n in names.items()]
    status, task = http("POST", cluster.bootstrap_url + "/bootstrap?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": templates}))
    assert status == 200, task
    metas = {m["virtualMachineId"]: m for m in response(cluster, str(task), timeout=120)["virtualMachineMetaData"]}
    assert {m["status"] for m in metas.values()} == {"RUNNING"}, metas
    address = {n: metas[n]["ipAddress"] for n in names.values()}
    started = time.monotonic()
    for name in names.values():
        # Each answers on the guests' network, from the fabric, wherever it runs.
        assert wait_for(lambda name=name: guest_answer(fabric, address[name], timeout=1.0), 180,
                        f"{name} answering") == name + "\n"
    print(f"\n[figure] {cluster.options.vif}: both guests answering {time.monotonic() - started:.1f} s after RUNNING")
    assert ask(fabric, address["near"], f"cgi-bin/ping?{address['far']}").strip() == f"reached {address['far']}"
    assert ask(fabric, address["near"], f"cgi-bin/fetch?{address['far']}").strip() == "far"
    assert ask(fabric, address["far"], f"cgi-bin/fetch?{address['near']}").strip() == "near"

    # A live migration of "near" to the other host, pinged every 10 ms from the guests' network:
    # it keeps its address, its tap (and with ovs its Nuage rows) move with it.
    with Pinger(fabric, address["near"], netns.GUEST_BRIDGE) as ping:
        time.sleep(1.0)
        moved_at = time.monotonic()
        status, body = http("POST", cluster.bootstrap_url + "/bootstrap?migrateVirtualMachine",
                            json.dumps({"virtualMachineId": "near", "localControllerId": "lc-2"}), timeout=300)
        assert status == 200 and body is True, body
        done_at = time.monotonic()
        time.sleep(2.0)
    gap = ping.longest_gap(since=moved_at - 1.0)
    print(f"[figure] {cluster.options.vif}: live migration in {done_at - moved_at:.1f} s, longest ping gap {gap * 1000:.0f} ms "
          f"({len(ping.replies)} replies to {ping.sent} requests)")
    assert ping.replies and ping.replies[-1] > done_at, "the guest answers pings after its migration"
    assert gap < 30.0
    assert tap_name("near") in netns.ip("-br", "link", netns=cluster.process("lc-2")["netns"])
    wait_for(lambda: tap_name("near") not in netns.ip("-br", "link", netns=cluster.process("lc-1")["netns"]), 30,
             "near's tap removed from its former host")
    assert ask(fabric, address["far"], f"cgi-bin/fetch?{address['near']}").strip() == "near"
    if cluster.options.vif == "ovs":
        # Started/Migrated, then (QEMU resumes the guest there) Resumed/Migrated: Running/Migrated.
        row = wait_for(lambda: nuage_vm(cluster, "lc-2", "near"), 30, "near's Nuage row at its new host")
        assert row[:2] in ((2, 1), (4, 1)) and row[2:] == (1, 2), row
        wait_for(lambda: nuage_vm(cluster, "lc-1", "near") is None, 30, "near's Nuage row gone from its former host")

    # Destroyed: its tap leaves its host; the other guest still answers.
    host = cluster.process("lc-2")["netns"]
    assert tap_name("far") in netns.ip("-br", "link", netns=host)
    status, body = http("POST", cluster.bootstrap_url + "/bootstrap?destroyVirtualMachine", '"far"')
    assert status == 200, body
    wait_for(lambda: tap_name("far") not in netns.ip("-br", "link", netns=host), 30, "far's tap removed")
    assert ask(fabric, address["near"], f"cgi-bin/ping?{address['far']}").strip() == f"unreachable {address['far']}"
    assert guest_answer(fabric, address["near"], timeout=2.0) == "near\n"
