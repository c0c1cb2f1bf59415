"""A private ZooKeeper server (Debian's ``zookeeper`` package) run as a plain child process.

Used by the local cluster and by the integration tests. It always listens on 127.0.0.1 with
its own data dir and port, and never opens the admin web server (which would listen on
0.0.0.0:8080). Ready means the ``srvr`` four-letter command prints a ``Mode:`` line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _classpath() -> str:
    jars = [p for p in CLASSPATH_DIRS if os.path.exists(p)]
    java_dir = Path("/usr/share/java")
    if java_dir.is_dir():
        for jar in sorted(java_dir.glob("*.jar")):
            if any(jar.name.startswith(prefix) for prefix in EXTRA_JARS) and str(jar) not in jars:
                jars.append(str(jar))
    return ":".join(jars)


class ZooKeeperServer:
    def __init__(self, data_dir: Path, port: int | None = None, tick_ms: int = 1000) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.tick_ms = tick_ms
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "zoo.cfg"
        cfg.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_ms}",
                    f"dataDir={self.data_dir / 'data'}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=*",
                    f"minSessionTimeout={2 * self.tick_ms}",
                    # The default cap (20 ticks) would clamp a 10 s session with a small tick.
                    f"maxSessionTimeout={max(20 * self.tick_ms, 60000)}",
                    "maxClientCnxns=0",
                    "autopurge.purgeInterval=0",
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
        with open_log(self.data_dir / "zookeeper.log", f"ZooKeeper starting on {self.address}") as log:
            self.process = subprocess.Popen(
                ["java", "-cp", _classpath(), "-Dzookeeper.log.dir=" + str(self.data_dir),
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
                if "Mode:" in four_letter("127.0.0.1", self.port, "srvr"):
                    return
            time.sleep(0.1)
        raise ZooKeeperError(f"ZooKeeper not ready on port {self.port} after {timeout}s")

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
