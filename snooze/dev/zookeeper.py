"""A private ZooKeeper server (Debian's ``zookeeper`` package) run as a plain child process.

Used by the local cluster and by the integration tests. It listens on 127.0.0.1 with its own
data dir and port (or, for ``snooze cluster up --netns``, on its own address inside its own
network namespace), and never opens the admin web server (which would listen on 0.0.0.0:8080).
Ready means the ``srvr`` four-letter command prints a ``Mode:`` line.

``ZooKeeperEnsemble`` runs several such servers as one replicated ensemble on 127.0.0.1 (each
with its own client, quorum and election ports and its own ``myid``), as a deployment runs it
(``snooze cluster up --zookeeper-ensemble 3``); clients are given the full connection string.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snooze.dev.ports import free_port
from snooze.procs import open_log

CLASSPATH_DIRS = ["/etc/zookeeper/conf", "/usr/share/java/zookeeper.jar", "/usr/share/java/zookeeper-jute.jar", "/usr/share/java/slf4j-api.jar", "/usr/share/java/slf4j-simple.jar"]
# Netty and the rest come from the jar's manifest class path; add what Debian ships beside it.
EXTRA_JARS = ["netty", "jline", "commons-cli", "commons-io", "metrics-core", "snappy-java", "audience-annotations", "jackson"]


class ZooKeeperError(RuntimeError):
    pass


def four_letter(host: str, port: int, cmd: str, timeout: float = 1.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(cmd.encode())
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def _classpath() -> str:
    jars = [p for p in CLASSPATH_DIRS if os.path.exists(p)]
    java_dir = Path("/usr/share/java")
    if java_dir.is_dir():
        for jar in sorted(java_dir.glob("*.jar")):
            if any(jar.name.startswith(prefix) for prefix in EXTRA_JARS) and str(jar) not in jars:
                jars.append(str(jar))
    return ":".join(jars)


@dataclass(frozen=True)
class Peer:
    """One server of an ensemble as the others see it: ``server.ID=HOST:QUORUM:ELECTION;CLIENT``."""

    server_id: int
    host: str
    client_port: int
    quorum_port: int
    election_port: int

    def line(self) -> str:
        return (f"server.{self.server_id}={self.host}:{self.quorum_port}:{self.election_port};"
                f"{self.host}:{self.client_port}")


class ZooKeeperServer:
    def __init__(self, data_dir: Path, port: int | None = None, tick_ms: int = 1000, *,
                 host: str = "127.0.0.1", netns: str | None = None, server_id: int | None = None,
                 peers: tuple[Peer, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        # In an ensemble: this server's id (its ``myid``) and every server of it, itself included.
        self.server_id = server_id
        self.peers = peers
        self.port = port or free_port()
        self.tick_ms = tick_ms
        self.host = host
        # Run inside this network namespace (``ip netns exec``, which execs: the PID is java's).
        self.netns = netns
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "zoo.cfg"
        ensemble: list[str] = []
        if self.peers:
            assert self.server_id is not None
            (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
            (self.data_dir / "data" / "myid").write_text(f"{self.server_id}\n")
            # initLimit/syncLimit in ticks: generous, so a loaded machine does not split the ensemble.
            ensemble = ["initLimit=20", "syncLimit=10", "quorumListenOnAllIPs=false",
                        "reconfigEnabled=false", "standaloneEnabled=false",
                        *(p.line() for p in self.peers)]
        cfg.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_ms}",
                    f"dataDir={self.data_dir / 'data'}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={self.host}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=*",
                    f"minSessionTimeout={2 * self.tick_ms}",
                    # The default cap (20 ticks) would clamp a 10 s session with a small tick.
                    f"maxSessionTimeout={max(20 * self.tick_ms, 60000)}",
                    "maxClientCnxns=0",
                    "autopurge.purgeInterval=0",
                    *ensemble,
                    "",
                ]
            )
        )
        return cfg

    def start(self, timeout: float = 30.0, *, stop: Callable[[], bool] | None = None) -> None:
        """Launch the server and wait until it serves (``stop()`` true: give up at once)."""
        self.launch()
        self.wait_ready(timeout, stop=stop)

    def launch(self) -> int:
        """Start the server process without waiting for it; returns its PID (so it can be recorded)."""
        if not Path("/usr/share/java/zookeeper.jar").exists():
            raise ZooKeeperError("ZooKeeper is not installed (apt-get install zookeeper); run scripts/setup")
        cfg = self.write_config()
        env = dict(os.environ, JAVA_TOOL_OPTIONS="-Xmx256m -XX:+UseSerialGC -Xss512k")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with open_log(self.data_dir / "zookeeper.log", f"ZooKeeper starting on {self.address}") as log:
            self.process = subprocess.Popen(
                [*prefix, "java", "-cp", _classpath(), "-Dzookeeper.log.dir=" + str(self.data_dir),
                 "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        self.pid = self.process.pid
        return self.pid

    def wait_ready(self, timeout: float, *, stop: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stop is not None and stop():
                raise ZooKeeperError("interrupted while ZooKeeper was starting")
            if self.process is not None and self.process.poll() is not None:
                raise ZooKeeperError(f"ZooKeeper exited with {self.process.returncode}; see {self.data_dir / 'zookeeper.log'}")
            with contextlib.suppress(OSError):
                if "Mode:" in self.four_letter("srvr"):
                    return
            time.sleep(0.1)
        raise ZooKeeperError(f"ZooKeeper not ready on port {self.port} after {timeout}s")

    def four_letter(self, cmd: str, timeout: float = 1.0) -> str:
        """A four-letter command sent to this server (from inside its namespace, if it has one)."""
        if self.netns:
            from snooze.dev.netns import NetnsError, call_in

            try:
                return call_in(self.netns, four_letter, self.host, self.port, cmd, timeout)
            except NetnsError as exc:
                raise OSError(str(exc)) from exc
        return four_letter(self.host, self.port, cmd, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.process = None


def _distinct(port: Callable[[], int], count: int, attempts: int = 100) -> list[int]:
    """``count`` different ports from ``port``. Each call only checks that its port is free now,
    so two calls may return the same one: CI saw an ensemble server exit with 14 (it could not
    bind its election port) when two of its nine ports were one."""
    chosen: list[int] = []
    for _ in range(attempts * count):
        candidate = port()
        if candidate not in chosen:
            chosen.append(candidate)
            if len(chosen) == count:
                return chosen
    raise ZooKeeperError(f"could not choose {count} different ports")


class ZooKeeperEnsemble:
    """``size`` ZooKeeper servers on 127.0.0.1 replicating one tree (a quorum of size // 2 + 1).

    Each server has its own data dir (``DATA_DIR/zk-N``) and three ports of its own. Killing one
    server (``kill``) leaves the others serving as long as a quorum stays; ``leader()`` says which
    server leads the ensemble now. ``port`` chooses each of those ports (a local cluster passes
    one that keeps clear of the ports its roles will bind).
    """

    def __init__(self, data_dir: Path, size: int = 3, tick_ms: int = 1000,
                 port: Callable[[], int] = free_port) -> None:
        if size < 1:
            raise ValueError("an ensemble needs at least one server")
        self.data_dir = Path(data_dir)
        chosen = _distinct(port, 3 * size)
        peers = tuple(Peer(i + 1, "127.0.0.1", *chosen[3 * i:3 * i + 3]) for i in range(size))
        self.servers = [
            ZooKeeperServer(self.data_dir / f"zk-{p.server_id}", p.client_port, tick_ms, server_id=p.server_id, peers=peers)
            for p in peers
        ]

    @property
    def address(self) -> str:
        """The connection string clients are given: every server."""
        return ",".join(s.address for s in self.servers)

    @property
    def pids(self) -> list[int | None]:
        return [s.pid for s in self.servers]

    def launch(self) -> list[int]:
        return [s.launch() for s in self.servers]

    def wait_ready(self, timeout: float, *, stop: Callable[[], bool] | None = None) -> None:
        """Until every server serves, as leader or follower (``srvr`` says ``Mode: leader|follower``)."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            server.wait_ready(max(0.1, deadline - time.monotonic()), stop=stop)
        while time.monotonic() < deadline:
            if stop is not None and stop():
                raise ZooKeeperError("interrupted while the ZooKeeper ensemble was forming")
            if all(self.mode(i) in ("leader", "follower") for i in range(len(self.servers))):
                return
            time.sleep(0.1)
        raise ZooKeeperError(f"ZooKeeper ensemble not formed after {timeout}s: "
                             + ", ".join(f"{s.address} {self.mode(i) or 'down'}" for i, s in enumerate(self.servers)))

    def start(self, timeout: float = 60.0, *, stop: Callable[[], bool] | None = None) -> None:
        self.launch()
        self.wait_ready(timeout, stop=stop)

    def mode(self, index: int) -> str | None:
        """``leader``, ``follower``, ``standalone`` … of server ``index``, or None when it does not answer."""
        try:
            text = self.servers[index].four_letter("srvr")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def leader(self) -> int | None:
        """The index of the server that leads the ensemble now, if one does."""
        return next((i for i in range(len(self.servers)) if self.mode(i) == "leader"), None)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill one server (kill -9 by default) and reap it."""
        proc = self.servers[index].process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(10)
        self.servers[index].process = None

    def restart(self, index: int, timeout: float = 30.0) -> None:
        self.servers[index].start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for server in self.servers:
            server.stop(timeout)
