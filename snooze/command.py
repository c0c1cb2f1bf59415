"""Running a host command with a deadline: no shell, its own process group, killed (with
whatever it started) on timeout or cancellation, and an error that says how it failed.

Used by the wake-up drivers of group managers and the power-saving actions of local controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

# The end of stderr is where a failing tool says why; the start may be a long banner.
_STDERR_TAIL = 400


class CommandError(Exception):
    """The command could not run, timed out, or exited non-zero; the message says which."""


async def run_command(argv: Sequence[str], timeout: float, what: str) -> None:
    """Run ``argv``; raise CommandError prefixed with ``what`` unless it exits 0 in time."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
    except OSError as exc:
        raise CommandError(f"{what}: cannot run {argv[0]!r}: {exc}") from exc
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise CommandError(f"{what}: {argv[0]!r} timed out after {timeout:g} s (killed)") from None
    finally:
        if proc.returncode is None:
            # Also on cancellation: a host command must not outlive its request.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode != 0:
        raise CommandError(f"{what}: {argv[0]!r} {describe_exit(proc.returncode)}{_stderr_suffix(stderr)}")


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _stderr_suffix(stderr: bytes | None) -> str:
    text = (stderr or b"").decode("utf-8", "replace").strip()
    if not text:
        return ""
    if len(text) > _STDERR_TAIL:
        text = "..." + text[-_STDERR_TAIL:]
    return f": {text}"
