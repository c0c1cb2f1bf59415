"""Replayed internal messages on a real cluster: what a real process sent, captured on loopback
as an attacker on the path would, and sent again, is refused and changes nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from snooze.dev.localcluster import LocalCluster, assigned_lcs
from snooze.protocol import decode
from tests.loopback import LoopbackCapture
from tests.support import get, http, wait_for

pytestmark = pytest.mark.integration

WINDOW = 4.0  # [cluster] replay_window of the test cluster: short, to see a replay go stale


def hierarchy(c: LocalCluster) -> dict[str, Any]:
    return get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")


def gm_port_of(c: LocalCluster, lc_id: str) -> int:
    for gm in hierarchy(c)["groupManagerDescriptions"]:
        if any(lc["id"] == lc_id for lc in gm.get("localControllers", [])):
            return int(c.process(gm["id"])["port"])
    raise AssertionError(f"{lc_id} has no group manager")


def statistics(c: LocalCluster, node_id: str, role: str) -> dict[str, Any]:
    return get(f"http://127.0.0.1:{c.process(node_id)['port']}/{role}?getStatistics")


def vm_status(c: LocalCluster, vm: str) -> str:
    status, body = http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", vm)
    assert status == 200, body
    return str(body["status"])


def test_captured_vm_orders_replayed_are_refused_and_the_vm_is_untouched(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=1, extra={"cluster.replay_window": WINDOW})
    b = c.bootstrap_url + "/bootstrap"
    template = {"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "target", "imageId": "debian.qcow2"}]}
    status, task = http("POST", b + "?startVirtualCluster", json.dumps(template))
    assert status == 200, task
    wait_for(lambda: vm_status(c, "target") == "RUNNING", 30, "target RUNNING")
    lc_port = int(c.process("lc-1")["port"])
    gm_port = gm_port_of(c, "lc-1")

    # The bootstrap orders its group manager (gm.vmAction), which orders the host (lc.vmAction).
    with LoopbackCapture({gm_port, lc_port}) as cap:
        assert http("POST", b + "?suspendVirtualMachine", "target") == (200, True)
        time.sleep(0.3)  # the last segments reach the capture thread
    key = c.options.key.encode()
    orders: dict[str, bytes] = {}
    for port in (gm_port, lc_port):
        for body in cap.http_bodies(port):
            env = decode(key, body)
            if env.kind in ("gm.vmAction", "lc.vmAction"):
                orders[env.kind] = body
    assert set(orders) == {"gm.vmAction", "lc.vmAction"}, f"captured: {list(orders)}"
    assert vm_status(c, "target") == "PAUSED"
    assert http("POST", b + "?resumeVirtualMachine", "target") == (200, True)
    assert vm_status(c, "target") == "RUNNING"

    targets = {"gm.vmAction": gm_port, "lc.vmAction": lc_port}
    for kind, data in orders.items():
        status, body = http("POST", f"http://127.0.0.1:{targets[kind]}/snooze/internal", data,
                            content_type="application/x-snooze-msgpack")
        assert status == 409 and body["error"]["code"] == "REPLAY", (kind, status, body)
    assert vm_status(c, "target") == "RUNNING", "the replayed suspend was not obeyed"

    time.sleep(WINDOW + 0.5)  # ... and once out of the window, they are refused as stale
    for kind, data in orders.items():
        status, body = http("POST", f"http://127.0.0.1:{targets[kind]}/snooze/internal", data,
                            content_type="application/x-snooze-msgpack")
        assert status == 401 and body["error"]["code"] == "STALE_TIMESTAMP", (kind, status, body)
    assert vm_status(c, "target") == "RUNNING"
    lc_stats = statistics(c, "lc-1", "localcontroller")["internalRejected"]
    assert lc_stats.get("replay") == 1 and lc_stats.get("stale_timestamp") == 1, lc_stats
    log = (c.state_dir / "logs" / "lc-1.log").read_text()
    assert "replayed message from" in log and "stale timestamp message from" in log


def test_a_dead_local_controllers_replayed_heartbeats_do_not_keep_it_listed(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=2)
    lc_port = int(c.process("lc-2")["port"])
    gm_port = gm_port_of(c, "lc-2")
    gm_id = next(p["id"] for p in c.processes if p.get("port") == gm_port)
    with LoopbackCapture({lc_port}) as cap:
        wait_for(lambda: len(cap.udp(src=lc_port, dst=gm_port)) >= 3, 10, "lc-2's heartbeats captured")
    captured = cap.udp(src=lc_port, dst=gm_port)
    assert all(decode(c.options.key.encode(), d).kind == "lc.heartbeat" for d in captured)
    c.kill("lc-2")

    stop = threading.Event()

    def replay() -> None:  # what a dead host's heartbeats looked like, again and again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                for data in captured:
                    s.sendto(data, ("127.0.0.1", gm_port))
                stop.wait(0.2)

    sender = threading.Thread(target=replay, daemon=True)
    sender.start()
    try:
        wait_for(lambda: "lc-2" not in assigned_lcs(hierarchy(c)), 15, "lc-2 dropped despite the replays")
        dropped = statistics(c, gm_id, "groupmanager")["heartbeatsDropped"]
    finally:
        stop.set()
        sender.join(5)
    assert dropped.get("replay", 0) >= 1, dropped
    assert assigned_lcs(hierarchy(c)) == {"lc-1"}
