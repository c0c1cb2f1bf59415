"""Leadership with real processes and a real ZooKeeper: never two group managers presenting
themselves as leader, the same leader after a short ZooKeeper outage, a bootstrap that finds
the leader again after the leader's restart, a hierarchy that does not wait for a silent group
manager, VMs on an unmanaged host shown UNKNOWN with why, the minimum topology said out loud,
and joins only from group managers registered in ZooKeeper.

(Cutting one process's link in network namespaces is the chaos tests' part: tests/chaos/.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from snooze.codes import ErrorCode, VMStatus
from snooze.dev.localcluster import LocalCluster, assigned_lcs
from snooze.protocol.messages import AssignLocalController, GroupManagerJoin
from snooze.rpc import RpcError
from tests.support import fast_options, get, http, order, port_range, start_vm, wait_for

pytestmark = pytest.mark.integration


def gm_ids(c: LocalCluster) -> list[str]:
    return [p["id"] for p in c.processes if p["role"] == "groupmanager"]


def describe(c: LocalCluster, gm: str) -> dict[str, Any] | None:
    try:
        status, body = http("GET", f"http://127.0.0.1:{c.process(gm)['port']}/groupmanager?getGroupManagerDescription",
                            timeout=1.0)
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def presenting(c: LocalCluster) -> dict[str, int]:
    """gm id -> epoch of every group manager that says it is the leader, now."""
    out = {}
    for gm in gm_ids(c):
        d = describe(c, gm)
        if d is not None and d.get("isGroupLeader"):
            out[gm] = int(d["epoch"])
    return out


class Sampler:
    """Every group manager's description every 100 ms, on a thread, while the test acts."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), presenting(self.c)))
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def two_leaders(self) -> list[dict[str, int]]:
        return [s for _t, s in self.samples if len(s) > 1]

    def between(self, start: float, end: float) -> list[dict[str, int]]:
        return [s for t, s in self.samples if start <= t <= end]


def the_leader(c: LocalCluster) -> tuple[str, int]:
    got = wait_for(lambda: (lambda p: p if len(p) == 1 else None)(presenting(c)), 20, "exactly one leader")
    [(gm, epoch)] = got.items()
    return gm, epoch


@pytest.mark.slow  # a ZooKeeper outage or a frozen process, waited out
def test_zookeeper_outage_longer_than_the_session_never_shows_two_leaders(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2)
    old, term = the_leader(c)
    assert get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")["epoch"] == term, "its own term"
    assert c.zk is not None
    with Sampler(c) as sampler:
        c.zk.stop()
        stopped = time.monotonic()
        time.sleep(2 * c.options.session_timeout + 1.0)
        restarting = time.monotonic()
        c.zk.start()
        new, epoch = wait_for(lambda: (lambda p: next(iter(p.items())) if len(p) == 1 and max(p.values()) > term else None)(
            presenting(c)), 30, "one leader of a newer term after ZooKeeper returned")
        time.sleep(1.0)  # and it stays alone
    assert sampler.two_leaders() == [], "never two group managers presenting themselves as leader"
    # The old leader stopped presenting itself while ZooKeeper was away.
    assert all(s == {} for s in sampler.between(stopped + 0.5, restarting)), sampler.between(stopped + 0.5, restarting)
    assert presenting(c) == {new: epoch}
    wait_for(lambda: get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")["id"] == new, 20, "the bootstrap follows")
    wait_for(lambda: assigned_lcs(get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")) == {"lc-1", "lc-2"}, 30,
             "every LC re-homed")


def test_short_zookeeper_outage_keeps_the_leader_and_its_term(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=1, session_timeout=8.0)
    leader, term = the_leader(c)
    assert c.zk is not None
    with Sampler(c) as sampler:
        c.zk.stop()
        stopped = time.monotonic()
        time.sleep(1.5)
        restarting = time.monotonic()
        c.zk.start()
        wait_for(lambda: presenting(c) == {leader: term}, 15, "the same leader, same term, once ZooKeeper is back")
        time.sleep(1.0)
    assert sampler.two_leaders() == []
    assert all(set(s) <= {leader} and set(s.values()) <= {term} for _t, s in sampler.samples), "no other leader, no new term"
    assert any(s == {} for s in sampler.between(stopped + 0.3, restarting)), "not presenting while SUSPENDED"
    assert presenting(c) == {leader: term}
    wait_for(lambda: assigned_lcs(get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")) == {"lc-1"}, 20, "hierarchy")


def fetch(url: str, timeout: float = 20.0) -> tuple[int, Any, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None, dict(exc.headers)


def test_the_bootstrap_finds_the_leader_again_after_the_leader_restarts(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2)
    old, term = the_leader(c)
    c.kill(old)
    c.restart(old)  # same id, same port: a plain group manager now
    answers: list[tuple[int, Any, dict[str, str]]] = []
    deadline = time.monotonic() + 30
    new_seen_at: float | None = None
    while time.monotonic() < deadline:
        for verb in ("getCompleteHierarchy", "getLocalControllerList"):
            answers.append(fetch(c.bootstrap_url + "/bootstrap?" + verb))
        if new_seen_at is None and answers[-1][0] == 200:
            gl = get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")
            if gl["epoch"] > term:
                new_seen_at = time.monotonic()
        if new_seen_at is not None and time.monotonic() - new_seen_at > 2:
            break
        time.sleep(0.1)
    assert new_seen_at is not None, "a new leader answered within 30 s"
    for status, body, headers in answers:
        assert status in (200, 503), (status, body)
        if status == 503:
            assert body["error"]["code"] != ErrorCode.UNKNOWN_KIND and set(body["error"]) >= {"code", "message"}, body
            assert int(headers["Retry-After"]) >= 1, headers
        else:
            assert "groupManagerDescriptions" in body or "localControllers" in body
    assert not any(b and "UNKNOWN_KIND" in json.dumps(b) for _s, b, _h in answers)



@contextmanager
def frozen(c: LocalCluster, node_id: str) -> Iterator[None]:
    """The process stopped (SIGSTOP): it accepts connections and answers nothing, as if cut off."""
    pid = c.process(node_id)["pid"]
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)


def listed(c: LocalCluster, name: str) -> dict[str, Any]:
    vms = get(c.bootstrap_url + "/bootstrap?getVirtualMachineDescriptions")["virtualMachines"]
    [vm] = [v for v in vms if v["virtualMachineId"] == name]
    return vm  # type: ignore[no-any-return]


@pytest.mark.slow  # a ZooKeeper outage or a frozen process, waited out
def test_a_silent_group_manager_is_shown_stale_and_an_unmanaged_hosts_vms_unknown(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2, heartbeat_timeout=4.0)
    vm = start_vm(c, "watched")
    lc = vm["virtualMachineLocation"]["localControllerId"]
    h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
    [gm] = [g["id"] for g in h["groupManagerDescriptions"] if lc in {x["id"] for x in g["localControllers"]}]
    assert listed(c, "watched")["status"] == VMStatus.RUNNING

    with frozen(c, gm):
        # Still heard from recently: asked, but not waited for; its last answer, marked.
        stale = wait_for(lambda: [g for g in get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")["groupManagerDescriptions"]
                                  if g["id"] == gm and g.get("stale")], 4, f"{gm} shown stale")
        assert stale[0]["error"] and lc in {x["id"] for x in stale[0]["localControllers"]}
        # The LC re-homes to the other group manager; its VM is RUNNING there again.
        wait_for(lambda: listed(c, "watched")["status"] == VMStatus.RUNNING
                 and listed(c, "watched")["virtualMachineLocation"]["groupManagerId"] != gm, 30, "re-homed")

    with frozen(c, lc):
        def unknown() -> dict[str, Any] | None:
            v = listed(c, "watched")
            return v if v["status"] == VMStatus.UNKNOWN else None

        v = wait_for(unknown, 20, "the VM of a host no group manager manages shown UNKNOWN")
        assert v["reason"] == f"local controller {lc} is not reachable (no group manager manages it)", v
        meta = http("POST", c.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", "watched")[1]
        assert meta["status"] == VMStatus.UNKNOWN and lc in meta["reason"], meta
    wait_for(lambda: listed(c, "watched")["status"] == VMStatus.RUNNING, 30, "RUNNING once its host is back")


def test_one_group_manager_cannot_host_local_controllers_and_says_why(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "alone", fast_options(gms=1, lcs=1, base_port=port_range(3)))
    try:
        c.up(wait=False)
        wait_for(lambda: get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription")["id"] == "gm-1", 30, "gm-1 leads")
        port = c.process("gm-1")["port"]
        ask = AssignLocalController({"id": "lc-x"}).to_wire()

        def refusal() -> RpcError | None:
            try:
                order(c, port, AssignLocalController.KIND, ask)
            except RpcError as exc:  # LEADER_SETTLING just after the election, then this
                return exc if exc.code is ErrorCode.NO_GROUP_MANAGER else None
            raise AssertionError("a lone group leader assigned a local controller")

        refused = wait_for(refusal, 10, "NO_GROUP_MANAGER")
        assert refused.code.retryable
        assert "run at least 2 group managers, 3 to survive the loss of one" in refused.message
        h = get(c.bootstrap_url + "/bootstrap?getCompleteHierarchy")
        assert h["groupManagerDescriptions"] == [] and "no group manager is alive besides the group leader" in h["warnings"][0]
        wait_for(lambda: "at least 2 group managers" in " ".join(
            get(c.bootstrap_url + "/bootstrap?getGroupLeaderDescription").get("warnings", [])), 10, "the warning at the bootstrap")
        log = Path(c.process("gm-1")["log"])
        wait_for(lambda: "none is alive besides the group leader" in log.read_text(), 10, "the leader's warning")
        assert log.read_text().count("none is alive besides the group leader") == 1, "rate-limited"
    finally:
        c.down()


def test_only_group_managers_registered_in_zookeeper_may_join(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=1)
    leader, epoch = the_leader(c)
    port = c.process(leader)["port"]
    rogue_port = port_range(1)
    desc = {"id": "gm-rogue", "hostname": "rogue", "isAssigned": False, "epoch": epoch, "summaryInformation": {},
            "listenSettings": {"controlDataAddress": {"address": "127.0.0.1", "port": rogue_port}}}
    join = GroupManagerJoin(desc).to_wire()
    with pytest.raises(RpcError) as refused:
        order(c, port, GroupManagerJoin.KIND, join)
    assert refused.value.code is ErrorCode.GROUP_MANAGER_NOT_REGISTERED and refused.value.code.retryable
    assert "not registered in ZooKeeper" in refused.value.message

    assert c.zk is not None
    zk = KazooClient(hosts=c.zk.address)
    zk.start(15)
    try:
        elsewhere = dict(desc, listenSettings={"controlDataAddress": {"address": "127.0.0.1", "port": rogue_port + 1}})
        zk.create("/snooze/groupmanagers/gm-rogue", json.dumps(elsewhere).encode(), ephemeral=True)
        with pytest.raises(RpcError) as refused:
            order(c, port, GroupManagerJoin.KIND, join)
        assert refused.value.code is ErrorCode.GROUP_MANAGER_NOT_REGISTERED
        assert f"registers it at 127.0.0.1:{rogue_port + 1}" in refused.value.message
        zk.set("/snooze/groupmanagers/gm-rogue", json.dumps(desc).encode())
        assert order(c, port, GroupManagerJoin.KIND, join)["epoch"] == epoch, "registered at that address: welcome"
    finally:
        zk.stop()
        zk.close()
