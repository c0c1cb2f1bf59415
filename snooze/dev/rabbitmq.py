"""A private RabbitMQ broker on 127.0.0.1, for the local cluster (``snooze cluster up --events
rabbitmq``) and the tests: Debian's ``rabbitmq-server`` (``scripts/setup`` installs it without
starting the system's service), run as a child process with everything of its own.

* Its own Erlang port mapper (``epmd -port P -address 127.0.0.1``, a child too, not the
  machine's shared one on 4369, which would outlive us as a daemon), and the broker told not
  to start one (``-start_epmd false``).
* Its own node name, AMQP port, distribution port, data and log directories, plugins file
  (none), and ``HOME`` (the Erlang cookie lives there).
* The default user ``guest``/``guest``, which RabbitMQ accepts from loopback only.

Ready once its AMQP port accepts connections (its listeners open at the end of the boot).
``stop`` sends SIGTERM to the broker's process group (the VM and its port helpers), then stops
the port mapper.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snooze.dev.ports import free_port
from snooze.procs import kill_group, open_log

__all__ = ["RABBITMQ_SERVER", "RabbitMQError", "RabbitMQServer", "available", "stop_recorded_broker"]

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitMQError(RuntimeError):
    """The broker cannot be started (not installed, exited, not ready in time)."""


def available() -> str | None:
    """Why a broker cannot be started here, or None."""
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server; scripts/setup does)"
    return None


class RabbitMQServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = Path(directory)
        self.port = port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"snooze-{secrets.token_hex(3)}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.dir), "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"), "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ERL_ARGS": "-start_epmd false",
            # Names resolved by Erlang itself, from its own table: no inet_gethost helper, whose
            # worker would be orphaned at the stop (a zombie forever where init reaps nothing).
            "ERL_INETRC": str(self.dir / "inetrc"),
        }

    def launch(self) -> int:
        """Start the port mapper and the broker without waiting; returns the broker's PID."""
        reason = available()
        if reason:
            raise RabbitMQError(reason)
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # the Erlang cookie
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "inetrc").write_text('{lookup, [file]}.\n{host, {127,0,0,1}, ["localhost"]}.\n')
        with open_log(self.dir / "epmd.log", f"epmd starting on 127.0.0.1:{self.epmd_port}") as log:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        with open_log(self.dir / "rabbitmq.log", f"RabbitMQ {self.node} starting on 127.0.0.1:{self.port}") as log:
            self.process = subprocess.Popen([RABBITMQ_SERVER], env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0, *, stop: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stop is not None and stop():
                raise RabbitMQError("interrupted while RabbitMQ was starting")
            if self.process is not None and self.process.poll() is not None:
                raise RabbitMQError(f"RabbitMQ exited with {self.process.returncode}; see {self.dir / 'rabbitmq.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.2)
        raise RabbitMQError(f"RabbitMQ not ready on port {self.port} after {timeout:g}s; see {self.dir / 'rabbitmq.log'}")

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _vm_pids(self) -> list[int]:
        """The Erlang VM(s) the start script runs (its children)."""
        if self.process is None:
            return []
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def record(self) -> dict[str, Any]:
        """What cluster.json says of it: enough for another process to stop it."""
        return {"url": self.url, "node": self.node, "dir": str(self.dir), "pid": self.pid,
                "vmPids": self._vm_pids(), "epmdPid": self.epmd.pid if self.epmd is not None else None,
                "epmdPort": self.epmd_port}

    def stop(self) -> None:
        # The VM first, alone: it shuts its port programs down in order (a SIGTERM to the whole
        # group would orphan inet_gethost's helper, a zombie forever where init reaps nothing).
        for pid in self._vm_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        for proc, marker in ((self.process, "rabbitmq"), (self.epmd, "epmd")):
            if proc is None:
                continue
            if proc.poll() is None:
                kill_group(proc.pid, marker, timeout=15.0)
            proc.wait(5)
        self.process = self.epmd = None


def stop_recorded_broker(record: dict[str, Any]) -> int:
    """Stop a broker a cluster.json records (``RabbitMQServer.record``), from any process: its
    VM first (known by its data directory on its command line), then its start script and its
    port mapper. Returns how many were running."""
    stopped = 0
    marker = str(record.get("dir") or "")
    for pid in record.get("vmPids") or []:
        if isinstance(pid, int) and marker and kill_group(pid, marker, timeout=15.0):
            stopped += 1
    if isinstance(record.get("pid"), int) and kill_group(record["pid"], "rabbitmq"):
        stopped += 1
    if isinstance(record.get("epmdPid"), int) and kill_group(record["epmdPid"], f"-port {record.get('epmdPort')}"):
        stopped += 1
    return stopped
