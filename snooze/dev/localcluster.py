"""A complete Snooze cluster on one machine: ZooKeeper, a bootstrap, group managers and local
controllers on libvirt's test driver, each its own process.

Every process runs from a generated config in the state dir and logs there; ``cluster.json``
records the ZooKeeper address, the bootstrap URL and every process (role, id, pid, port), which
is all ``down`` needs to stop exactly what ``up`` started. It is rewritten after each process
starts, so even an ``up`` killed half-way leaves a record of what it started.

Each cluster has its own random key (the HMAC on every internal message): it is written only
in the roles' config files, mode 0600, in a state dir of mode 0700.

A state dir whose recorded processes are all gone (the machine rebooted, ``up`` was killed) is
stale: the next ``up`` cleans it up. Only PIDs recorded there, and only while they still run
what we started (``snooze.procs``), are ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snooze import config as cfg
from snooze.dev.zookeeper import ZooKeeperError, ZooKeeperServer, free_port
from snooze.procs import alive, kill_group, open_log, running

# Kept for the benchmarks, which import it from here.
_alive = alive

# Options never written to cluster.json: they are secrets, kept in the 0600 config files only.
SECRET_OPTIONS = ("key", "bmc_password")

MODULES = {"bootstrap": "bootstrap", "groupmanager": "groupmanager", "localcontroller": "localcontroller"}


class ClusterError(RuntimeError):
    pass


class Interrupted(ClusterError):
    """``up`` was asked to stop (a signal) before the cluster had formed; nothing is left running."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (also if it existed, wider, before)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def host_xml(cpus: int, memory_kib: int, domains: list[str] | None = None) -> str:
    """A libvirt test-driver host file; ``domains`` are names of domains already running there."""
    running = "".join(
        f'  <domain type="test"><name>{name}</name><memory>262144</memory><vcpu>1</vcpu>'
        "<os><type>hvm</type></os></domain>\n"
        for name in domains or []
    )
    return (
        "<node>\n  <cpu>\n    <mhz>2400</mhz>\n    <model>x86_64</model>\n"
        f"    <active>{cpus}</active>\n    <total>{cpus}</total>\n    <nodes>1</nodes>\n"
        f"    <sockets>1</sockets>\n    <cores>{cpus}</cores>\n    <threads>1</threads>\n  </cpu>\n"
        f"  <memory>{memory_kib}</memory>\n{running}</node>\n"
    )


@dataclass
class ClusterOptions:
    gms: int = 3
    lcs: int = 4
    base_port: int = 5000
    zk_port: int = 0
    heartbeat_interval: float = 3.0
    heartbeat_timeout: float = 10.0
    session_timeout: float = 10.0
    monitoring_interval: float = 3.0
    lc_cpus: int = 8
    lc_memory_gib: int = 16
    # The cluster's HMAC key: a fresh random one per cluster, never a fixed string.
    key: str = field(default_factory=lambda: secrets.token_hex(32))
    domains_per_lc: int = 0  # domains already running on each simulated host at start
    energy: bool = False  # energy management on; each LC runs under a simulated IPMI BMC
    idle_time: float = 120.0
    reserved_nodes: int = 1
    bmc_user: str = "admin"
    # IPMI v2 (lanplus) passwords are at most 20 bytes: 16 hex digits, 64 random bits.
    bmc_password: str = field(default_factory=lambda: secrets.token_hex(8))
    extra: dict[str, Any] = field(default_factory=dict)  # "section.option" -> value for every role


def _tail(log: str, lines: int = 15) -> str:
    """The last lines of a log, to quote in an error: a test's temporary directory (and the log
    with it) may be gone by the time anyone reads the failure."""
    try:
        text = Path(log).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; its last lines:\n" + "\n".join(text) if text else ""


def _http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class LocalCluster:
    def __init__(self, state_dir: Path, options: ClusterOptions | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.options = options or ClusterOptions()
        self.zk: ZooKeeperServer | None = None
        self.processes: list[dict[str, Any]] = []
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def bootstrap_url(self) -> str:
        return f"http://127.0.0.1:{self.options.base_port}"

    # -- configuration -------------------------------------------------------------------
    def _settings(self, role: str, node_id: str, port: int) -> cfg.Settings:
        o = self.options
        assert self.zk is not None
        data: dict[str, dict[str, Any]] = {
            "node": {"id": node_id, "port": port, "listen_address": "127.0.0.1"},
            "cluster": {"key": o.key, "zookeeper": self.zk.address, "session_timeout": o.session_timeout},
            "heartbeat": {"interval": o.heartbeat_interval, "timeout": o.heartbeat_timeout},
        }
        if role != "bootstrap":
            data["monitoring"] = {"interval": o.monitoring_interval, "summary_interval": o.monitoring_interval}
        if role == "groupmanager" and o.energy:
            data["groupmanager"] = {"energy_management": True, "idle_time": o.idle_time, "reserved_nodes": o.reserved_nodes,
                                    "wakeup_time": max(30.0, 4 * o.heartbeat_timeout)}
        for dotted, value in o.extra.items():
            section, key = dotted.split(".", 1)
            if section in cfg.ROLE_SECTIONS[role]:
                data.setdefault(section, {})[key] = value
        return cfg.from_dict(data)

    def _write_config(self, role: str, node_id: str, port: int, extra: dict[str, Any] | None = None) -> Path:
        settings = self._settings(role, node_id, port)
        for dotted, value in (extra or {}).items():
            section, key = dotted.split(".", 1)
            setattr(getattr(settings, section), key, value)
        path = self.state_dir / "config" / f"{node_id}.toml"
        write_private(path, cfg.render_toml(settings, role, comments=False))  # it holds the key
        return path

    def plan(self) -> list[dict[str, Any]]:
        """Every process of the cluster: role, id, port, config (written), log."""
        o = self.options
        specs: list[dict[str, Any]] = []
        port = o.base_port

        def add(role: str, node_id: str, extra: dict[str, Any] | None = None) -> None:
            nonlocal port
            specs.append(
                {
                    "role": role,
                    "id": node_id,
                    "port": port,
                    "config": str(self._write_config(role, node_id, port, extra)),
                    "log": str(self.state_dir / "logs" / f"{node_id}.log"),
                }
            )
            port += 1

        add("bootstrap", "bootstrap-1")
        for i in range(1, o.gms + 1):
            add("groupmanager", f"gm-{i}")
        hosts = self.state_dir / "hosts"
        hosts.mkdir(parents=True, exist_ok=True)
        for i in range(1, o.lcs + 1):
            xml = hosts / f"lc-{i}.xml"
            names = [f"lc-{i}-vm-{k}" for k in range(1, o.domains_per_lc + 1)]
            xml.write_text(host_xml(o.lc_cpus, o.lc_memory_gib * 1024 * 1024, names))
            extra: dict[str, Any] = {"localcontroller.hypervisor_uri": f"test://{xml}"}
            if o.energy:
                bmc_port = free_port()
                extra.update({
                    "localcontroller.power_test_mode": True,
                    "localcontroller.wakeup_driver": "IPMI",
                    "localcontroller.wakeup_options": f"-I lanplus -H 127.0.0.1 -p {bmc_port} -U {o.bmc_user} -P {o.bmc_password}",
                })
            add("localcontroller", f"lc-{i}", extra)
            if o.energy:
                specs[-1]["bmcPort"] = bmc_port
        return specs

    # -- processes -----------------------------------------------------------------------
    def command(self, spec: dict[str, Any]) -> list[str]:
        argv = [sys.executable, "-m", MODULES[spec["role"]], "--config", spec["config"]]
        if spec.get("bmcPort"):
            # The host's power is the BMC's: chassis power on/off starts/stops the LC process.
            o = self.options
            return [sys.executable, "-m", "snooze.dev.sim.bmc", "--port", str(spec["bmcPort"]), "--user", o.bmc_user,
                    "--password", o.bmc_password, "--on", "--log", spec["log"] + ".host", "--", *argv]
        return argv

    def spawn(self, spec: dict[str, Any]) -> int:
        with open_log(spec["log"], f"{spec['role']} {spec['id']} starting on 127.0.0.1:{spec['port']}") as log:
            proc = subprocess.Popen(
                self.command(spec),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        spec["pid"] = proc.pid
        self._children[proc.pid] = proc
        return proc.pid

    def process(self, node_id: str) -> dict[str, Any]:
        for spec in self.processes:
            if spec["id"] == node_id:
                return spec
        raise ClusterError(f"no process {node_id}")

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one process (kill -9 by default) and reap it."""
        spec = self.process(node_id)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spec["pid"], sig)
        proc = self._children.pop(spec["pid"], None)
        if proc is not None:
            proc.wait(10)

    def restart(self, node_id: str) -> int:
        """Start a stopped process again with the same config (so the same id)."""
        spec = self.process(node_id)
        if running(spec.get("pid"), spec["config"]):
            raise ClusterError(f"{node_id} is still running")
        pid = self.spawn(spec)
        self.write_manifest()
        return pid

    def add_process(self, role: str, node_id: str, extra: dict[str, Any] | None = None, port: int | None = None) -> dict[str, Any]:
        """Start one more process of ``role`` (``extra``: "section.option" -> value)."""
        port = port or free_port()
        extra = dict(extra or {})
        if role == "localcontroller" and "localcontroller.hypervisor_uri" not in extra:
            xml = self.state_dir / "hosts" / f"{node_id}.xml"
            xml.write_text(host_xml(self.options.lc_cpus, self.options.lc_memory_gib * 1024 * 1024))
            extra["localcontroller.hypervisor_uri"] = f"test://{xml}"
        spec = {
            "role": role, "id": node_id, "port": port,
            "config": str(self._write_config(role, node_id, port, extra)),
            "log": str(self.state_dir / "logs" / f"{node_id}.log"),
        }
        self.processes.append(spec)
        self.spawn(spec)
        self.write_manifest()
        return spec

    def restart_zookeeper(self, down_for: float = 0.0) -> None:
        """Stop ZooKeeper and start it again on the same port and data dir."""
        assert self.zk is not None
        self.zk.stop()
        time.sleep(down_for)
        self.zk.start()
        self.write_manifest()

    # -- start-up ------------------------------------------------------------------------
    def ports(self) -> list[tuple[int, str]]:
        """Every fixed port the cluster will listen on, with what listens there."""
        o = self.options
        names = ["the bootstrap"] + [f"group manager gm-{i}" for i in range(1, o.gms + 1)]
        names += [f"local controller lc-{i}" for i in range(1, o.lcs + 1)]
        used = [(o.base_port + i, name) for i, name in enumerate(names)]
        if o.zk_port:
            used.append((o.zk_port, "ZooKeeper"))
        return used

    def check_ports(self) -> None:
        """Fail, naming each one, if a port the cluster needs is taken (before anything starts)."""
        busy = [f"{port} ({what})" for port, what in self.ports() if not (0 < port < 65536 and _port_free(port))]
        if busy:
            raise ClusterError(f"port{'s' if len(busy) > 1 else ''} {', '.join(busy)} on 127.0.0.1 "
                               f"{'are' if len(busy) > 1 else 'is'} in use or invalid; choose another --base-port"
                               + (" or --zk-port" if self.options.zk_port else ""))

    def running_processes(self) -> list[str]:
        """The recorded processes (``id (pid N)``) of ``cluster.json`` that still run."""
        return [f"{name} (pid {pid})" for name, pid, marker in _manifest_entries(self.manifest_path)
                if running(pid, marker)]

    def clean_stale(self) -> bool:
        """Remove the record of a previous cluster whose processes are all gone; True if there was one.

        Raises if any of them still runs: that cluster must be stopped first, not overwritten.
        """
        if not self.manifest_path.exists():
            return False
        still = self.running_processes()
        if still:
            raise ClusterError(f"a cluster is already running from {self.state_dir} ({', '.join(still)}); "
                               f"stop it with 'snooze cluster down --state-dir {self.state_dir}'")
        self.manifest_path.unlink(missing_ok=True)
        # Its configs hold its key; the next cluster writes its own.
        shutil.rmtree(self.state_dir / "config", ignore_errors=True)
        return True

    def prepare(self) -> bool:
        """The private state dir, a stale record cleaned, the ports checked: everything ``up`` does
        before starting anything. Returns True if a stale cluster was cleaned up."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Also when it existed, wider, from an earlier version: its configs hold the cluster key.
        os.chmod(self.state_dir, 0o700)
        cleaned = self.clean_stale()
        self.check_ports()
        return cleaned

    def up(self, *, wait: bool = True, timeout: float = 90.0, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Start ZooKeeper and every process; with ``wait``, until the hierarchy has formed.

        ``stop()`` is polled throughout: once true, everything started so far is stopped and
        :class:`Interrupted` is raised. On any failure, too, nothing is left running.
        """
        stopping = stop or (lambda: False)
        self.prepare()
        o = self.options
        # Simulated hosts start empty, so the cluster's durable state starts empty too.
        shutil.rmtree(self.state_dir / "zookeeper", ignore_errors=True)
        # ZooKeeper expires sessions on tick boundaries: a tick of a tenth of the session timeout
        # keeps failover within session timeout + a fraction, instead of + a whole 1 s tick.
        tick_ms = int(min(1000, max(100, o.session_timeout * 100)))
        self.zk = ZooKeeperServer(self.state_dir / "zookeeper", o.zk_port or free_port(), tick_ms=tick_ms)
        try:
            self.zk.launch()
            self.write_manifest()
            try:
                self.zk.wait_ready(30.0, stop=stopping)
            except ZooKeeperError as exc:
                raise (Interrupted(str(exc)) if stopping() else ClusterError(str(exc))) from exc
            self.processes = self.plan()
            for spec in self.processes:
                if stopping():
                    raise Interrupted("interrupted while starting the cluster")
                self.spawn(spec)
                self.write_manifest()
            if wait:
                self.wait_formed(timeout, stop=stopping)
        except BaseException:
            self.down()
            raise
        return self.manifest()

    def manifest(self) -> dict[str, Any]:
        assert self.zk is not None
        return {
            "stateDir": str(self.state_dir),
            "zookeeper": self.zk.address,
            "zookeeperPid": self.zk.pid,
            "zookeeperDataDir": str(self.zk.data_dir),
            "bootstrapUrl": self.bootstrap_url,
            "options": {k: v for k, v in self.options.__dict__.items() if k not in SECRET_OPTIONS},
            "processes": self.processes,
        }

    def write_manifest(self) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        write_private(tmp, json.dumps(self.manifest(), indent=2))
        tmp.replace(self.manifest_path)

    def hierarchy(self, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            hierarchy: dict[str, Any] | None = _http_json(self.bootstrap_url + "/bootstrap?getCompleteHierarchy", timeout=timeout)
            return hierarchy
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def wait_formed(self, timeout: float, *, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Until every local controller is assigned to a group manager."""
        want = {p["id"] for p in self.processes if p["role"] == "localcontroller"}
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if stop is not None and stop():
                raise Interrupted("interrupted while the hierarchy was forming")
            for spec in self.processes:
                if not alive(spec["pid"]):
                    raise ClusterError(f"{spec['id']} exited during start-up; see {spec['log']}{_tail(spec['log'])}")
            # A short timeout: a stop request is seen within it.
            last = self.hierarchy(timeout=2.0)
            if last is not None and assigned_lcs(last) >= want:
                return last
            time.sleep(0.2)
        raise ClusterError(f"hierarchy did not form within {timeout}s; logs in {self.state_dir / 'logs'}")

    def down(self) -> None:
        stop_manifest(self.state_dir, processes=self.processes, zk=self.zk)
        for proc in self._children.values():
            with contextlib.suppress(Exception):
                proc.wait(1)
        self._children.clear()


def assigned_lcs(hierarchy: dict[str, Any]) -> set[str]:
    return {lc["id"] for gm in hierarchy.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", [])}


def _port_free(port: int) -> bool:
    """Free for a service: TCP bindable with SO_REUSEADDR (as the services bind) and UDP free."""
    import socket

    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _manifest_entries(path: Path) -> list[tuple[str, int, str]]:
    """(id, pid, marker) of every process recorded in ``path``: the marker is what its command
    line must still contain for the PID to be ours (its config; ZooKeeper's data dir)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    entries = [(str(p.get("id")), int(p["pid"]), str(p.get("config", "")))
               for p in data.get("processes", []) if isinstance(p, dict) and isinstance(p.get("pid"), int)]
    if isinstance(data.get("zookeeperPid"), int):
        entries.append(("zookeeper", data["zookeeperPid"], str(data.get("zookeeperDataDir") or "zoo.cfg")))
    return entries


def stop_manifest(state_dir: Path, *, processes: list[dict[str, Any]] | None = None, zk: ZooKeeperServer | None = None) -> int:
    """Stop every process of the cluster in ``state_dir``; returns how many were running.

    Once none of them runs any more, ``cluster.json`` is removed: it describes a running cluster.
    """
    state_dir = Path(state_dir).resolve()
    manifest = state_dir / "cluster.json"
    data: dict[str, Any] = {}
    if manifest.exists():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(manifest.read_text())
    procs = processes if processes is not None else data.get("processes", [])
    stopped = 0
    for spec in reversed(procs):
        pid = spec.get("pid")
        if pid and kill_group(pid, spec["config"]):
            stopped += 1
    if zk is not None:
        if zk.process is not None and zk.process.poll() is None:
            stopped += 1
        zk.stop()
    elif data.get("zookeeperPid") and kill_group(data["zookeeperPid"], data.get("zookeeperDataDir", "zoo.cfg")):
        stopped += 1
    if not any(running(pid, marker) for _name, pid, marker in _manifest_entries(manifest)):
        manifest.unlink(missing_ok=True)
    return stopped
