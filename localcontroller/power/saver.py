"""Host power saving: what a local controller does when its group manager puts its host to sleep.

The group manager orders one of the original Snooze's states, and the local controller runs
the command configured for it:

=================  ==========================
SHUTDOWN           ``shutdown -h now``
SUSPEND_TO_RAM     ``systemctl suspend``
SUSPEND_TO_DISK    ``systemctl hibernate``
SUSPEND_TO_BOTH    ``systemctl hybrid-sleep``
=================  ==========================

In test mode (the local development cluster, where a "host" is just a local-controller
process) no command runs: the action is to stop this local controller, a short delay after
`PowerSaver.apply` returns so that the reply to the group manager gets out first.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence

from snooze.command import CommandError, run_command

__all__ = ["DEFAULT_COMMANDS", "DEFAULT_STATE", "STATES", "PowerActionError", "PowerSaver"]

log = logging.getLogger(__name__)

STATES = ("SHUTDOWN", "SUSPEND_TO_RAM", "SUSPEND_TO_DISK", "SUSPEND_TO_BOTH")
#: The original's default power-saving action.
DEFAULT_STATE = STATES[0]

DEFAULT_COMMANDS: Mapping[str, Sequence[str]] = {
    "SHUTDOWN": ("shutdown", "-h", "now"),
    "SUSPEND_TO_RAM": ("systemctl", "suspend"),
    "SUSPEND_TO_DISK": ("systemctl", "hibernate"),
    "SUSPEND_TO_BOTH": ("systemctl", "hybrid-sleep"),
}

_STDERR_TAIL = 400

TestAction = Callable[[str], object]
"""Called with the state in test mode; may return an awaitable, which is awaited."""


class PowerActionError(Exception):
    """A power-saving action was refused (unknown state) or its command failed."""


class PowerSaver:
    """Applies power-saving states to this host.

    ``commands`` overrides the command of some states (an empty list disables a state).
    ``timeout`` bounds each command: a suspend command returns after the host resumes, and
    the monotonic clock does not count the time asleep. In ``test_mode`` the action of every
    state is ``on_test_action(state)``, or SIGTERM to this process when no callback is given,
    ``test_delay`` seconds after `apply` returns.
    """

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]] | None = None,
        test_mode: bool = False,
        on_test_action: TestAction | None = None,
        *,
        timeout: float = 60.0,
        test_delay: float = 0.5,
    ) -> None:
        merged = {state: list(argv) for state, argv in DEFAULT_COMMANDS.items()}
        for state, argv in (commands or {}).items():
            if state not in STATES:
                raise ValueError(f"unknown power state {state!r} (expected one of {STATES})")
            if isinstance(argv, str):
                raise ValueError(f"the command of {state} must be an argv list, not a string")
            merged[state] = list(argv)
        self.commands: dict[str, list[str]] = merged
        self.test_mode = test_mode
        self.on_test_action = on_test_action
        self.timeout = timeout
        self.test_delay = test_delay
        self._pending: set[asyncio.Task[None]] = set()

    async def apply(self, state: str) -> None:
        """Put the host in ``state``; raises `PowerActionError`.

        Returns when the command has succeeded (for a suspend, after the host resumed), or in
        test mode at once, the action being scheduled.
        """
        if state not in STATES:
            raise PowerActionError(f"unknown power state {state!r} (expected one of {STATES})")
        if self.test_mode:
            self._schedule_test_action(state)
            return
        argv = self.commands[state]
        if not argv:
            raise PowerActionError(f"{state} is disabled on this host (no command configured)")
        await self._run(state, argv)

    def _schedule_test_action(self, state: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._test_action(state), name=f"power-test-action-{state}"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _test_action(self, state: str) -> None:
        await asyncio.sleep(self.test_delay)
        log.info("test mode: %s means stopping this local controller", state)
        if self.on_test_action is None:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            result = self.on_test_action(state)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # Nobody awaits this task: the reply to the group manager has already gone.
            log.exception("test-mode power action %s failed", state)

    async def _run(self, state: str, argv: list[str]) -> None:
        log.info("%s: running %s", state, argv)
        try:
            await run_command(argv, self.timeout, state)
        except CommandError as exc:
            raise PowerActionError(str(exc)) from exc
