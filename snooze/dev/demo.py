"""The demo virtual cluster the local cluster submits at start-up: three small VMs."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any


def _post(url: str, body: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers=headers)
    # Short: a Ctrl-C during the demo is acted on within this time.
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        return resp.status, resp.read().decode()


def submit_demo(bootstrap_url: str, count: int = 3, timeout: float = 60.0,
                stop: Callable[[], bool] | None = None, token: str | None = None,
                context: ssl.SSLContext | None = None) -> dict[str, Any] | None:
    """Submit the demo and print where its VMs run; gives up (None) on timeout or once ``stop()``.
    ``context``: what an https bootstrap's certificate is checked with (a cluster with TLS)."""
    suffix = uuid.uuid4().hex[:4]
    templates = [{"name": f"demo-{suffix}-{i}", "vcpus": 1, "memory": 524288, "imageId": "debian.qcow2",
                  "networkCapacityDemand": {"rxBytes": 1024.0, "txBytes": 1024.0}} for i in range(1, count + 1)]
    print(f"submitting a demo virtual cluster of {count} VMs ...", flush=True)
    _status, task = _post(bootstrap_url + "/bootstrap?startVirtualCluster", json.dumps({"virtualMachineTemplates": templates}), token,
                         context)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop is not None and stop():
            return None
        _status, body = _post(bootstrap_url + "/bootstrap?getVirtualClusterResponse", task, token, context)
        if body.strip():
            response: dict[str, Any] = json.loads(body)
            for vm in response["virtualMachineMetaData"]:
                loc = vm["virtualMachineLocation"]
                print(f"  {vm['virtualMachineId']:<16} {vm['status']:<8} {vm['ipAddress'] or '-':<16} "
                      f"on {loc['localControllerId']} (group manager {loc['groupManagerId']})")
            print(f"task {task}: curl -X POST -d {task} '{bootstrap_url}/bootstrap?getVirtualClusterResponse'")
            return response
        time.sleep(0.2)
    print(f"demo virtual cluster {task} did not finish within {timeout}s")
    return None
