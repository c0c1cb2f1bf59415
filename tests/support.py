"""Helpers shared by the tests: polling, HTTP, free port ranges, fast-cluster options."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from snooze.dev.localcluster import ClusterOptions, LocalCluster
from snooze.dev.ports import free_port_range
from snooze.models import NetworkAddress
from snooze.rpc import RpcClient

T = TypeVar("T")

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 2.0,
    "session_timeout": 2.0,
    "monitoring_interval": 0.5,
}


def fast_options(**kw: Any) -> ClusterOptions:
    # ec2 and the local controllers' CNI agents: off unless a test asks for them (ports, and
    # ZooKeeper work at each start).
    opts: dict[str, Any] = {**FAST, "ec2": False, "cni": False}
    opts.update(kw)
    return ClusterOptions(**opts)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the cluster may be mid-failover
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def port_range(count: int) -> int:
    """A base port with ``count`` consecutive ports free on 127.0.0.1 for TCP and UDP (a role's
    heartbeats use its port's UDP side, as LocalCluster.check_ports checks), below the ephemeral range."""
    return free_port_range(count, udp=True)


def http(method: str, url: str, body: bytes | str | None = None, timeout: float = 10.0,
         content_type: str = "application/json", token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else body
    sent = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def get(url: str) -> Any:
    status, body = http("GET", url)
    assert status == 200, (status, body)
    return body


def order(c: LocalCluster, port: int, kind: str, body: Any) -> Any:
    """An internal message sent to the process on ``port`` as an operator would: signed with the
    cluster's key, at the leader's current epoch."""

    async def call() -> Any:
        client = RpcClient(c.options.key.encode(), "operator")
        try:
            epoch = get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")["epoch"]
            return await client.call(NetworkAddress("127.0.0.1", port), kind, body, epoch=epoch, timeout=20)
        finally:
            await client.close()

    return asyncio.run(call())


def leader_id(c: LocalCluster) -> str:
    return str(get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")["id"])


def response(c: LocalCluster, task: str, timeout: float = 60) -> dict[str, Any]:
    """The answer of getVirtualClusterResponse for ``task``, once the task is done."""

    def done() -> dict[str, Any] | None:
        status, body = http("POST", c.bootstrap_url + "/bootstrap?getVirtualClusterResponse", task)
        assert status == 200, body
        return body or None

    got = wait_for(done, timeout, f"response of {task}")
    assert got is not None
    return got


def run_virtual_cluster(c: LocalCluster, templates: list[dict[str, Any]], timeout: float = 90) -> dict[str, Any]:
    """Submit ``templates`` as one virtual cluster through the bootstrap; its response once done."""
    status, task = http("POST", c.bootstrap_url + "/bootstrap?startVirtualCluster",
                        json.dumps({"virtualMachineTemplates": templates}))
    assert status == 200, task
    return response(c, task, timeout)


def lc_statuses(c: LocalCluster) -> dict[str, str]:
    """Each local controller's status (ACTIVE, PASSIVE, WAKING...) as the bootstrap lists it."""
    return {lc["id"]: lc["status"] for lc in get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]}


def gm_logs(c: LocalCluster) -> str:
    """The logs of every group manager of ``c``, one after the other."""
    return "".join(Path(p["log"]).read_text(errors="replace") for p in c.processes if p["role"] == "groupmanager")


def locations(c: LocalCluster, names: list[str]) -> dict[str, str]:
    """Where each VM of ``names`` runs (its local controller), through the bootstrap; each must
    be RUNNING."""
    out = {}
    for name in names:
        status, meta = http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", name)
        assert status == 200 and meta["status"] == "RUNNING", meta
        out[name] = meta["virtualMachineLocation"]["localControllerId"]
    return out


def start_vm(c: LocalCluster, name: str, **template: Any) -> dict[str, Any]:
    """One small VM (1 vcpu, 256 MiB; ``template`` adds or overrides fields), started: its metadata."""
    resp = run_virtual_cluster(c, [{"vcpus": 1, "memory": 262144, "name": name, "imageId": "debian.qcow2", **template}], 30)
    [vm] = resp["virtualMachineMetaData"]
    assert vm["status"] == "RUNNING", vm
    return dict(vm)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics(port: int) -> Samples:
    """Every sample of the process's /metrics on ``port``: (name, sorted labels) -> value."""
    status, text = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def count(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    want = tuple(sorted(labels.items()))
    return sum(v for (n, ls), v in samples.items() if n == name and all(item in ls for item in want))
