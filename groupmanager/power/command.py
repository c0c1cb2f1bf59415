"""Command wake-up: wakes a host by running a configured command (drivers COMMAND and TEST).

The options are one command line, split like a shell would split words (``shlex``) but run
without a shell, for example ``"/usr/local/bin/pdu-outlet on rack3 12"``. The wake-up
succeeded if the command exits 0 within the timeout; otherwise the command (and whatever
it started in its process group) is killed and the error says how it failed.

TEST is the same driver under another name, for the local development cluster, where the
command starts a local-controller process that stands for the host (typically a script
that launches it in the background and returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess

from groupmanager.power.driver import DEFAULT_TIMEOUT, WakeupError, WakeupSettingsError

__all__ = ["CommandWakeup"]

# The end of stderr is where a failing tool says why; the start may be a long banner.
_STDERR_TAIL = 400


class CommandWakeup:
    def __init__(self, argv: list[str], *, timeout: float = DEFAULT_TIMEOUT, name: str = "COMMAND"):
        if not argv:
            raise WakeupSettingsError(f"{name}: no command given in the wake-up options")
        self.argv = argv
        self.timeout = timeout
        self.name = name

    @classmethod
    def from_options(
        cls, options: str, *, timeout: float = DEFAULT_TIMEOUT, name: str = "COMMAND"
    ) -> CommandWakeup:
        try:
            argv = shlex.split(options)
        except ValueError as exc:
            raise WakeupSettingsError(f"{name}: cannot parse {options!r}: {exc}") from None
        return cls(argv, timeout=timeout, name=name)

    async def wake(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise WakeupError(f"{self.name}: cannot run {self.argv[0]!r}: {exc}") from exc
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            raise WakeupError(
                f"{self.name}: {self.argv[0]!r} timed out after {self.timeout:g} s (killed)"
            ) from None
        finally:
            if proc.returncode is None:
                # Also on cancellation: a wake-up command must not outlive its request.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc.returncode != 0:
            raise WakeupError(
                f"{self.name}: {self.argv[0]!r} {_describe_exit(proc.returncode)}"
                + _stderr_suffix(stderr)
            )

    async def power_status(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"CommandWakeup({self.name}, {shlex.join(self.argv)!r})"


def _describe_exit(returncode: int | None) -> str:
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
