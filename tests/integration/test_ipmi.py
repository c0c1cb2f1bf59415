"""Waking a host over real IPMI: the IPMI wake-up driver against the simulated BMC.

The BMC runs as ``python -m snooze.dev.sim.bmc`` on a free 127.0.0.1 port, its chassis power
being a ``sleep 600`` process that stands for the host; ipmitool checks what the driver did,
as an independent client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from groupmanager.power import IpmiWakeup, WakeupError, make_wakeup_driver
from snooze.dev.sim.bmc import CallbackPower, ProcessPower, SimulatedBMC

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _ipmitool_installed() -> None:
    # A missing tool is a failed set-up, not a reason to skip: scripts/setup installs it.
    assert shutil.which("ipmitool"), "ipmitool is missing: run scripts/setup (apt-get install ipmitool)"

USER, PASSWORD = "admin", "secret"
# Bounds a step that should take milliseconds, so that a broken build fails instead of hanging.
LIMIT = 30.0


@dataclass
class ProcessBmc:
    port: int
    pidfile: Path
    proc: subprocess.Popen[str]

    def settings(self, password: str = PASSWORD, user: str = USER) -> dict[str, str]:
        return {
            "driver": "IPMI",
            "options": f"-I lanplus -H 127.0.0.1 -p {self.port} -U {user} -P {password}",
        }

    def host_pid(self) -> int | None:
        """Pid of the running ``sleep 600`` host, or None."""
        try:
            pid = int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _running(pid) and b"sleep" in _cmdline(pid) else None


def _start_bmc(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int, Path]:
    pidfile = tmp_path / "host.pid"
    # The host writes its pid, then becomes `sleep 600` (same pid) so the test can watch it.
    host = ["sh", "-c", f"echo $$ > '{pidfile}'; exec sleep 600"]
    with open(tmp_path / "bmc.err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snooze.dev.sim.bmc", "--port", "0", "--user", USER]
            + ["--password", PASSWORD, "--grace", "2", "--log", str(tmp_path / "host.log")]
            + [*extra, "--", *host],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("listening on 127.0.0.1:"):
            pytest.fail(f"simulated BMC did not start: {(tmp_path / 'bmc.err').read_text()}")
        return proc, int(line.rsplit(":", 1)[1]), pidfile
    except BaseException:
        _stop_bmc(proc, pidfile)
        raise


def _stop_bmc(proc: subprocess.Popen[str], pidfile: Path) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(LIMIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        # Should the BMC have failed to power its host off, do it here.
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(pidfile.read_text())
            if _running(pid) and b"sleep" in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[ProcessBmc]:
    proc, port, pidfile = _start_bmc(tmp_path)
    try:
        yield ProcessBmc(port, pidfile, proc)
    finally:
        _stop_bmc(proc, pidfile)


def ipmitool(port: int, *command: str, password: str = PASSWORD, cipher: str = "3") -> str:
    result = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-C", cipher]
        + ["-U", USER, "-P", password, *command],
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    return (result.stdout + result.stderr).strip()


async def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


# -- the process BMC, driven by the wake-up driver ------------------------------------------


async def test_wake_powers_the_host_on(bmc: ProcessBmc) -> None:
    assert await asyncio.to_thread(ipmitool, bmc.port, "chassis", "power", "status") == (
        "Chassis Power is off"
    )
    assert bmc.host_pid() is None
    driver = make_wakeup_driver(bmc.settings())
    assert await driver.power_status() == "off"

    await asyncio.wait_for(driver.wake(), LIMIT)

    await wait_for(bmc.host_pid, "host process started by power on")
    assert await asyncio.to_thread(ipmitool, bmc.port, "chassis", "power", "status") == (
        "Chassis Power is on"
    )
    assert await driver.power_status() == "on"


async def test_wake_is_idempotent(bmc: ProcessBmc) -> None:
    driver = make_wakeup_driver(bmc.settings())
    await driver.wake()
    await wait_for(bmc.host_pid, "host started")
    first = bmc.host_pid()
    # A second login to the same BMC right after a logout: pyghmi's stale-login trap.
    await driver.wake()
    await driver.wake()
    assert bmc.host_pid() == first


async def test_power_off_stops_the_host(bmc: ProcessBmc) -> None:
    driver = make_wakeup_driver(bmc.settings())
    await driver.wake()
    await wait_for(bmc.host_pid, "host started")
    pid = bmc.host_pid()
    assert pid is not None

    answer = await asyncio.to_thread(ipmitool, bmc.port, "chassis", "power", "off")
    assert answer == "Chassis Power Control: Down/Off"

    await wait_for(lambda: not _running(pid), "host process stopped by power off")
    assert await driver.power_status() == "off"
    # And it can be woken again.
    await driver.wake()
    await wait_for(bmc.host_pid, "host restarted")
    assert bmc.host_pid() != pid


async def test_bad_password(bmc: ProcessBmc) -> None:
    driver = make_wakeup_driver(bmc.settings(password="wrong"))
    with pytest.raises(WakeupError, match="authentication failed") as caught:
        await asyncio.wait_for(driver.wake(), LIMIT)
    assert f"127.0.0.1:{bmc.port}" in str(caught.value)
    assert "wrong" not in str(caught.value)
    assert await asyncio.to_thread(ipmitool, bmc.port, "chassis", "power", "status") == (
        "Chassis Power is off"
    )
    assert bmc.host_pid() is None


async def test_unknown_user(bmc: ProcessBmc) -> None:
    driver = make_wakeup_driver(bmc.settings(user="nobody"))
    with pytest.raises(WakeupError, match="authentication failed"):
        await asyncio.wait_for(driver.wake(), LIMIT)
    assert bmc.host_pid() is None


async def test_unreachable_bmc() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more: the login goes unanswered.
    driver = make_wakeup_driver(
        {
            "driver": "IPMI",
            "options": f"-I lanplus -H 127.0.0.1 -p {port} -U {USER} -P {PASSWORD}",
            "timeout": 2,
        }
    )
    with pytest.raises(WakeupError, match=f"127.0.0.1:{port}.*(unreachable|no answer)"):
        await asyncio.wait_for(driver.wake(), LIMIT)
    with pytest.raises(WakeupError):
        await asyncio.wait_for(driver.power_status(), LIMIT)


def test_bmc_refuses_cipher_suites_it_cannot_speak(bmc: ProcessBmc) -> None:
    # Suite 17 (SHA-256) is refused during session opening rather than accepted and then
    # spoken wrongly; suite 3 works.
    assert "Unable to establish IPMI v2 / RMCP+ session" in ipmitool(
        bmc.port, "chassis", "power", "status", cipher="17"
    )
    assert ipmitool(bmc.port, "chassis", "power", "status", cipher="3") == "Chassis Power is off"


def test_ipmitool_drives_the_process(bmc: ProcessBmc) -> None:
    assert ipmitool(bmc.port, "chassis", "power", "on") == "Chassis Power Control: Up/On"
    deadline = time.monotonic() + LIMIT
    while bmc.host_pid() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bmc.host_pid() is not None
    assert ipmitool(bmc.port, "chassis", "power", "status") == "Chassis Power is on"


def test_stopping_the_bmc_powers_the_host_off(tmp_path: Path) -> None:
    proc, port, pidfile = _start_bmc(tmp_path, "--on")
    try:
        deadline = time.monotonic() + LIMIT
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(pidfile.read_text())
        assert _running(pid)
        assert ipmitool(port, "chassis", "power", "status") == "Chassis Power is on"
        proc.terminate()
        assert proc.wait(LIMIT) == 0
        assert not _running(pid)
    finally:
        _stop_bmc(proc, pidfile)


# -- the BMC in-process, as a test fixture of another component would use it ----------------


async def test_in_process_bmc_with_callbacks() -> None:
    calls: list[str] = []
    state = {"on": False}

    def on() -> None:
        calls.append("on")
        state["on"] = True

    def off() -> None:
        calls.append("off")
        state["on"] = False

    bmc = SimulatedBMC(CallbackPower(on, off, lambda: state["on"]), user=USER, password=PASSWORD)
    bmc.start()
    try:
        port = bmc.port
        # pyghmi's client in the same process as the BMC: they must not share state.
        driver = IpmiWakeup.from_options(f"-H 127.0.0.1 -p {port} -U {USER} -P {PASSWORD}")
        assert await driver.power_status() == "off"
        await driver.wake()
        assert calls == ["on"]
        assert await driver.power_status() == "on"
        answer = await asyncio.to_thread(ipmitool, port, "chassis", "power", "off")
        assert answer == "Chassis Power Control: Down/Off"
        assert calls == ["on", "off"]
        assert await driver.power_status() == "off"
    finally:
        bmc.stop()
    # Stopped means the port is free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))


async def test_in_process_bmc_stop_kills_its_host() -> None:
    power = ProcessPower(["sleep", "600"], grace=2)
    try:
        with SimulatedBMC(power, user=USER, password=PASSWORD) as bmc:
            driver = IpmiWakeup.from_options(f"-H 127.0.0.1 -p {bmc.port} -U {USER} -P {PASSWORD}")
            await driver.wake()
            pid = power.pid
            assert pid is not None
            # Just after the fork the child's command line is still its parent's.
            for _ in range(200):
                if b"sleep" in _cmdline(pid):
                    break
                await asyncio.sleep(0.05)
            assert b"sleep" in _cmdline(pid)
        assert not _running(pid)
    finally:
        power.grace = 0.1
        power.close()
