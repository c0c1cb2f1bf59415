"""The COMMAND, TEST and NONE wake-up drivers, and the driver factory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from groupmanager.power import (
    DRIVERS,
    CommandWakeup,
    NoWakeup,
    WakeupDriver,
    WakeupError,
    WakeupSettingsError,
    make_wakeup_driver,
)


async def test_command_success_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "woken"
    driver = make_wakeup_driver({"driver": "COMMAND", "options": f"touch '{marker}'"})
    await driver.wake()
    assert marker.exists()
    assert await driver.power_status() is None


async def test_command_is_not_run_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "out"
    script = f"import sys; open({str(marker)!r}, 'w').write(repr(sys.argv[1:]))"
    driver = CommandWakeup([sys.executable, "-c", script, "a;b", "$HOME"])
    await driver.wake()
    assert marker.read_text() == repr(["a;b", "$HOME"])


async def test_command_failure_reports_exit_code_and_stderr() -> None:
    script = "import sys; sys.stderr.write('outlet 12 is jammed'); sys.exit(3)"
    driver = CommandWakeup([sys.executable, "-c", script])
    with pytest.raises(WakeupError, match="exited with code 3: outlet 12 is jammed"):
        await driver.wake()


async def test_false_fails() -> None:
    with pytest.raises(WakeupError, match="'false' exited with code 1"):
        await make_wakeup_driver({"driver": "COMMAND", "options": "false"}).wake()


async def test_missing_program() -> None:
    driver = make_wakeup_driver({"driver": "COMMAND", "options": "/nonexistent/wake-host x"})
    with pytest.raises(WakeupError, match="cannot run '/nonexistent/wake-host'"):
        await driver.wake()


async def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    # The command starts a child of its own: a timed-out wake-up must leave neither behind.
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pidfile)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)\n"
    )
    driver = CommandWakeup([sys.executable, "-c", script], timeout=0.5)
    try:
        with pytest.raises(WakeupError, match="timed out after 0.5 s"):
            await driver.wake()
        pids = [int(p) for p in pidfile.read_text().split()]
        for pid in pids:
            assert await _gone(pid), f"pid {pid} survived the timeout"
    finally:
        _kill_leftovers(pidfile)


async def _gone(pid: int) -> bool:
    # The orphaned grandchild is reaped by init, not by us: give it a moment.
    for _ in range(100):
        if not _running(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _kill_leftovers(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    for pid in pidfile.read_text().split():
        cmdline = Path(f"/proc/{pid}/cmdline")
        # Only our own processes: the pid could in theory have been reused.
        if cmdline.exists() and (
            b"sleep" in cmdline.read_bytes() or b"python" in cmdline.read_bytes()
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


async def test_test_driver_is_a_command_driver(tmp_path: Path) -> None:
    marker = tmp_path / "lc-started"
    driver = make_wakeup_driver({"driver": "TEST", "options": f"touch {marker}"})
    assert isinstance(driver, CommandWakeup)
    assert driver.name == "TEST"
    await driver.wake()
    assert marker.exists()
    with pytest.raises(WakeupError, match="^TEST: 'false' exited with code 1"):
        await make_wakeup_driver({"driver": "TEST", "options": "false"}).wake()


async def test_none_driver_refuses() -> None:
    for settings in ({"driver": "NONE"}, {"driver": "none", "options": "ignored"}, {}):
        driver = make_wakeup_driver(settings)
        assert isinstance(driver, NoWakeup)
        with pytest.raises(WakeupError, match="host has no wake-up driver"):
            await driver.wake()
        assert await driver.power_status() is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"driver": "KAPOWER3", "options": "x"}, "unknown wake-up driver 'KAPOWER3'"),
        ({"driver": "COMMAND", "options": ""}, "no command given"),
        ({"driver": "COMMAND", "options": "'unterminated"}, "cannot parse"),
        ({"driver": "COMMAND", "options": ["true"]}, "must be a string"),
        ({"driver": "COMMAND", "options": "true", "timeout": 0}, "positive number"),
        ({"driver": "COMMAND", "options": "true", "timeout": "soon"}, "positive number"),
    ],
)
def test_bad_settings(settings: dict[str, object], message: str) -> None:
    with pytest.raises(WakeupSettingsError, match=message):
        make_wakeup_driver(settings)


def test_every_driver_satisfies_the_protocol() -> None:
    options = {
        "IPMI": "-I lanplus -H 127.0.0.1 -U u -P p",
        "WOL": "00:1a:2b:3c:4d:5e",
        "COMMAND": "true",
        "TEST": "true",
        "NONE": "",
    }
    for name in DRIVERS:
        driver = make_wakeup_driver({"driver": name, "options": options[name]})
        assert isinstance(driver, WakeupDriver)
        assert driver.name == name
