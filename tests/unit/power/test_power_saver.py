"""The local controller's power-saving actions: state to command mapping, failures, test mode."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from localcontroller.power import DEFAULT_COMMANDS, STATES, PowerActionError, PowerSaver


def test_original_states_and_default_commands() -> None:
    assert STATES == ("SHUTDOWN", "SUSPEND_TO_RAM", "SUSPEND_TO_DISK", "SUSPEND_TO_BOTH")
    saver = PowerSaver()
    assert saver.commands == {
        "SHUTDOWN": ["shutdown", "-h", "now"],
        "SUSPEND_TO_RAM": ["systemctl", "suspend"],
        "SUSPEND_TO_DISK": ["systemctl", "hibernate"],
        "SUSPEND_TO_BOTH": ["systemctl", "hybrid-sleep"],
    }
    assert set(DEFAULT_COMMANDS) == set(STATES)


def test_overrides_replace_only_their_state() -> None:
    saver = PowerSaver({"SUSPEND_TO_RAM": ["pm-suspend"]})
    assert saver.commands["SUSPEND_TO_RAM"] == ["pm-suspend"]
    assert saver.commands["SHUTDOWN"] == ["shutdown", "-h", "now"]


@pytest.mark.parametrize("commands", [{"HALT": ["true"]}, {"SHUTDOWN": "shutdown -h now"}])
def test_bad_configuration(commands: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PowerSaver(commands)  # type: ignore[arg-type]


def _harmless(tmp_path: Path) -> dict[str, list[str]]:
    # Every state writes its name to a file of its own: never a real shutdown in tests.
    return {
        state: [sys.executable, "-c", f"open({str(tmp_path / state)!r}, 'w').write({state!r})"]
        for state in STATES
    }


def _written(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("state", STATES)
async def test_each_state_runs_its_own_command(tmp_path: Path, state: str) -> None:
    await PowerSaver(_harmless(tmp_path)).apply(state)
    assert _written(tmp_path) == [state]
    assert (tmp_path / state).read_text() == state


async def test_unknown_state(tmp_path: Path) -> None:
    saver = PowerSaver(_harmless(tmp_path))
    with pytest.raises(PowerActionError, match="unknown power state 'REBOOT'"):
        await saver.apply("REBOOT")
    assert _written(tmp_path) == []


async def test_failing_command() -> None:
    script = "import sys; sys.stderr.write('Access denied'); sys.exit(1)"
    saver = PowerSaver({"SUSPEND_TO_RAM": [sys.executable, "-c", script]})
    with pytest.raises(
        PowerActionError, match="SUSPEND_TO_RAM: .* exited with code 1: Access denied"
    ):
        await saver.apply("SUSPEND_TO_RAM")


async def test_false_and_missing_commands() -> None:
    saver = PowerSaver({"SHUTDOWN": ["false"], "SUSPEND_TO_DISK": ["/nonexistent/hibernate"]})
    with pytest.raises(PowerActionError, match="SHUTDOWN: 'false' exited with code 1"):
        await saver.apply("SHUTDOWN")
    with pytest.raises(PowerActionError, match="cannot run '/nonexistent/hibernate'"):
        await saver.apply("SUSPEND_TO_DISK")


async def test_disabled_state() -> None:
    with pytest.raises(PowerActionError, match="SUSPEND_TO_BOTH is disabled"):
        await PowerSaver({"SUSPEND_TO_BOTH": []}).apply("SUSPEND_TO_BOTH")


async def test_command_timeout() -> None:
    saver = PowerSaver({"SHUTDOWN": ["sleep", "600"]}, timeout=0.3)
    with pytest.raises(PowerActionError, match="timed out after 0.3 s"):
        await saver.apply("SHUTDOWN")


async def test_test_mode_calls_back_after_returning(tmp_path: Path) -> None:
    called: asyncio.Queue[str] = asyncio.Queue()
    saver = PowerSaver(
        _harmless(tmp_path), test_mode=True, on_test_action=called.put_nowait, test_delay=0.05
    )
    await saver.apply("SUSPEND_TO_RAM")
    # apply returned before the action: the reply to the group manager goes out first.
    assert called.empty()
    assert await asyncio.wait_for(called.get(), 10) == "SUSPEND_TO_RAM"
    assert _written(tmp_path) == [], "test mode must not run the configured commands"


async def test_test_mode_awaits_an_async_callback() -> None:
    done = asyncio.Event()

    async def stop_lc(state: str) -> None:
        await asyncio.sleep(0)
        done.set()

    await PowerSaver(test_mode=True, on_test_action=stop_lc, test_delay=0).apply("SHUTDOWN")
    await asyncio.wait_for(done.wait(), 10)


async def test_test_mode_still_refuses_unknown_states() -> None:
    calls: list[str] = []
    saver = PowerSaver(test_mode=True, on_test_action=calls.append, test_delay=0)
    with pytest.raises(PowerActionError):
        await saver.apply("HIBERNATE")
    await asyncio.sleep(0.05)
    assert calls == []


def test_test_mode_without_callback_terminates_own_process() -> None:
    # In its own interpreter: the default test action is SIGTERM to the calling process.
    script = (
        "import asyncio\n"
        "from localcontroller.power import PowerSaver\n"
        "async def main():\n"
        "    await PowerSaver(test_mode=True, test_delay=0.1).apply('SHUTDOWN')\n"
        "    print('replied', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == "replied\n"
    assert proc.returncode == -signal.SIGTERM
