"""Traffic between the network namespaces a test made: the one way tests connect from one
"guest" to another (after checking the route names the test's own device), and the servers
that accept such connections."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterable

from snooze.dev import netns


def tcp_connects(ns: str, target: str, port: int, timeout: float, *, device: str = "eth0",
                 source: str | None = None) -> bool:
    """A TCP connection from inside ``ns`` to ``target:port`` is set up within ``timeout``
    (False if refused or unanswered). Never sent unless ``ns`` routes ``target`` through
    ``device``: from anywhere else a private address could leave the machine."""
    assert netns.route_device(ns, target) == device, "never send outside the test's namespaces"

    def attempt() -> bool:
        try:
            with socket.create_connection((target, port), timeout=timeout,
                                          source_address=(source, 0) if source else None):
                return True
        except OSError:
            return False

    return netns.call_in(ns, attempt)


def _accept_and_close(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()


def serve_tcp(listeners: Iterable[socket.socket]) -> None:
    """Accept (and close) every connection to ``listeners``, each from a daemon thread, until
    :func:`close_all` closes them."""
    for listener in listeners:
        threading.Thread(target=_accept_and_close, args=(listener,), daemon=True).start()


def close_all(sockets: Iterable[socket.socket]) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def namespace_prefix(tag: str) -> str:
    """``TAG<pid>``, this test process's prefix for the namespaces it makes, after deleting
    those a killed earlier run left (its pid, in their names, is gone)."""
    def dead(name: str) -> bool:
        pid = name[len(tag):].split("-")[0]
        return pid.isdigit() and not os.path.exists(f"/proc/{pid}")

    netns.delete_namespaces([n for n in netns.namespaces(tag) if dead(n)])
    return f"{tag}{os.getpid()}"


class Pinger:
    """ICMP echo requests to ``target`` every ``interval`` seconds from inside ``ns`` (a raw
    socket on a thread living there), each reply's arrival time recorded: ``longest_gap()`` is
    the longest time without a reply (a live migration's downtime as a pinging peer sees it).
    Sent only if ``ns`` routes ``target`` through ``device``."""

    def __init__(self, ns: str, target: str, device: str, interval: float = 0.01) -> None:
        assert netns.route_device(ns, target) == device, "never send outside the test's namespaces"
        self.ns, self.target, self.interval = ns, target, interval
        self.replies: list[float] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ping-{target}", daemon=True)

    @staticmethod
    def _checksum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        return ~total & 0xFFFF

    def _run(self) -> None:
        netns.enter(self.ns)
        ident = os.getpid() & 0xFFFF
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.settimeout(self.interval / 4)
            while not self._stop.is_set():
                self.sent += 1
                header = struct.pack("!BBHHH", 8, 0, 0, ident, self.sent & 0xFFFF)
                payload = b"snooze-ping"
                packet = struct.pack("!BBHHH", 8, 0, self._checksum(header + payload), ident, self.sent & 0xFFFF) + payload
                s.sendto(packet, (self.target, 0))
                until = time.monotonic() + self.interval
                while time.monotonic() < until:
                    try:
                        data, (source, _) = s.recvfrom(2048)
                    except TimeoutError:
                        continue
                    icmp = data[(data[0] & 0x0F) * 4:]
                    if source == self.target and len(icmp) >= 8 and icmp[0] == 0 and int.from_bytes(icmp[4:6], "big") == ident:
                        self.replies.append(time.monotonic())

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_gap(self, since: float | None = None) -> float:
        times = [t for t in self.replies if since is None or t >= since]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=float("inf"))
