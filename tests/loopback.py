"""Capturing what processes on this machine send each other over loopback, as an attacker on
the path would: a raw AF_PACKET socket on ``lo`` (needs root, as the test command does).

Only IPv4 TCP and UDP to or from the given ports are kept. ``udp(src, dst)`` gives datagram
payloads; ``http_bodies(dst)`` reassembles each TCP stream to ``dst`` and returns the bodies
of the HTTP requests in it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETH_HEADER = 14


@dataclass(frozen=True)
class Segment:
    proto: int  # 6 TCP, 17 UDP
    src: int
    dst: int
    seq: int
    payload: bytes


class LoopbackCapture:
    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.segments: list[Segment] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except (PermissionError, AttributeError) as exc:
            pytest.skip(f"capturing loopback traffic needs root and AF_PACKET: {exc}")
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="loopback-capture", daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue  # loopback shows each packet twice: going out and coming in
            with contextlib.suppress(struct.error, IndexError):
                seg = _parse(frame[ETH_HEADER:])
                if seg is not None and (seg.src in self.ports or seg.dst in self.ports):
                    with self._lock:
                        self.segments.append(seg)

    def udp(self, src: int | None = None, dst: int | None = None) -> list[bytes]:
        with self._lock:
            return [s.payload for s in self.segments
                    if s.proto == 17 and src in (None, s.src) and dst in (None, s.dst)]

    def http_bodies(self, dst: int) -> list[bytes]:
        """Bodies of the HTTP requests sent to port ``dst``, stream by stream."""
        streams: dict[int, dict[int, bytes]] = defaultdict(dict)
        with self._lock:
            for s in self.segments:
                if s.proto == 6 and s.dst == dst and s.payload:
                    streams[s.src][s.seq] = s.payload
        bodies: list[bytes] = []
        for by_seq in streams.values():
            data = b"".join(by_seq[k] for k in sorted(by_seq))
            start = data.find(b"POST ")
            while start != -1:
                end = data.find(b"\r\n\r\n", start)
                if end == -1:
                    break
                length = 0
                for line in data[start:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = data[end + 4 : end + 4 + length]
                if len(body) == length:
                    bodies.append(body)
                start = data.find(b"POST ", end + 4 + length)
        return bodies


def _parse(ip: bytes) -> Segment | None:
    if ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    proto = ip[9]
    l4 = ip[ihl:total]
    if proto == 17:
        src, dst = struct.unpack("!HH", l4[:4])
        return Segment(17, src, dst, 0, bytes(l4[8:]))
    if proto == 6:
        src, dst, seq = struct.unpack("!HHI", l4[:8])
        offset = (l4[12] >> 4) * 4
        return Segment(6, src, dst, seq, bytes(l4[offset:]))
    return None
