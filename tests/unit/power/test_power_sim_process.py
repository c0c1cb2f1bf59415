"""The simulated BMC's process power backend: power on starts a process group, off kills it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snooze.dev.sim.bmc import CallbackPower, ProcessPower, _parse_args, _proposed_algorithms


def _eventually(condition: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


@pytest.fixture
def powers() -> Iterator[list[ProcessPower]]:
    made: list[ProcessPower] = []
    try:
        yield made
    finally:
        for power in made:
            power.grace = 0.1
            power.close()


def test_power_on_starts_once_and_off_stops(powers: list[ProcessPower]) -> None:
    power = ProcessPower(["sleep", "600"])
    powers.append(power)
    assert not power.is_on() and power.pid is None
    power.power_on()
    pid = power.pid
    assert power.is_on() and pid is not None
    assert os.getpgid(pid) == pid, "the host must lead its own process group"
    power.power_on()
    assert power.pid == pid, "power on while on must not start a second host"
    power.power_off()
    _eventually(lambda: not power.is_on(), "host stopped after power off")
    assert power.pid is None
    power.power_off()  # off while off is a no-op


def test_power_off_reaches_the_whole_group(tmp_path: Path, powers: list[ProcessPower]) -> None:
    pidfile = tmp_path / "grandchild"
    script = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    power = ProcessPower([sys.executable, "-c", script])
    powers.append(power)
    power.power_on()
    _eventually(lambda: pidfile.exists() and pidfile.read_text() != "", "grandchild started")
    grandchild = int(pidfile.read_text())
    try:
        power.power_off()
        _eventually(lambda: not power.is_on(), "host stopped")
        _eventually(lambda: not _running(grandchild), "grandchild stopped")
    finally:
        if _running(grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)


def test_sigkill_after_grace(tmp_path: Path, powers: list[ProcessPower]) -> None:
    ready = tmp_path / "ready"
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(600)\n"
    )
    power = ProcessPower([sys.executable, "-c", script], grace=0.3)
    powers.append(power)
    power.power_on()
    _eventually(ready.exists, "host ignoring SIGTERM")
    power.power_off()
    _eventually(lambda: not power.is_on(), "stubborn host killed after the grace period")


def test_environment_and_log(tmp_path: Path, powers: list[ProcessPower]) -> None:
    log = tmp_path / "host.log"
    script = "import os; print('host', os.environ['SNOOZE_HOST'])"
    env = dict(os.environ, SNOOZE_HOST="lc-3")
    power = ProcessPower([sys.executable, "-c", script], env=env, log_path=log)
    powers.append(power)
    power.power_on()
    _eventually(lambda: not power.is_on(), "host ran to completion")
    assert log.read_text() == "host lc-3\n"


def test_missing_program_raises(powers: list[ProcessPower]) -> None:
    power = ProcessPower(["/nonexistent/local-controller"])
    powers.append(power)
    with pytest.raises(FileNotFoundError):
        power.power_on()
    assert not power.is_on()


def test_empty_command_refused() -> None:
    with pytest.raises(ValueError):
        ProcessPower([])


def test_callback_power_delegates() -> None:
    state = {"on": False}
    power = CallbackPower(
        lambda: state.update(on=True), lambda: state.update(on=False), lambda: state["on"]
    )
    power.power_on()
    assert power.is_on()
    power.power_off()
    assert not power.is_on()


def test_cli_arguments() -> None:
    args = _parse_args(
        ["--port", "0", "--user", "u", "--password", "p", "--on", "--env", "A=1", "--", "lc", "-x"]
    )
    assert (args.port, args.user, args.password, args.on, args.command, args.address) == (
        0,
        "u",
        "p",
        True,
        ["lc", "-x"],
        "127.0.0.1",
    )
    with pytest.raises(SystemExit):
        _parse_args(["--port", "0", "--user", "u", "--password", "p"])


def _open_request(auth: int, integrity: int, confidentiality: int) -> bytearray:
    return (
        bytearray([1, 0, 0, 0, 0xA4, 0xA3, 0xA2, 0xA0])
        + bytearray([0, 0, 0, 8, auth, 0, 0, 0])
        + bytearray([1, 0, 0, 8, integrity, 0, 0, 0])
        + bytearray([2, 0, 0, 8, confidentiality, 0, 0, 0])
    )


def test_open_session_proposals_are_read() -> None:
    # Suite 3 (what the simulator implements) and suite 17 (what pyghmi's client tries first).
    assert _proposed_algorithms(_open_request(1, 1, 1)) == {
        "auth": 1,
        "integrity": 1,
        "confidentiality": 1,
    }
    assert _proposed_algorithms(_open_request(3, 4, 1)) == {
        "auth": 3,
        "integrity": 4,
        "confidentiality": 1,
    }
    assert _proposed_algorithms(_open_request(1, 1, 1)[:20]) is None


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
