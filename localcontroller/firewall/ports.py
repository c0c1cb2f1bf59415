"""Which bridge port is a guest's: found by its MAC, because the network model does not say.

A guest record has its MAC and bridge, not the name of its tap (libvirt names it ``vnetN`` when
the domain starts, and the name changes with every start). The port matters only for the
anti-spoofing chain of ``table bridge snooze``; the filter itself (``table inet snooze``) works
by address and never needs it.

Two ways, tried in order, from one ``ip -j link show`` and one ``bridge -j fdb show``:

1. libvirt's rule for a tap: its own MAC is the guest's with the first octet ``fe`` (so the
   bridge never adopts the guest's MAC as its own). Known as soon as the domain starts.
2. The bridge's forwarding database: the port on which the guest's MAC was learned (any port
   kind: a veth of a container, an OVS internal port). Known once the guest has sent a frame.

A guest whose port is found by neither is rendered without one (no anti-spoofing for it yet);
the daemon looks again on every sync. Reading fails → ``PortsError``; the daemon then renders
without ports rather than not at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Link", "PortsError", "bridge_ports", "guest_ports", "parse_fdb", "parse_links", "tap_mac"]

TIMEOUT = 10.0


class PortsError(RuntimeError):
    """``ip``/``bridge`` could not be run or answered something unreadable."""


@dataclass(frozen=True)
class Link:
    """A network device: its name, MAC (lower case) and the bridge it is a port of (or None)."""

    name: str
    mac: str | None
    master: str | None


def tap_mac(mac: str) -> str:
    """The MAC libvirt gives the tap of a guest whose MAC is ``mac``."""
    return "fe" + mac.lower()[2:]


def parse_links(answer: Any) -> list[Link]:
    """``ip -j link show``'s answer as Links (entries without a name are skipped)."""
    if not isinstance(answer, list):
        raise PortsError(f"ip -j link show: a list was expected, not {type(answer).__name__}")
    out = []
    for entry in answer:
        if not isinstance(entry, dict) or not isinstance(entry.get("ifname"), str):
            continue
        mac = entry.get("address")
        master = entry.get("master")
        out.append(Link(entry["ifname"], mac.lower() if isinstance(mac, str) else None,
                        master if isinstance(master, str) else None))
    return out


def parse_fdb(answer: Any) -> dict[str, str]:
    """``bridge -j fdb show``'s answer as learned MAC → port (entries the bridge holds for its
    own ports, ``permanent``/``self``, are not a guest's and are skipped)."""
    if not isinstance(answer, list):
        raise PortsError(f"bridge -j fdb show: a list was expected, not {type(answer).__name__}")
    out: dict[str, str] = {}
    for entry in answer:
        if not isinstance(entry, dict):
            continue
        mac, port = entry.get("mac"), entry.get("ifname")
        flags = entry.get("flags") or []
        if not isinstance(mac, str) or not isinstance(port, str) or "master" not in entry:
            continue
        if entry.get("state") == "permanent" or "self" in flags:
            continue
        out.setdefault(mac.lower(), port)
    return out


def guest_ports(macs: Iterable[str], links: Iterable[Link], fdb: Mapping[str, str]) -> dict[str, str]:
    """Guest MAC → its port, for the MACs whose port is found (libvirt's tap MAC first, then the
    forwarding database); only bridge ports (devices with a master) are considered."""
    ports = {link.mac: link.name for link in links if link.master and link.mac}
    names = set(ports.values())
    out: dict[str, str] = {}
    for mac in macs:
        mac = mac.lower()
        port = ports.get(tap_mac(mac))
        if port is None:
            learned = fdb.get(mac)
            port = learned if learned in names else None
        if port is not None:
            out[mac] = port
    return out


async def _json(argv: list[str]) -> Any:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise PortsError(f"{argv[0]} cannot be run: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise PortsError(f"{' '.join(argv)}: no answer within {TIMEOUT} s") from exc
    if proc.returncode != 0:
        raise PortsError(f"{' '.join(argv)} failed (exit status {proc.returncode}): {err.decode(errors='replace').strip()}")
    try:
        return json.loads(out or b"[]")
    except ValueError as exc:
        raise PortsError(f"{' '.join(argv)}: unreadable answer: {exc}") from exc


async def bridge_ports(macs: Iterable[str], netns: str | None = None) -> dict[str, str]:
    """Guest MAC → port on this host (or in ``netns``); PortsError if iproute2 fails."""
    wanted = [m for m in macs if m]
    if not wanted:
        return {}
    prefix = ["-n", netns] if netns else []
    links = parse_links(await _json(["ip", *prefix, "-j", "link", "show"]))
    fdb = parse_fdb(await _json(["bridge", *prefix, "-j", "fdb", "show"]))
    return guest_ports(wanted, links, fdb)
