"""Simulated BMC: an IPMI-over-LAN endpoint on loopback whose chassis power drives callbacks.

A group manager wakes a sleeping host through its baseboard management controller. In the
development cluster and in tests there is no BMC, so this module provides one that speaks
real IPMI 2.0 / RMCP+ (``ipmitool -I lanplus`` and pyghmi's client both work against it) and
maps "chassis power on / off / status" to a `PowerBackend`: three callbacks, ``power_on()``,
``power_off()`` and ``is_on()``. `ProcessPower` is the ready-made backend of the local
cluster: the "host" is a child process (typically a local controller) that power-on starts
and power-off kills.

The IPMI protocol work is pyghmi's server code (`pyghmi.ipmi.bmc.Bmc`), with two changes:

* It serves its own socket from its own thread. pyghmi's stock server shares process-wide
  state (one I/O thread, one handler table) with pyghmi's client, cannot be stopped, and
  cannot release its port; a test that starts and stops BMCs in-process needs all three.
* It refuses open-session requests that do not propose cipher suite 3 (RAKP-HMAC-SHA1,
  HMAC-SHA1-96, AES-CBC-128) with RMCP+ status 0x11, instead of silently answering suite 3
  to everything. pyghmi's client first proposes suite 17 (SHA-256) and falls back to suite 3
  only when refused; the stock server accepted, then signed RAKP2 with SHA-1, and the client
  crashed on the length mismatch (``struct.error``). See docs/power.md.

Run ``python -m snooze.dev.sim.bmc --port P --user U --password W [--on] -- CMD ARGS...`` for a
stand-alone BMC whose chassis power is the process ``CMD ARGS...``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.constants as pyghmi_constants
import pyghmi.ipmi.private.serversession as pyghmi_serversession

__all__ = [
    "CallbackPower",
    "PowerBackend",
    "ProcessPower",
    "SimulatedBMC",
    "main",
]

log = logging.getLogger(__name__)

# RMCP+ status codes (IPMI 2.0, table 13-15) the simulator sends back.
_RMCP_NO_CIPHER_SUITE_MATCH = 0x11
_RMCP_UNAUTHORIZED_NAME = 0x0D
# IPMI completion code for "unspecified error".
_CC_UNSPECIFIED = 0xFF
# The only algorithms pyghmi's server code implements (cipher suite 3).
_SUITE_3 = {"auth": 1, "integrity": 1, "confidentiality": 1}
# Sessions are keyed by client address; every ipmitool run uses a new port, and a BMC that
# never forgets would grow without bound in a long test run.
_MAX_SESSIONS = 64


class PowerBackend(Protocol):
    """What the chassis power of a simulated BMC controls.

    Called from the BMC's thread; each call must return promptly (well under a second), since
    the IPMI reply waits for it and clients retransmit after about a second.
    """

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...

    def is_on(self) -> bool: ...


class CallbackPower:
    """A `PowerBackend` made of three plain callables."""

    def __init__(
        self,
        power_on: Callable[[], None],
        power_off: Callable[[], None],
        is_on: Callable[[], bool],
    ) -> None:
        self._on = power_on
        self._off = power_off
        self._is_on = is_on

    def power_on(self) -> None:
        self._on()

    def power_off(self) -> None:
        self._off()

    def is_on(self) -> bool:
        return self._is_on()


class ProcessPower:
    """A `PowerBackend` whose "host" is a child process.

    Power on starts ``argv`` in its own process group (so that power off reaches everything
    the host started), output appended to ``log_path``. Power off sends SIGTERM to the group
    and returns at once; a watcher thread sends SIGKILL if the leader is still alive after
    ``grace`` seconds. The power is on while the leader process is alive, so a host that
    exits by itself is seen as off.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        grace: float = 5.0,
    ) -> None:
        if not argv:
            raise ValueError("ProcessPower needs a command to run")
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.cwd = cwd
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """Pid of the running host process, or None when the power is off."""
        with self._lock:
            proc = self._proc
            return proc.pid if proc is not None and proc.poll() is None else None

    def is_on(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def power_on(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            out: IO[bytes] | int = subprocess.DEVNULL
            if self.log_path is not None:
                out = open(self.log_path, "ab")  # the child inherits it; closed below
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                if not isinstance(out, int):
                    out.close()
            log.info("power on: started pid %d: %s", self._proc.pid, self.argv)

    def power_off(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            _signal_group(proc, signal.SIGTERM)
        threading.Thread(
            target=self._finish_off, args=(proc,), name=f"bmc-power-off-{proc.pid}", daemon=True
        ).start()

    def close(self) -> None:
        """Power off and wait until the host process is gone (SIGKILL after the grace)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        self._finish_off(proc)

    def _finish_off(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            log.warning(
                "pid %d ignored SIGTERM for %.1f s: killing its group", proc.pid, self.grace
            )
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Only while the leader is not reaped is its pid certainly still our process group.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class _Session(pyghmi_serversession.ServerSession):  # type: ignore[misc]
    """One client's RMCP+ session, as pyghmi's, with proper refusals."""

    def __init__(
        self,
        authdata: Mapping[str, str],
        kg: bytes | None,
        clientaddr: Any,
        netsocket: socket.socket,
        request: bytearray,
        bmcuuid: uuid.UUID,
        bmc: _Endpoint,
    ) -> None:
        # pyghmi's __init__ also registers the session in its process-wide handler table,
        # where a pyghmi client in the same process would trip over it; this copy does not.
        self.uuid = bmcuuid
        self.currhashlib = hashlib.sha1
        self.currhashlen = 12
        self.rqaddr = pyghmi_constants.IPMI_BMC_ADDRESS
        self.authdata = authdata
        self.servermode = True
        self.ipmiversion = 2.0
        self.sequencenumber = 0
        self.sessionid = 0
        self.bmc = bmc
        self.lastpayload = None
        self.rqlun = None
        self.broken = False
        self.authtype = 6
        self.integrityalgo = 0
        self.confalgo = 0
        self.kg = kg
        self.socket = netsocket
        self.sockaddr = clientaddr
        self.pendingpayloads: collections.deque[Any] = collections.deque()
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.cleaningup = False
        self._customkeepalives = None
        self.k1 = None
        response = self.create_open_session_response(bytearray(request))
        self.send_payload(
            response, pyghmi_constants.payload_types["rmcpplusopenresponse"], retry=False
        )

    def create_open_session_response(self, request: bytearray) -> bytearray:
        proposed = _proposed_algorithms(request)
        if proposed != _SUITE_3:
            # Refusing is what lets a client that prefers SHA-256 fall back to suite 3.
            log.debug("refusing RMCP+ session with algorithms %s", proposed)
            self.refused = True
            return bytearray([request[0], _RMCP_NO_CIPHER_SUITE_MATCH, 0, 0]) + request[4:8]
        self.refused = False
        response: bytearray = super().create_open_session_response(request)
        return response

    def _got_rakp1(self, data: bytearray) -> None:
        namelen = data[27] if len(data) > 27 else 0
        name = bytes(data[28 : 28 + namelen]).decode("utf-8", "replace")
        if namelen == 0 or self.authdata.get(name) is None:
            # pyghmi's server stays silent here, which a client sees as an unreachable BMC.
            reply = bytearray([data[0], _RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(reply, pyghmi_constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def close_server_session(self) -> None:
        self.bmc.forget(self.sockaddr)


def _proposed_algorithms(request: bytearray) -> dict[str, int] | None:
    # RMCP+ Open Session Request (IPMI 2.0 table 13-9): three 8-byte payload records from
    # byte 8, each with its algorithm in byte 4; a zero-length record is a wildcard.
    if len(request) < 32:
        return None
    records = {
        "auth": request[8:16],
        "integrity": request[16:24],
        "confidentiality": request[24:32],
    }
    proposed = {}
    for kind, record in records.items():
        if record[3] == 0:
            return None
        proposed[kind] = record[4] & 0x3F
    return proposed


class _Endpoint(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """pyghmi's BMC logic on a socket that this module owns and serves."""

    def __init__(
        self, authdata: Mapping[str, str], sock: socket.socket, power: PowerBackend
    ) -> None:
        # IpmiServer.__init__ would open the socket through pyghmi's shared I/O thread;
        # these are the attributes it sets, with the same values.
        self.revision = 0
        self.deviceid = 0
        self.firmwaremajor = 1
        self.firmwareminor = 0
        self.ipmiversion = 2
        self.additionaldevices = 0
        self.mfgid = 0
        self.prodid = 0
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.uuid = uuid.uuid4()
        self.authdata = authdata
        lanchannel, ipmi2_only, auth_status, chancap = 1, 0b10000000, 0b00000100, 0b00000010
        self.authcap = struct.pack(
            "BBBBBBBBB", 0, lanchannel, ipmi2_only, auth_status, chancap, 0, 0, 0, 0
        )
        self.kg = None
        self.timeout = 60
        self.port = sock.getsockname()[1]
        self.serversocket = sock
        self.power = power
        self.sessions: collections.OrderedDict[Any, _Session] = collections.OrderedDict()

    def forget(self, clientaddr: Any) -> None:
        self.sessions.pop(clientaddr, None)

    def receive(self, data: bytes, clientaddr: Any) -> None:
        packet = bytearray(data)
        if len(packet) < 14 or not (packet[0] == 6 and packet[2:4] == b"\xff\x07"):
            return
        session = self.sessions.get(clientaddr)
        if session is None or _is_sessionless(packet):
            self.sessionless_data(packet, clientaddr)
        else:
            session._handle_ipmi_packet(packet, sockaddr=clientaddr, qent=(data, clientaddr, None))

    def sessionless_data(self, data: bytearray, sockaddr: Any) -> None:
        if len(data) >= 22 and data[4] == 6 and data[5] & 0x3F == 0x10:
            session = _Session(
                self.authdata, self.kg, sockaddr, self.serversocket, data[16:], self.uuid, self
            )
            self.sessions.pop(sockaddr, None)
            if not session.refused:
                self.sessions[sockaddr] = session
                while len(self.sessions) > _MAX_SESSIONS:
                    self.sessions.popitem(last=False)
            return
        super().sessionless_data(data, sockaddr)

    # -- chassis, as pyghmi's Bmc asks for it ---------------------------------------------

    def get_power_state(self) -> str:
        return "on" if self.power.is_on() else "off"

    def power_on(self) -> int:
        return self._call(self.power.power_on, "power on")

    def power_off(self) -> int:
        return self._call(self.power.power_off, "power off")

    def power_shutdown(self) -> int:
        return self._call(self.power.power_off, "soft power off")

    def get_system_guid(self) -> uuid.UUID:
        return self.uuid

    @staticmethod
    def _call(action: Callable[[], None], what: str) -> int:
        try:
            action()
        except Exception:
            log.exception("simulated BMC: %s failed", what)
            return _CC_UNSPECIFIED
        return 0


def _is_sessionless(packet: bytearray) -> bool:
    # Packets that open or precede a session go to the server, even from an address that
    # already has one: pyghmi's client reuses its UDP port from one login to the next.
    if packet[4] == 6:  # IPMI 2.0 / RMCP+
        payload_type = packet[5] & 0x3F
        session_id = packet[6:10]
        return payload_type == 0x10 or (payload_type in (0, 1) and session_id == b"\0\0\0\0")
    return packet[9:13] == b"\0\0\0\0"  # IPMI 1.5: session id 0


class SimulatedBMC:
    """An IPMI 2.0 BMC on ``address:port`` (UDP) whose chassis power is ``power``.

    ``port=0`` picks a free port; read it from `port` after `start`. Serves from a daemon
    thread; `stop` (or leaving the ``with`` block) closes the socket and, when
    ``power_off_on_stop``, powers the host off and waits for it to be gone.
    """

    def __init__(
        self,
        power: PowerBackend,
        *,
        user: str,
        password: str,
        port: int = 0,
        address: str = "127.0.0.1",
        power_off_on_stop: bool = True,
    ) -> None:
        self.power = power
        self.address = address
        self._requested_port = port
        self._authdata = {user: password}
        self._power_off_on_stop = power_off_on_stop
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the simulated BMC is not started")
        port: int = self._sock.getsockname()[1]
        return port

    def start(self) -> SimulatedBMC:
        if self._thread is not None:
            raise RuntimeError("the simulated BMC is already started")
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.address, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._endpoint = _Endpoint(self._authdata, sock, self.power)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"simulated-bmc-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("simulated BMC listening on %s:%d", self.address, self.port)
        return self

    def stop(self) -> None:
        thread = self._thread
        if thread is not None:
            self._stopping.set()
            os.write(self._wake_w, b"x")
            thread.join()
            self._thread = None
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._power_off_on_stop:
            close = getattr(self.power, "close", None)
            if callable(close):
                close()
            else:
                self.power.power_off()

    def __enter__(self) -> SimulatedBMC:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while not self._stopping.is_set():
            readable, _, _ = select.select([sock.fileno(), self._wake_r], [], [])
            if sock.fileno() not in readable:
                continue
            try:
                data, clientaddr = sock.recvfrom(3000, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                log.exception("simulated BMC: receive failed")
                continue
            try:
                self._endpoint.receive(data, clientaddr)
            except Exception:
                # A malformed packet must not take the BMC down for the next client.
                log.exception("simulated BMC: packet from %s failed", clientaddr)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m snooze.dev.sim.bmc",
        description="A simulated IPMI BMC whose chassis power starts and stops a command.",
    )
    parser.add_argument("--port", type=int, required=True, help="UDP port (0: pick a free one)")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--on", action="store_true", help="start the command at once")
    parser.add_argument("--log", help="append the command's output to this file")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds from SIGTERM to SIGKILL")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("a command is required after --")
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env expects KEY=VALUE, got {item!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = dict(os.environ)
    env.update(item.split("=", 1) for item in args.env)
    power = ProcessPower(args.command, env=env, log_path=args.log, grace=args.grace)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    bmc = SimulatedBMC(
        power, user=args.user, password=args.password, port=args.port, address=args.address
    )
    bmc.start()
    try:
        if args.on:
            power.power_on()
        # Parents wait for this line to know the port is bound (and which, with --port 0).
        print(f"listening on {args.address}:{bmc.port}", flush=True)
        done.wait()
    finally:
        bmc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
