"""snooze.procs's stops on real processes: ``kill_groups`` stops many at once (in the time of
the slowest, SIGKILL for one that ignores SIGTERM), only those whose command line carries their
marker, and a process that leads no group alone."""

from __future__ import annotations

import subprocess
import sys
import time

from snooze.procs import alive, kill_group, kill_groups

# Marks each process as this test's: its command line holds the marker.
SLEEPER = "import sys, time; time.sleep(60)  # snooze-procs-test {}"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)  # snooze-procs-test {}"


def _start(code: str, marker: str, *, session: bool = True) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code.format(marker)], start_new_session=session)


def test_kill_groups_stops_many_at_once_ours_only_and_kills_the_stubborn() -> None:
    procs = [_start(SLEEPER, f"m{i}") for i in range(2)] + [_start(STUBBORN, f"m-stubborn-{i}") for i in range(3)]
    stranger = _start(SLEEPER, "someone-else")
    try:
        time.sleep(0.5)  # every one running its code (the stubborn one ignoring SIGTERM)
        targets = [(p.pid, f"m{i}") for i, p in enumerate(procs[:2])] + [(p.pid, f"m-stubborn-{i}") for i, p in enumerate(procs[2:])]
        targets.append((stranger.pid, "not-its-marker"))  # not ours by its command line: untouched
        started = time.monotonic()
        assert kill_groups(targets, timeout=1.0) == 5
        took = time.monotonic() - started
        assert all(not alive(p.pid) or p.poll() is not None for p in procs)
        # Three that ignore SIGTERM, each given 1 s: one after the other would take 3 s or more.
        assert took < 2.5, f"stopped together, not one after the other: {took:.1f}s"
        assert stranger.poll() is None
    finally:
        for p in [*procs, stranger]:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_process_that_leads_no_group_is_stopped_alone() -> None:
    child = _start(SLEEPER, "m-alone", session=False)  # in this test's own process group
    try:
        time.sleep(0.3)
        assert kill_group(child.pid, "m-alone", timeout=2.0)
        assert child.wait(5) is not None  # and we (its group) are still here
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
