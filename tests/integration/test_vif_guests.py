"""Real guests on plugged networks (issue 13): a QEMU local cluster with ``--vif`` (each host's
VM bridge made by its VIF plugin and joined to the others' by an uplink to the guests' network
in the fabric namespace, which holds the gateway). Two guests of ``snooze-tiny`` on two hosts
answer from the guests' network, reach each other (ping and HTTP, asked of one guest through
its CGI programs), and a destroyed guest's tap is gone from its host."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from groupmanager.manager.vifs import tap_name
from snooze.client import SyncSnoozeClient
from snooze.dev import guestimage, netns
from snooze.dev.localcluster import GUEST_IMAGE, LocalCluster, guest_answer
from tests.integration.test_qemu_migration import _require_qemu
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

    # Destroyed: its tap leaves its host; the other guest still answers.
    host = cluster.process("lc-2")["netns"]
    assert tap_name("far") in netns.ip("-br", "link", netns=host)
    status, body = http("POST", cluster.bootstrap_url + "/bootstrap?destroyVirtualMachine", '"far"')
    assert status == 200, body
    wait_for(lambda: tap_name("far") not in netns.ip("-br", "link", netns=host), 30, "far's tap removed")
    assert ask(fabric, address["near"], f"cgi-bin/ping?{address['far']}").strip() == f"unreachable {address['far']}"
    assert guest_answer(fabric, address["near"], timeout=2.0) == "near\n"
