"""Ports for the processes a development cluster or a test starts: always below the kernel's
ephemeral range.

A port chosen now and bound later by another process (a service, a simulated BMC, a
ZooKeeper server) must not be one that the kernel may hand to an outgoing connection in the
meantime. ``bind(0)`` returns exactly such a port, and so does any range that reaches into
``net.ipv4.ip_local_port_range`` (32768–60999 by default): CI saw a local controller of the
200-host test fail with EADDRINUSE because a ZooKeeper client's socket had taken its port,
and a simulated BMC fail the same way because of a UDP client. Below the range the kernel
never picks a port on its own.

Several test processes at once (pytest-xdist's workers) each choose in their own slice of that
room, so that two of them never pick the same range between choosing and binding:
``SNOOZE_PORT_SLICE=I/N`` (set by tests/conftest.py for worker I of N) restricts the choice to
the I-th of N equal slices.
"""

from __future__ import annotations

import os
import random
import socket

__all__ = ["ephemeral_low", "free_port", "free_port_range", "free_udp_port", "port_slice"]

#: Ports below this are left to well-known and system services.
LOWEST = 10000


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    # A machine configured with a very wide ephemeral range still leaves us some room.
    return max(low, LOWEST + 2000)


def _free(address: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the services bind
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def port_slice(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(low, high): where this process chooses ports, ``SNOOZE_PORT_SLICE`` (``I/N``) applied."""
    low, high = LOWEST, ephemeral_low()
    raw = (os.environ if env is None else env).get("SNOOZE_PORT_SLICE", "")
    index, _, count = raw.partition("/")
    if index.isdigit() and count.isdigit() and 0 <= int(index) < int(count):
        width = (high - low) // int(count)
        low, high = low + int(index) * width, low + (int(index) + 1) * width
    return low, high


def free_port_range(count: int, *, udp: bool = False, address: str = "127.0.0.1", attempts: int = 200) -> int:
    """A base port with ``count`` consecutive ports free for TCP (and UDP with ``udp``) on
    ``address``, the whole range below the ephemeral range (and in this process's slice)."""
    low, top = port_slice()
    high = top - count
    if count < 1 or high <= low:
        raise ValueError(f"no room for {count} ports between {low} and {top}")
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    rng = random.SystemRandom()
    for _ in range(attempts):
        base = rng.randrange(low, high)
        if all(_free(address, p, kind) for p in range(base, base + count) for kind in kinds):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {address} below {ephemeral_low()}")


def free_port(address: str = "127.0.0.1") -> int:
    """One TCP port free on ``address`` now, below the ephemeral range."""
    return free_port_range(1, address=address)


def free_udp_port(address: str = "127.0.0.1") -> int:
    """One port free for UDP (and TCP) on ``address`` now, below the ephemeral range."""
    return free_port_range(1, udp=True, address=address)
