"""Process start-up as an operator meets it: each role started as its own process (``python -m
ROLE``, as ``snooze-ROLE`` runs it), against a ZooKeeper that is not there yet, that comes, that
goes; a second process with an id already in use; a hypervisor that cannot be opened; an
address that peers could not reach.

What is checked: a process never blocks waiting for ZooKeeper (its ``/health`` answers 503 with
what it waits for, 200 once connected) and stops on SIGTERM; a live duplicate id is refused
(exit code 2, one line naming the id and the other's address) while a previous run's stale
registration is taken over; a start-up that cannot succeed ends with one line naming the option,
never a traceback; a normal start logs nothing alarming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snooze.coordination import Coordinator
from snooze.dev.localcluster import host_xml
from snooze.dev.ports import free_port
from snooze.dev.zookeeper import ZooKeeperServer
from tests.support import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "a-test-key-of-this-module"


class Proc:
    """One Snooze process started as the package's entry point, with its log."""

    def __init__(self, tmp: Path, role: str, port: int, zookeeper: str, *sets: str, env_key: bool = True,
                 node_id: str | None = None) -> None:
        self.role, self.port = role, port
        self.log = tmp / f"{role}-{port}.log"
        argv = [sys.executable, "-m", role, "--port", str(port), "--zookeeper", zookeeper,
                "--set", "cluster.session_timeout=4", "--set", "heartbeat.interval=0.5", "--set", "heartbeat.timeout=2"]
        if node_id:
            argv += ["--id", node_id]
        if role == "localcontroller":
            xml = tmp / f"host-{port}.xml"
            xml.write_text(host_xml(4, 4 * 1024 * 1024))
            argv += ["--set", f'localcontroller.hypervisor_uri="test://{xml}"']
        for item in sets:
            argv += ["--set", item]
        env = {k: v for k, v in os.environ.items() if k != "SNOOZE_CLUSTER_KEY"}
        env["PYTHONUNBUFFERED"] = "1"
        if env_key:
            env["SNOOZE_CLUSTER_KEY"] = KEY
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, env=env, start_new_session=True)

    def health(self) -> tuple[int, Any] | None:
        """(status, body) of GET /health, or None while nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=3) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except (OSError, ValueError):
            return None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, within: float) -> int:
        """SIGTERM; the exit code, which must come within ``within`` seconds."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.role} on {self.port} still running {within}s after SIGTERM; log:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()


def waiting(p: Proc, where: str) -> Any:
    got = p.health()
    if got is None:
        return None
    status, body = got
    assert status == 503, got
    return body if body["detail"] == f"waiting for ZooKeeper at {where}" else None


def ok(p: Proc) -> Any:
    got = p.health()
    return got is not None and got[0] == 200 and got[1]


def test_without_zookeeper_each_role_answers_health_and_stops_on_sigterm(tmp_path: Path, procs: list[Proc]) -> None:
    where = f"127.0.0.1:{free_port()}"  # nothing listens there
    lc = Proc(tmp_path, "localcontroller", free_port(), where, env_key=False)
    gm = Proc(tmp_path, "groupmanager", free_port(), where)
    procs += [lc, gm]
    for p in (lc, gm):
        body = wait_for(lambda p=p: waiting(p, where), 20, f"{p.role}'s /health to say it waits for ZooKeeper")
        assert body["status"] == "waiting" and body["role"] == p.role and body["zookeeper"] == "CONNECTING"
        assert body["id"]
    wait_for(lambda: f"waiting for ZooKeeper at {where}" in lc.text(), 20, "the waiting line in the log")
    assert lc.terminate(within=5) == 0
    assert gm.terminate(within=5) == 0
    # kazoo's own lines name the server too; the default key gets its warning, a key of one's own none.
    assert f"ZooKeeper at {where}: Connection dropped" in lc.text()
    assert "[cluster] key" in lc.text() and "SNOOZE_CLUSTER_KEY" in lc.text()
    assert "insecure" not in gm.text()


def test_a_process_started_before_zookeeper_becomes_ok_and_still_stops_when_it_goes(tmp_path: Path, procs: list[Proc]) -> None:
    zk = ZooKeeperServer(tmp_path / "zk")  # its port is free until it starts
    lc = Proc(tmp_path, "localcontroller", free_port(), zk.address)
    gm = Proc(tmp_path, "groupmanager", free_port(), zk.address)
    bs = Proc(tmp_path, "bootstrap", free_port(), zk.address)
    procs += [lc, gm, bs]
    try:
        for p in (lc, gm, bs):
            wait_for(lambda p=p: waiting(p, zk.address), 20, f"{p.role} waiting")
        zk.start()
        ids = {}
        for p in (lc, gm, bs):
            body = wait_for(lambda p=p: ok(p), 30, f"{p.role} healthy once ZooKeeper is up")
            assert body == {"status": "ok", "role": p.role, "id": body["id"], "keys": body["keys"], "zookeeper": "CONNECTED"}
            assert body["keys"]["accepted"] == [body["keys"]["signing"]]  # fingerprints: one key outside a rotation
            ids[p.role] = body["id"]
        # Each registered itself once connected; the group manager, alone, leads.
        for folder, role in (("localcontrollers", "localcontroller"), ("bootstraps", "bootstrap")):
            wait_for(lambda f=folder, r=role: asyncio.run(registered(zk, f, ids[r])), 20, f"the {role}'s registration")
        leader = wait_for(lambda: asyncio.run(registered(zk, "leader")), 20, "a leader")
        assert leader["id"] == ids["groupmanager"]
        zk.stop()
        for p in (lc, gm, bs):
            wait_for(lambda p=p: waiting(p, zk.address), 20, f"{p.role} waiting again")
        for p in (gm, lc, bs):
            assert p.terminate(within=5) == 0
    finally:
        zk.stop()
    for p in (lc, gm, bs):
        # A normal start: no registration attempt before the session is there.
        assert "cannot register" not in p.text() and "ConnectionClosedError" not in p.text(), p.text()
        assert "Traceback" not in p.text(), p.text()


async def registered(zookeeper: ZooKeeperServer, *parts: str) -> Any:
    """The JSON value of the znode /snooze/PARTS (None if missing), read by a session of its own."""
    c = Coordinator(zookeeper.address, root="/snooze", session_timeout=4.0)
    await c.start(wait=15)
    try:
        return await c.get_json(c.path(*parts))
    finally:
        await c.stop()


def test_a_live_duplicate_id_is_refused_and_a_stale_one_taken_over(
    tmp_path: Path, procs: list[Proc], zookeeper: ZooKeeperServer
) -> None:
    first = Proc(tmp_path, "localcontroller", free_port(), zookeeper.address, node_id="lc-twin")
    procs.append(first)
    wait_for(lambda: ok(first), 30, "the first local controller")
    wait_for(lambda: asyncio.run(registered(zookeeper, "localcontrollers", "lc-twin")), 20, "its registration")

    second = Proc(tmp_path, "localcontroller", free_port(), zookeeper.address, node_id="lc-twin")
    procs.append(second)
    try:
        code = second.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the duplicate is still running:\n" + second.text()[-3000:])
    assert code == 2
    last = second.text().strip().splitlines()[-1]
    assert last.startswith("snooze-localcontroller: refusing to start: id lc-twin") and f"127.0.0.1:{first.port}" in last, last
    assert "Traceback" not in second.text()
    # The first one kept its place.
    value = asyncio.run(registered(zookeeper, "localcontrollers", "lc-twin"))
    assert value["controlDataAddress"]["port"] == first.port
    assert ok(first)

    # Killed (its session not expired yet): a process with its id takes its registration over.
    first.kill()
    third = Proc(tmp_path, "localcontroller", free_port(), zookeeper.address, node_id="lc-twin")
    procs.append(third)
    wait_for(lambda: ok(third), 30, "the replacement")
    wait_for(lambda: asyncio.run(registered(zookeeper, "localcontrollers", "lc-twin"))["controlDataAddress"]["port"]
             == third.port, 20, "the replacement's registration")
    assert third.proc.poll() is None
    assert third.terminate(within=5) == 0


def start_failure(tmp_path: Path, role: str, *sets: str, zookeeper: str = "127.0.0.1:1") -> tuple[int, str]:
    p = Proc(tmp_path, role, free_port(), zookeeper, *sets)
    try:
        code = p.proc.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"{role} did not exit:\n{p.text()[-3000:]}")
    return code, p.text()


def test_a_hypervisor_that_cannot_be_opened_is_one_line_naming_the_option(tmp_path: Path) -> None:
    socket_path = tmp_path / "no-libvirtd" / "libvirt-sock"
    uri = f"qemu+unix:///system?socket={socket_path}"
    code, text = start_failure(tmp_path, "localcontroller", f'localcontroller.hypervisor_uri="{uri}"')
    assert code == 1, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("snooze-localcontroller: cannot start: [localcontroller] hypervisor_uri = "), last
    assert uri in last and str(socket_path) in last, last
    assert "Traceback" not in text, text


def test_an_address_peers_cannot_use_is_refused_at_start(tmp_path: Path) -> None:
    # ZooKeeper on another host (TEST-NET-1: nothing is sent, the check comes first).
    code, text = start_failure(tmp_path, "groupmanager", zookeeper="192.0.2.1:2181")
    assert code == 2, text
    assert "[node] listen_address = '127.0.0.1'" in text and "[node] advertise_address" in text, text
    assert "loopback" in text and "Traceback" not in text
    code, text = start_failure(tmp_path, "bootstrap", 'node.advertise_address="0.0.0.0"')
    assert code == 2 and "[node] advertise_address = '0.0.0.0' is a wildcard" in text, text


def test_a_watch_set_before_zookeeper_is_there_never_blocks_the_loop_and_is_armed_on_every_connection(tmp_path: Path) -> None:
    """kazoo's DataWatch reads where it is created and so used to hold the event loop until a
    first connection. The scenario runs in a thread of its own: a blocked loop fails the test
    instead of hanging it."""
    zk = ZooKeeperServer(tmp_path / "zk")
    seen: list[Any] = []
    failure: list[BaseException] = []

    async def until(predicate: Any, what: str, timeout: float = 20) -> None:
        for _ in range(int(timeout / 0.05)):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; seen {seen}")

    async def scenario() -> None:
        coord = Coordinator(zk.address, root="/snooze-test", session_timeout=4.0)
        writer: Coordinator | None = None
        await coord.start()  # nothing listens yet: kazoo keeps trying
        try:
            coord.watch_json(coord.path("leader"), seen.append)
            await asyncio.sleep(0.3)  # the loop runs on
            assert coord.waiting_detail == f"waiting for ZooKeeper at {zk.address}" and seen == []
            await asyncio.to_thread(zk.start)
            await asyncio.wait_for(coord.wait_connected(), 20)
            await until(lambda: seen == [None], "the first read (no znode yet)")
            writer = Coordinator(zk.address, root="/snooze-test", session_timeout=4.0)
            await writer.start(wait=15)
            await writer.call(writer.client.create, writer.path("leader"), b'{"epoch": 3}', makepath=True)
            await until(lambda: seen[-1:] == [{"epoch": 3}], "the created value")
            # The server restarts within the session timeout: the same session comes back, and
            # kazoo, which dropped its watchers with the connection, is given the watch again.
            await asyncio.to_thread(zk.stop)
            await until(lambda: not coord.connected, "the connection to drop")
            await asyncio.to_thread(zk.start)
            await asyncio.wait_for(coord.wait_connected(), 20)
            await asyncio.wait_for(writer.wait_connected(), 20)
            await writer.call(writer.client.set, writer.path("leader"), b'{"epoch": 4}')
            await until(lambda: seen[-1:] == [{"epoch": 4}], "the value set after the reconnection")
            assert seen.count({"epoch": 3}) == 1  # a re-read of an unchanged value is not delivered again
        finally:
            if writer is not None:
                await writer.stop()
            await coord.stop()

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(90)
        assert not thread.is_alive(), f"the event loop is blocked (seen {seen})"
        if failure:
            raise failure[0]
    finally:
        zk.stop()


def test_a_port_in_use_is_one_line_naming_the_options(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = Proc(tmp_path, "bootstrap", port, "127.0.0.1:1")
        try:
            code = p.proc.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(p.text())
    text = p.text()
    assert code == 1, text
    assert text.strip().splitlines()[-1] == (
        f"snooze-bootstrap: cannot start: [node] listen_address = '127.0.0.1', [node] port = {port}: cannot listen there: "
        "Address already in use"), text
    assert "Traceback" not in text


def test_sigterm_stops_a_process_whose_hypervisor_never_answers(tmp_path: Path, procs: list[Proc]) -> None:
    # A libvirt socket that accepts connections and never answers: the hypervisor's open waits.
    path = tmp_path / "silent-sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen()
        where = f"127.0.0.1:{free_port()}"
        lc = Proc(tmp_path, "localcontroller", free_port(), where, f'localcontroller.hypervisor_uri="qemu+unix:///system?socket={path}"')
        procs.append(lc)
        wait_for(lambda: waiting(lc, where), 20, "the local controller's /health while its hypervisor does not answer")
        assert lc.proc.poll() is None
        assert lc.terminate(within=5) == 0
    assert "stopped while starting" in lc.text()


def test_a_twin_of_the_leading_group_manager_is_refused(tmp_path: Path, procs: list[Proc], zookeeper: ZooKeeperServer) -> None:
    # A leader has no registration in groupmanagers/: its twin is found through the leader znode.
    leader = Proc(tmp_path, "groupmanager", free_port(), zookeeper.address, node_id="gm-twin")
    procs.append(leader)
    wait_for(lambda: (asyncio.run(registered(zookeeper, "leader")) or {}).get("id") == "gm-twin", 30, "gm-twin to lead")
    twin = Proc(tmp_path, "groupmanager", free_port(), zookeeper.address, node_id="gm-twin")
    procs.append(twin)
    try:
        code = twin.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the twin is still running:\n" + twin.text()[-3000:])
    assert code == 2, twin.text()
    last = twin.text().strip().splitlines()[-1]
    assert last.startswith("snooze-groupmanager: refusing to start: id gm-twin") and f"127.0.0.1:{leader.port}" in last, last
    assert (asyncio.run(registered(zookeeper, "leader")) or {}).get("id") == "gm-twin" and ok(leader)
