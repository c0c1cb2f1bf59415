"""A private Open vSwitch for development and tests: its own ``ovsdb-server`` and
``ovs-vswitchd`` (Debian's ``openvswitch-switch``), with every file (database, sockets, pid
files, logs) in one directory of ours, ``ovs-vswitchd`` inside a network namespace we made.

Nothing is shared with a system Open vSwitch: ``OVS_RUNDIR``, ``OVS_DBDIR`` and ``OVS_LOGDIR``
point at the private directory, the database is created from the packaged schema (with the
Nuage VRS tables added, ``snooze.vif.vrs_schema``), and both
daemons are our children, stopped by their PIDs. Bridges must use the userspace datapath
(``datapath_type=netdev``): the machine has no openvswitch kernel module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from snooze.procs import open_log
from snooze.vif import vrs_schema

__all__ = ["OVS_SCHEMA", "OvsError", "OvsSwitch", "available"]

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class OvsError(RuntimeError):
    pass


def available() -> str | None:
    """None if a private Open vSwitch can run here, else why not."""
    for tool in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package openvswitch-switch; ./scripts/setup installs it)"
    if not OVS_SCHEMA.exists():
        return f"{OVS_SCHEMA} is missing"
    return None


class OvsSwitch:
    """One host's Open vSwitch. ``directory`` must be short: the sockets' paths must fit in 108
    bytes (``/tmp/…``)."""

    def __init__(self, directory: Path, netns: str | None = None, schema: Path = OVS_SCHEMA) -> None:
        self.directory = Path(directory)
        self.netns = netns
        self.schema = schema
        self.db_path = self.directory / "conf.db"
        self.socket = self.directory / "db.sock"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def remote(self) -> str:
        """The OVSDB connection string (``unix:PATH``) for ovsdbapp and ``ovs-vsctl --db``."""
        return f"unix:{self.socket}"

    def _env(self) -> dict[str, str]:
        d = str(self.directory)
        return dict(os.environ, OVS_RUNDIR=d, OVS_DBDIR=d, OVS_LOGDIR=d, OVS_SYSCONFDIR=d)

    def _argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def vsctl(self, *args: str, timeout: float = 10.0) -> str:
        out = subprocess.run(["ovs-vsctl", f"--db={self.remote}", f"--timeout={int(timeout)}", *args],
                             capture_output=True, text=True, env=self._env(), timeout=timeout + 5)
        if out.returncode != 0:
            raise OvsError(f"ovs-vsctl {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def start(self, timeout: float = 15.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.db_path.exists():
            # The packaged schema with the Nuage VRS tables (Nuage_VM_Table, Nuage_Port_Table).
            schema = vrs_schema.write_extended(self.schema, self.directory / "vswitch-nuage.ovsschema")
            subprocess.run(["ovsdb-tool", "create", str(self.db_path), str(schema)], check=True,
                           capture_output=True, env=self._env())
        self.start_ovsdb(timeout)
        self.vsctl("--no-wait", "init")
        self._spawn("ovs-vswitchd", [self.remote, f"--unixctl={self.directory / 'ovs-vswitchd.ctl'}"])
        deadline = time.monotonic() + timeout
        ctl = self.directory / "ovs-vswitchd.ctl"
        while not ctl.exists():  # made once ovs-vswitchd runs its main loop
            self._check("ovs-vswitchd")
            if time.monotonic() > deadline:
                raise OvsError(f"ovs-vswitchd did not start within {timeout}s; see {self.directory}/ovs-vswitchd.log")
            time.sleep(0.02)

    def start_ovsdb(self, timeout: float = 15.0) -> None:
        """(Re)start ``ovsdb-server`` on the existing database (also after ``kill_ovsdb``)."""
        self._spawn("ovsdb-server", [str(self.db_path), f"--remote=punix:{self.socket}",
                                     f"--unixctl={self.directory / 'ovsdb-server.ctl'}"])
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            self._check("ovsdb-server")
            if time.monotonic() > deadline:
                raise OvsError(f"ovsdb-server did not start within {timeout}s; see {self.directory}/ovsdb-server.log")
            time.sleep(0.02)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open_log(self.directory / f"{name}.out", name)
        with log:
            self._procs[name] = subprocess.Popen(
                self._argv(name, *args, f"--pidfile={self.directory / (name + '.pid')}",
                           f"--log-file={self.directory / (name + '.log')}", "--no-chdir"),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                # Its own process group: a launcher stops it by PID with killpg, never ours.
                start_new_session=True)

    def _check(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise OvsError(f"{name} exited with {proc.returncode}; see {self.directory}/{name}.log")

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def pids(self) -> dict[str, int]:
        """The running daemons' PIDs by name (for a launcher's record)."""
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    def kill_ovsdb(self) -> None:
        """SIGKILL ``ovsdb-server`` (the database file stays), as a crash would."""
        self._stop("ovsdb-server", kill=True)
        self.socket.unlink(missing_ok=True)

    def _stop(self, name: str, kill: bool = False) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        for name in ("ovs-vswitchd", "ovsdb-server"):
            self._stop(name)

    def __enter__(self) -> OvsSwitch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
