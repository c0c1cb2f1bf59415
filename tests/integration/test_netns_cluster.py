"""``snooze cluster up --netns``: every process in its own network namespace on a private subnet
behind a fabric bridge. It forms, records what it made, serves clients of the root namespace
through the forwarded bootstrap URL, cuts and heals links, runs multicast heartbeats with
``--multicast``, and leaves no namespace, veth or process behind (also after a crashed ``up``).

Nothing here sends to a 10.x address before ``ip route get`` in the sending namespace has named
a device of that namespace: from the root namespace such an address leaves the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snooze import config as cfg
from snooze.dev import netns
from snooze.dev.localcluster import ClusterError, LocalCluster
from snooze.procs import alive
from snooze.protocol import ProtocolError, decode
from tests.support import FAST, fast_options, http, port_range, wait_for

pytestmark = pytest.mark.integration

SNOOZE = [sys.executable, "-m", "snooze.cli"]
FAST_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]


@pytest.fixture(autouse=True)
def needs_netns() -> None:
    reason = netns.available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("SNOOZE_URL", "SNOOZE_STATE_DIR")}
    e["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    return e


def snooze(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNOOZE, *argv], capture_output=True, text=True, timeout=timeout, env=env)


def ours(prefix: str) -> list[str]:
    return netns.namespaces(prefix + "-")


def get_in(namespace: str, url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` from inside ``namespace``."""

    def call() -> Any:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())

    return netns.call_in(namespace, call)


def submit_one(url: str, name: str) -> dict[str, Any]:
    body = json.dumps({"virtualMachineTemplates": [{"name": name, "vcpus": 1, "memory": 65536, "imageId": "x.qcow2"}]})
    status, task = http("POST", url + "/bootstrap?startVirtualCluster", body)
    assert status == 200, task

    def answered() -> Any:
        status, got = http("POST", url + "/bootstrap?getVirtualClusterResponse", task)
        assert status == 200, got
        return got

    result: dict[str, Any] = wait_for(answered, 30, f"the answer to {name}")
    return result


def pid_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or not alive(pid)


def test_a_netns_cluster_forms_serves_and_leaves_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    base = port_range(1)
    up = snooze(env, "cluster", "up", "--netns", "--detach", "--no-demo", "--state-dir", str(state), "--gms", "3",
                "--lcs", "2", "--base-port", str(base), *FAST_ARGS)
    prefix = netns.Fabric.for_state_dir(state).prefix
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "fabric:" in up.stdout and "link set" in up.stdout, up.stdout
        manifest = json.loads((state / "cluster.json").read_text())
        fabric = manifest["fabric"]
        subnet = fabric["subnet"].removesuffix("0/24")
        procs = manifest["processes"]
        ids = {p["id"] for p in procs}
        assert sorted(p["role"] for p in procs) == ["bootstrap", "groupmanager", "groupmanager", "groupmanager",
                                                     "localcontroller", "localcontroller"]
        assert manifest["bootstrapUrl"] == f"http://127.0.0.1:{base}", "clients of the root namespace keep their URL"
        assert manifest["zookeeper"].startswith(subnet) and manifest["zookeeperNetns"].startswith(prefix)
        for p in procs:
            assert p["netns"] == f"{prefix}-{p['id']}" and p["address"].startswith(subnet), p
            settings = cfg.load(Path(p["config"]), p["role"])
            assert settings.node.listen_address == settings.node.advertise_address == p["address"]
        assert f"clientPortAddress={manifest['zookeeper'].rpartition(':')[0]}" in (state / "zookeeper" / "zoo.cfg").read_text()
        assert set(fabric["links"]) == ids | {"zookeeper"}
        assert sorted(manifest["namespaces"]) == sorted(ours(prefix)), "every namespace made is recorded"
        assert set(manifest["namespaces"]) == {fabric["netns"], manifest["zookeeperNetns"], *(p["netns"] for p in procs)}
        forwarder = manifest["forwarder"]
        pids = [p["pid"] for p in procs] + [manifest["zookeeperPid"], forwarder["pid"]]
        assert all(alive(pid) for pid in pids)

        # The subnet exists only inside the namespaces: the root namespace has no address or
        # route in it, and none of the links.
        root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        root_routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
        root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert subnet not in root_addrs and subnet not in root_routes
        assert not any(f" {link}@" in root_links or f" {link}:" in root_links for link in fabric["links"].values())

        # From the fabric namespace every process is reached through the bridge.
        for p in procs:
            assert netns.route_device(fabric["netns"], p["address"]) == netns.BRIDGE
        gm = next(p for p in procs if p["role"] == "groupmanager")
        lc = next(p for p in procs if p["role"] == "localcontroller")
        assert netns.route_device(lc["netns"], gm["address"]) == "eth0", "a process reaches others by its own link"
        described = [get_in(fabric["netns"], f"http://{p['address']}:{p['port']}/groupmanager?getGroupManagerDescription")
                     for p in procs if p["role"] == "groupmanager"]
        assert sum(d["isGroupLeader"] for d in described) == 1
        assert {d["listenSettings"]["controlDataAddress"]["address"] for d in described} == \
            {p["address"] for p in procs if p["role"] == "groupmanager"}, "each advertises its own address"

        # The bootstrap through the forwarder, from the root namespace: a VM runs.
        h = http("GET", manifest["bootstrapUrl"] + "/bootstrap?getCompleteHierarchy")[1]
        assert sum(len(g["localControllers"]) for g in h["groupManagerDescriptions"]) == 2
        answer = submit_one(manifest["bootstrapUrl"], "netns-vm")
        assert answer["errorCode"] is None and answer["virtualMachineMetaData"][0]["status"] == "RUNNING", answer

        # A link cut at its fabric-side end really cuts: the fabric no longer reaches the LC.
        lc_url = f"http://{lc['address']}:{lc['port']}/localcontroller?getLocalControllerDescription"
        assert get_in(fabric["netns"], lc_url)["id"] == lc["id"]
        netns.set_link(fabric["netns"], fabric["links"][lc["id"]], False)
        with pytest.raises((OSError, urllib.error.URLError)):
            get_in(fabric["netns"], lc_url, timeout=1.0)
        netns.set_link(fabric["netns"], fabric["links"][lc["id"]], True)
        wait_for(lambda: get_in(fabric["netns"], lc_url)["id"] == lc["id"], 10, "the LC reachable again")
    finally:
        down = snooze(env, "cluster", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert ours(prefix) == [], "no namespace left (their veths and bridge went with them)"
    assert all(pid_gone(pid) for pid in pids), [pid for pid in pids if not pid_gone(pid)]
    assert not (state / "cluster.json").exists()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a new forwarder would bind it
        s.bind(("127.0.0.1", base))  # the forwarder's port is free again


def test_multicast_heartbeats_run_on_the_fabric(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "mc", fast_options(netns=True, multicast=True, gms=3, lcs=2, base_port=port_range(1)))
    try:
        cluster.up(wait=True, timeout=60)
        fabric = cluster.manifest()["fabric"]
        group, _, port = cluster.multicast_group.rpartition(":")
        roles = {p["id"]: p["role"] for p in cluster.processes}
        want = {"groupmanager", "localcontroller"}
        assert all(cfg.load(Path(p["config"]), p["role"]).heartbeat.multicast_group == cluster.multicast_group
                   for p in cluster.processes)
        # This only listens; the namespaces have no route to the group at all (no default route):
        # the roles' heartbeats reach it only because they name their interface.
        with pytest.raises(netns.NetnsError, match="unreachable"):
            netns.route_device(fabric["netns"], group)

        def listen() -> set[str]:
            """Join the group on the bridge's address and collect the senders of a few seconds'
            heartbeats that decode with the cluster's key."""
            key = cluster.options.key.encode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((group, int(port)))
                mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(fabric["address"]))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                s.settimeout(0.5)
                senders: set[str] = set()
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not want <= {roles.get(s) for s in senders}:
                    try:
                        data, _ = s.recvfrom(65536)
                    except TimeoutError:
                        continue
                    try:
                        senders.add(decode(key, data).sender)
                    except ProtocolError:
                        pass
                return senders

        senders = netns.call_in(fabric["netns"], listen)
        heard = {roles[s] for s in senders if s in roles}
        assert want <= heard, f"multicast heartbeats heard from {sorted(senders)}"
    finally:
        cluster.down()
    assert ours(netns.Fabric.for_state_dir(tmp_path / "mc").prefix) == []


@pytest.fixture
def killed_up(tmp_path: Path, env: dict[str, str]) -> Iterator[Path]:
    """A ``snooze cluster up --netns`` killed with SIGKILL once its namespaces and first processes exist."""
    state = tmp_path / "crash"
    proc = subprocess.Popen([*SNOOZE, "cluster", "up", "--netns", "--no-demo", "--state-dir", str(state), "--gms", "2",
                             "--lcs", "1", "--base-port", str(port_range(1)), *FAST_ARGS],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def started() -> bool:
        data = json.loads((state / "cluster.json").read_text())
        return len(data.get("namespaces", [])) >= 3 and any(p.get("pid") for p in data.get("processes", []))

    try:
        wait_for(started, 60, "up to make namespaces and start a process")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        yield state
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        snooze(env, "cluster", "down", "--state-dir", str(state))  # whatever the test left


def test_down_after_a_crashed_up_removes_its_namespaces(killed_up: Path, env: dict[str, str]) -> None:
    state = killed_up
    prefix = netns.Fabric.for_state_dir(state).prefix
    recorded = json.loads((state / "cluster.json").read_text())["namespaces"]
    assert ours(prefix) and set(ours(prefix)) <= set(recorded), "each namespace recorded before it was made"
    down = snooze(env, "cluster", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert ours(prefix) == []
    # Nothing of it runs any more, also a process the killed up started but never recorded.
    assert _running_with(str(state.resolve())) == []


def _running_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_the_next_up_removes_namespaces_a_dead_cluster_left(tmp_path: Path) -> None:
    # Recorded by a cluster whose processes are all gone (the recorded PID is no longer ours).
    state = tmp_path / "stale"
    state.mkdir(mode=0o700)
    fabric = netns.Fabric.for_state_dir(state)
    try:
        fabric.create()
        fabric.add_host("gm-1")
        (state / "cluster.json").write_text(json.dumps({
            "processes": [{"id": "gm-1", "role": "groupmanager", "pid": os.getpid(), "config": str(state / "config/gm-1.toml")}],
            "namespaces": fabric.created[:1]}))
        # ... and one the record does not name (an up killed before it wrote it).
        assert sorted(ours(fabric.prefix)) == sorted([fabric.netns, fabric.hosts["gm-1"].netns])
        cluster = LocalCluster(state, fast_options(netns=True, gms=2, lcs=1, base_port=port_range(1)))
        assert cluster.prepare() is True
        assert ours(fabric.prefix) == [] and not (state / "cluster.json").exists()

        # A namespace nobody recorded but where something still runs: refused, left alone.
        fabric.create()
        squatter = subprocess.Popen(["ip", "netns", "exec", fabric.netns, "sleep", "60"])
        try:
            wait_for(lambda: netns.namespace_pids(fabric.netns), 10, "the process in the namespace")
            with pytest.raises(ClusterError, match=rf"processes still run in .*{fabric.netns}: pids {squatter.pid}"):
                cluster.prepare()
            assert ours(fabric.prefix) == [fabric.netns]
        finally:
            squatter.kill()
            squatter.wait()
        assert cluster.prepare() is True and ours(fabric.prefix) == []
    finally:
        fabric.delete()
