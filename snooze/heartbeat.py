"""Heartbeats over UDP: authenticated datagrams, and a failure detector fed by them.

Every process has one UDP endpoint on the same port number as its HTTP control port. By default
heartbeats go unicast to known peers (works on loopback and across routed networks); with
``[heartbeat] multicast_group = "ADDR:PORT"`` they also go to a multicast group, the original's
way on a LAN. Multicast is joined and sent on one interface, named by its address:
``[heartbeat] multicast_interface``, else the advertised address; never a wildcard (the kernel
cannot join a group "on 0.0.0.0" and answers ``No such device``), never wherever the default
route points. A datagram with a bad HMAC, a newer protocol version or garbage bytes is dropped
and counted in ``dropped``; it never reaches a handler and never raises.

A heartbeat says "I am alive now", so it is only believed while fresh: a ``ReplayGuard``
(``monotonic``) drops a copy of one already received (``replay``), one whose timestamp is
outside the window (``stale_timestamp``) and one older than the last accepted from its sender
(``out_of_order``), so replaying a dead peer's captured heartbeats cannot keep it listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from snooze.config import ConfigError, parse_multicast_group
from snooze.models import NetworkAddress
from snooze.protocol import (
    DEFAULT_WINDOW,
    BadSignature,
    Envelope,
    Keyring,
    OutOfOrder,
    ProtocolError,
    RejectionLog,
    ReplayGuard,
    as_keyring,
    decode,
    encode,
)

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, tuple[str, int]], None]

WILDCARDS = ("", "0.0.0.0", "::", "*")


class MulticastError(ConfigError):
    """Multicast heartbeats cannot start on this host as configured; the message names the option."""


#: Datagrams read per readiness event at most (see ``_Protocol.datagram_received``).
DRAIN = 256
MAX_DATAGRAM = 65536


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: HeartbeatEndpoint, sock: socket.socket | None = None) -> None:
        self.endpoint = endpoint
        self.sock = sock

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.endpoint._received(data, addr)
        # asyncio reads one datagram per readiness event, so a loop busy with many connections
        # (a group leader while 2,000 hosts join) reads its heartbeats one per iteration: they
        # queue in the socket until they are older than the replay window, and peers that are
        # alive are declared dead. Read what is already there too, up to DRAIN of them.
        if self.sock is None:
            return
        for _ in range(DRAIN):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.endpoint.dropped["receive_error"] += 1
                return
            self.endpoint._received(data, addr[:2])

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        self.endpoint.dropped["send_error"] += 1


class HeartbeatEndpoint:
    def __init__(
        self, key: bytes | Keyring, sender: str, *, multicast_group: str = "", ttl: int = 1,
        multicast_interface: str = "", window: float = DEFAULT_WINDOW, clock: Callable[[], float] = time.time,
    ) -> None:
        """``multicast_interface``: address (or host name) of the interface multicast is joined
        and sent on; empty = the address ``start`` binds to, which must then be a specific one.
        ``key``: the cluster key, or the process's keyring (shared: a reload changes it here too)."""
        self.keys = as_keyring(key)
        self.sender = sender
        self.guard = ReplayGuard(window, monotonic=True, clock=clock)
        self._log_refusal = RejectionLog(log)
        self.handlers: dict[str, Handler] = {}
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # datagrams sent, by kind (one per peer)
        self.multicast: tuple[str, int] | None = None
        if multicast_group:
            self.multicast = parse_multicast_group(multicast_group)
        self.multicast_interface = multicast_interface
        #: The interface address multicast was joined on, once started.
        self.interface: str | None = None
        self.ttl = ttl
        self._transport: asyncio.DatagramTransport | None = None
        self._mtransport: asyncio.DatagramTransport | None = None

    def on(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def start(self, address: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        if self.multicast:  # before binding anything: a bad interface must leave nothing open
            self.interface = await self._multicast_interface(address)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setblocking(False)
            sock.bind((address, port))
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self, sock), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        if self.interface is not None:
            try:
                self._mtransport = await self._join_multicast(self.interface)
            except BaseException:
                transport.close()
                self._transport = None
                raise

    async def _multicast_interface(self, address: str) -> str:
        """The IPv4 address of the interface to join and send on (host names resolved)."""
        chosen = self.multicast_interface or address
        if chosen.strip() in WILDCARDS:
            raise MulticastError(
                f"multicast heartbeats need an interface: {chosen or 'no address'} is a wildcard; set "
                "[heartbeat] multicast_interface (or [node] advertise_address) to this host's address "
                "on the heartbeat network")
        try:
            return str(ipaddress.IPv4Address(chosen))
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(chosen, None, family=socket.AF_INET,
                                                                 type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise MulticastError(f"multicast heartbeats: cannot resolve interface address {chosen!r} "
                                 f"([heartbeat] multicast_interface / [node] advertise_address): {exc}") from None
        return str(infos[0][4][0])

    async def _join_multicast(self, interface: str) -> asyncio.DatagramTransport:
        assert self.multicast is not None
        group, port = self.multicast
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Bound to the group, not to 0.0.0.0: this socket gets that group's datagrams only,
            # not unicast (or other groups') traffic that happens to use the same port.
            sock.bind((group, port))
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            except OSError as exc:
                raise MulticastError(
                    f"cannot join multicast group {group}:{port} on interface {interface} "
                    f"([heartbeat] multicast_interface): {exc.strerror or exc}; it must be an address of "
                    "one of this host's interfaces, with multicast enabled") from None
            # Send on the configured interface only, never wherever the default route points.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            loop = asyncio.get_running_loop()
            sock.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self, sock), sock=sock)
        except BaseException:
            sock.close()
            raise
        log.info("multicast heartbeats on %s:%d via interface %s (ttl %d)", group, port, interface, self.ttl)
        return transport

    def close(self) -> None:
        for t in (self._transport, self._mtransport):
            if t is not None:
                t.close()

    def send(self, kind: str, epoch: int, body: Any, peers: Iterable[NetworkAddress]) -> None:
        if self._transport is None:
            return
        data = encode(self.keys.signing, kind, self.sender, epoch, body)
        for peer in peers:
            try:
                self._transport.sendto(data, (peer.address, peer.port))
                self.sent[kind] += 1
            except OSError:
                self.dropped["send_error"] += 1
        if self._mtransport is not None and self.multicast is not None:
            # Its own nonce: a peer that gets both copies must not count one as a replay.
            try:
                self._mtransport.sendto(encode(self.keys.signing, kind, self.sender, epoch, body), self.multicast)
            except OSError:
                self.dropped["send_error"] += 1

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            env = decode(self.keys.accepted, data)
        except ProtocolError as exc:
            self.dropped[exc.reason] += 1
            if isinstance(exc, BadSignature):  # garbage is not worth a line; another key is
                self._log_refusal(exc, f"{addr[0]}:{addr[1]}")
            return
        if env.sender == self.sender:
            return  # our own multicast echo
        try:
            self.guard.check(env)
        except ProtocolError as exc:
            self.dropped[exc.reason] += 1
            if not isinstance(exc, OutOfOrder):  # UDP reorders: not worth a warning
                self._log_refusal(exc, f"{env.sender} at {addr[0]}:{addr[1]} ({env.kind})")
            return
        handler = self.handlers.get(env.kind)
        if handler is None:
            self.dropped["unknown_kind"] += 1
            return
        self.received[env.kind] += 1
        try:
            handler(env, addr)
        except Exception:
            self.dropped["handler_error"] += 1
            log.exception("heartbeat handler for %s failed", env.kind)


class FailureDetector:
    """Declares a peer dead when it has not been heard from for ``timeout`` seconds."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.last_seen: dict[str, float] = {}

    def heard(self, peer: str) -> None:
        self.last_seen[peer] = self.clock()

    def forget(self, peer: str) -> None:
        self.last_seen.pop(peer, None)

    def alive(self, peer: str) -> bool:
        seen = self.last_seen.get(peer)
        return seen is not None and self.clock() - seen <= self.timeout

    def until_dead(self, peer: str) -> float:
        """Seconds until ``peer`` counts as dead if nothing more is heard from it (0 if it
        already does, or was never heard from): a watcher can sleep that long instead of
        polling ``alive``."""
        seen = self.last_seen.get(peer)
        return 0.0 if seen is None else max(0.0, seen + self.timeout - self.clock())

    def expired(self) -> list[str]:
        now = self.clock()
        return [p for p, t in self.last_seen.items() if now - t > self.timeout]
