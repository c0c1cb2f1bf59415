"""Real guests on plugged networks (issue 13): a QEMU local cluster with ``--vif`` (each host's
VM bridge made by its VIF plugin and joined to the others' by an uplink to the guests' network
in the fabric namespace, which holds the gateway). Two guests of ``snooze-tiny`` on two hosts
answer from the guests' network, reach each other (ping and HTTP, asked of one guest through
its CGI programs), and a destroyed guest's tap is gone from its host."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
    # With ovs, lc-2 is pinned to older VIF objects, as during a rolling upgrade: its group
    # manager back-levels what it sends there.
    pins = {"lc-2": {"localcontroller.vif_object_versions": OLD}} if request.param == "ovs" else {}
    c = LocalCluster(tmp_path_factory.mktemp("vifguests") / "cluster",
                     fast_options(gms=2, lcs=2, hypervisor="qemu", vif=request.param, guest_image=False,
                                  base_port=port_range(1), lc_extra=pins))
    try:
        c.up(wait=True, timeout=120)
        with SyncSnoozeClient(c.bootstrap_url) as api:
            api.upload_image(image, GUEST_IMAGE)
        yield c
    finally:
        c.down()


OLD = {"VIFPortProfileOpenVSwitch": "1.0", "Network": "1.0"}


def virsh(c: LocalCluster, lc_id: str, *args: str) -> str:
    done = subprocess.run(["virsh", "-c", c.process(lc_id)["hypervisorUri"], *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def vif_in_domain(c: LocalCluster, lc_id: str, name: str) -> dict[str, Any]:
    """The VIF a host keeps in a domain's metadata: as its group manager sent it."""
    root = ET.fromstring(virsh(c, lc_id, "dumpxml", name))
    text = root.findtext("metadata/{https://snooze.dev/xmlns/vif/1}vif")
    assert text, "the domain keeps its VIF"
    return dict(json.loads(text))


def ask(fabric: str, guest: str, path: str, timeout: float = 15) -> str:
    """``GET http://GUEST/PATH`` from the fabric namespace (after checking the route is the
    guests' network), the guest's answer."""
    assert netns.route_device(fabric, guest) == netns.GUEST_BRIDGE, "sent only on the guests' network"

    def get() -> str:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://{guest}/{path}", timeout=timeout) as r:
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

    # A live migration of "near" to the other host while "far" (on that other host) pings it
    # every 10 ms for 15 s, and the guests' network too: it keeps its address, its tap (and with
    # ovs its Nuage rows) move with it.
    with ThreadPoolExecutor(1) as pool, Pinger(fabric, address["near"], netns.GUEST_BRIDGE) as ping:
        from_far = pool.submit(ask, fabric, address["far"], f"cgi-bin/pinger?{address['near']}", 40)
        time.sleep(2.0)
        moved_at = time.monotonic()
        status, body = http("POST", cluster.bootstrap_url + "/bootstrap?migrateVirtualMachine",
                            json.dumps({"virtualMachineId": "near", "localControllerId": "lc-2"}), timeout=300)
        assert status == 200 and body is True, body
        done_at = time.monotonic()
        pinged = from_far.result()
        seqs = [int(m) for m in re.findall(r"seq=(\d+)", pinged)]
        # ping sends every 10 ms for 15 s, but a guest under TCG on a loaded machine sends
        # fewer: a seq is 15 s / (requests sent) into the run (CI: 1,235 was 14.7 s, not 12.4).
        sent = re.search(r"(\d+) packets transmitted", pinged)
        per_seq = 15.0 / int(sent.group(1)) if sent and int(sent.group(1)) > 0 else 0.01
    gap = ping.longest_gap(since=moved_at - 1.0)
    guest_gap = max((b - a for a, b in zip(seqs, seqs[1:], strict=False)), default=0) * 0.01
    print(f"[figure] {cluster.options.vif}: live migration in {done_at - moved_at:.1f} s; longest ping gap seen by the "
          f"guest on the other host {guest_gap * 1000:.0f} ms ({len(seqs)} replies in 15 s), from the guests' network "
          f"{gap * 1000:.0f} ms ({len(ping.replies)} replies to {ping.sent} requests)")
    assert len(seqs) > 300 and seqs[-1] * per_seq > done_at - moved_at + 2.0, (
        f"far's pings reached near after it moved: last reply seq {seqs[-1] if seqs else None} "
        f"({per_seq * 1000:.1f} ms each), migration done {done_at - moved_at + 2.0:.1f} s into the pinging")
    assert ping.replies and ping.replies[-1] > done_at, "the guest answers pings after its migration"
    assert gap < 30.0 and guest_gap < 30.0
    assert tap_name("near") in netns.ip("-br", "link", netns=cluster.process("lc-2")["netns"])
    wait_for(lambda: tap_name("near") not in netns.ip("-br", "link", netns=cluster.process("lc-1")["netns"]), 30,
             "near's tap removed from its former host")
    assert ask(fabric, address["far"], f"cgi-bin/fetch?{address['near']}").strip() == "near"
    if cluster.options.vif == "ovs":
        # Started/Migrated, then (QEMU resumes the guest there) Resumed/Migrated: Running/Migrated.
        row = wait_for(lambda: nuage_vm(cluster, "lc-2", "near"), 30, "near's Nuage row at its new host")
        assert row[:2] in ((2, 1), (4, 1)) and row[2:] == (1, 2), row
        wait_for(lambda: nuage_vm(cluster, "lc-1", "near") is None, 30, "near's Nuage row gone from its former host")

    if cluster.options.vif == "ovs":
        # lc-2 claimed the old versions: far's VIF came back-levelled, and far booted and
        # answered all the same; near's (sent to lc-1, then carried by its migration) is new.
        far_vif = vif_in_domain(cluster, "lc-2", "far")["data"]
        assert (far_vif["port_profile"]["version"], far_vif["network"]["version"]) == ("1.0", "1.0"), far_vif
        assert "datapath_type" not in far_vif["port_profile"]["data"] and "mtu" not in far_vif["network"]["data"]
        near_vif = vif_in_domain(cluster, "lc-2", "near")["data"]
        assert (near_vif["port_profile"]["version"], near_vif["network"]["version"]) == ("1.2", "1.1"), near_vif
        # Destroyed behind Snooze's back (libvirt, not the API): its Nuage rows go.
        assert nuage_vm(cluster, "lc-2", "far") is not None
        virsh(cluster, "lc-2", "destroy", "far")
        wait_for(lambda: nuage_vm(cluster, "lc-2", "far") is None, 15, "far's Nuage row removed after a destroy behind "
                 "Snooze's back")
        assert nuage_vm(cluster, "lc-2", "near") is not None
        return

    # Destroyed: its tap leaves its host; the other guest still answers.
    host = cluster.process("lc-2")["netns"]
    assert tap_name("far") in netns.ip("-br", "link", netns=host)
    status, body = http("POST", cluster.bootstrap_url + "/bootstrap?destroyVirtualMachine", '"far"')
    assert status == 200, body
    wait_for(lambda: tap_name("far") not in netns.ip("-br", "link", netns=host), 30, "far's tap removed")
    assert ask(fabric, address["near"], f"cgi-bin/ping?{address['far']}").strip() == f"unreachable {address['far']}"
    assert guest_answer(fabric, address["near"], timeout=2.0) == "near\n"
