"""Wake-on-LAN: option parsing and the magic packet as it arrives on a loopback socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from groupmanager.power import (
    WakeupError,
    WakeupSettingsError,
    WolOptions,
    WolWakeup,
    magic_packet,
    make_wakeup_driver,
    parse_wol_options,
)
from groupmanager.power.wol import parse_mac

MAC = bytes.fromhex("001a2b3c4d5e")


def test_magic_packet_layout() -> None:
    packet = magic_packet(MAC)
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert [packet[6 + 6 * i : 12 + 6 * i] for i in range(16)] == [MAC] * 16


@pytest.mark.parametrize(
    "text", ["00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e", "001A2B3C4D5E"]
)
def test_mac_spellings(text: str) -> None:
    assert parse_mac(text) == MAC


@pytest.mark.parametrize(
    "text", ["00:1a:2b:3c:4d", "00:1a:2b:3c:4d:5e:6f", "zz:1a:2b:3c:4d:5e", ""]
)
def test_bad_mac(text: str) -> None:
    with pytest.raises(WakeupSettingsError, match="MAC"):
        parse_mac(text)


def test_options_defaults_and_overrides() -> None:
    assert parse_wol_options("00:1a:2b:3c:4d:5e") == WolOptions(MAC, "255.255.255.255", 9)
    assert parse_wol_options("00:1a:2b:3c:4d:5e 192.168.1.255 7") == WolOptions(
        MAC, "192.168.1.255", 7
    )


@pytest.mark.parametrize(
    "text", ["", "00:1a:2b:3c:4d:5e bcast", "00:1a:2b:3c:4d:5e 10.0.0.255 0", "a b c d"]
)
def test_bad_options(text: str) -> None:
    with pytest.raises(WakeupSettingsError):
        parse_wol_options(text)


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock
    finally:
        sock.close()


async def test_wake_sends_magic_packet_to_loopback(udp_listener: socket.socket) -> None:
    port = udp_listener.getsockname()[1]
    driver = make_wakeup_driver({"driver": "WOL", "options": f"00:1a:2b:3c:4d:5e 127.0.0.1 {port}"})
    assert isinstance(driver, WolWakeup)
    await driver.wake()
    data, _ = await asyncio.to_thread(udp_listener.recvfrom, 2048)
    assert data == b"\xff" * 6 + MAC * 16
    assert await driver.power_status() is None


async def test_send_failure_is_a_wakeup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(asyncio.get_running_loop(), "sock_sendto", refuse)
    driver = WolWakeup(WolOptions(MAC, "127.0.0.1", 9))
    with pytest.raises(WakeupError, match="cannot send the magic packet to 127.0.0.1:9"):
        await driver.wake()
