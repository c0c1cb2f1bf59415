"""Wake-on-LAN: wakes a host by broadcasting a magic packet for its network card.

Settings options, as in the original Snooze: ``"MAC [broadcast_address] [port]"``, for
example ``"00:1a:2b:3c:4d:5e 192.168.1.255 9"``; the address defaults to 255.255.255.255
and the port to 9 (discard). The packet is the standard one: six 0xFF bytes, then the MAC
address sixteen times, in one UDP datagram. Nothing answers a magic packet, so the driver
cannot tell whether the host woke, nor its power status.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shlex
import socket
from dataclasses import dataclass

from groupmanager.power.driver import WakeupError, WakeupSettingsError

__all__ = ["WolOptions", "WolWakeup", "magic_packet", "parse_mac", "parse_wol_options"]

DEFAULT_BROADCAST = "255.255.255.255"
DEFAULT_PORT = 9

_MAC = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class WolOptions:
    mac: bytes
    broadcast: str = DEFAULT_BROADCAST
    port: int = DEFAULT_PORT


def parse_mac(text: str) -> bytes:
    """The six bytes of a MAC written aa:bb:cc:dd:ee:ff, aa-bb-..., aabb.ccdd.eeff or bare."""
    digits = re.sub(r"[:.\-]", "", text.strip().lower())
    if not _MAC.fullmatch(digits):
        raise WakeupSettingsError(f"WOL: {text!r} is not a MAC address")
    return bytes.fromhex(digits)


def parse_wol_options(options: str) -> WolOptions:
    words = shlex.split(options)
    if not 1 <= len(words) <= 3:
        raise WakeupSettingsError(
            f"WOL options must be 'MAC [broadcast_address] [port]', got {options!r}"
        )
    mac = parse_mac(words[0])
    broadcast = words[1] if len(words) > 1 else DEFAULT_BROADCAST
    try:
        ipaddress.IPv4Address(broadcast)
    except ValueError:
        raise WakeupSettingsError(f"WOL: {broadcast!r} is not an IPv4 address") from None
    port = DEFAULT_PORT
    if len(words) > 2:
        try:
            port = int(words[2])
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise WakeupSettingsError(f"WOL: {words[2]!r} is not a UDP port")
    return WolOptions(mac=mac, broadcast=broadcast, port=port)


def magic_packet(mac: bytes) -> bytes:
    if len(mac) != 6:
        raise ValueError("a MAC address is six bytes")
    return b"\xff" * 6 + mac * 16


class WolWakeup:
    name = "WOL"

    def __init__(self, options: WolOptions) -> None:
        self.options = options

    @classmethod
    def from_options(cls, options: str) -> WolWakeup:
        return cls(parse_wol_options(options))

    async def wake(self) -> None:
        target = (self.options.broadcast, self.options.port)
        packet = magic_packet(self.options.mac)
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                # Without SO_BROADCAST the kernel refuses a broadcast destination (EACCES).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                await loop.sock_sendto(sock, packet, target)
        except OSError as exc:
            raise WakeupError(
                f"WOL: cannot send the magic packet to {target[0]}:{target[1]}: {exc}"
            ) from exc

    async def power_status(self) -> str | None:
        return None

    def __repr__(self) -> str:
        mac = ":".join(f"{b:02x}" for b in self.options.mac)
        return f"WolWakeup({mac} via {self.options.broadcast}:{self.options.port})"
