"""Processes we started, by PID: is one still running, is it still ours, stop its group.

The local cluster records every PID it starts (``cluster.json``) and only ever signals those,
and only while ``/proc/PID/cmdline`` still names what it started (a marker such as the config
path), so a PID reused by someone else's process is never touched. Two traps of the machines
this runs on are handled here, once: init does not reap orphans, so a killed process may stay a
zombie for good while ``os.kill(pid, 0)`` still succeeds (a zombie counts as gone); and a
process may belong to another user (``PermissionError``: it exists, and is not ours to stop).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["alive", "kill_group", "open_log", "ours", "running"]


def alive(pid: int | None) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name in parentheses may itself contain ") ": the state follows the last one.
        if stat.rsplit(") ", 1)[1].startswith("Z"):
            return False
    return True


def ours(pid: int, marker: str) -> bool:
    """True if ``pid`` still runs a command line containing ``marker`` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return bool(marker) and marker in cmdline


def running(pid: int | None, marker: str) -> bool:
    """Alive, and still the process we started."""
    return bool(pid) and alive(pid) and ours(int(pid or 0), marker)


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for anyone else this is a harmless ChildProcessError.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_group(pid: int, marker: str, timeout: float = 8.0) -> bool:
    """SIGTERM the process group ``pid`` leads (or ``pid`` alone if it leads none), SIGKILL it
    after ``timeout``; only if it is ours.

    Returns True if the process was running (and so was stopped).
    """
    if not running(pid, marker):
        return False
    try:
        leader = os.getpgid(pid) == pid
    except OSError:
        leader = False
    # A process that leads no group (one started without a session of its own) is signalled alone.
    send = os.killpg if leader else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        _reap(pid)
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and alive(pid):
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)
    return True


def kill_groups(targets: list[tuple[int, str]], timeout: float = 8.0) -> int:
    """``kill_group`` for many processes at once: every one is sent SIGTERM first, then all are
    waited for together (a cluster's roles stop in the time of the slowest, not of their sum),
    SIGKILL for those still there after ``timeout``. Only ours (``running(pid, marker)``).
    Returns how many were running."""
    mine = [(pid, pid == _pgid(pid)) for pid, marker in targets if running(pid, marker)]

    def send(sig: int) -> None:
        for pid, leader in mine:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                (os.killpg if leader else os.kill)(pid, sig)

    send(signal.SIGTERM)
    for limit, then in ((timeout, signal.SIGKILL), (5.0, None)):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and any(alive(pid) for pid, _ in mine):
            for pid, _ in mine:
                _reap(pid)
            time.sleep(0.05)
        if then is None or not any(alive(pid) for pid, _ in mine):
            break
        send(then)
    for pid, _ in mine:
        _reap(pid)
    return len(mine)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def open_log(path: str | os.PathLike[str], title: str) -> BinaryIO:
    """Open a process's log for appending, after a separator line naming this run and its time.

    Successive runs share a log file; the separator shows where each one starts.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "ab")  # noqa: SIM115 - handed to the caller, who closes it
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    log.write(f"\n===== {now}  {title} =====\n".encode())
    log.flush()
    return log
