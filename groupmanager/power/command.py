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

import shlex

from groupmanager.power.driver import DEFAULT_TIMEOUT, WakeupError, WakeupSettingsError
from snooze.command import CommandError, run_command

__all__ = ["CommandWakeup"]

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
            await run_command(self.argv, self.timeout, self.name)
        except CommandError as exc:
            raise WakeupError(str(exc)) from exc

    async def power_status(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"CommandWakeup({self.name}, {shlex.join(self.argv)!r})"

