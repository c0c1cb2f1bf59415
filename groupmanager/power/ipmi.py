"""IPMI wake-up: powers a host on through its BMC, over IPMI 2.0 (RMCP+) with pyghmi.

This is the project's only boundary to pyghmi's client: every pyghmi exception (and the
stray ``struct.error``/``TypeError`` its client raises on protocol surprises) becomes a
`WakeupError` here.

Settings options are the original Snooze's, in ipmitool's syntax:
``"-I lanplus -H BMC_ADDRESS -U user -P password"``, plus optionally ``-p PORT`` (default
623), ``-E`` (password from $IPMI_PASSWORD), ``-f FILE`` (password from a file),
``-k KEY`` / ``-y HEXKEY`` (Kg key), ``-L PRIVLEVEL``. ``-C``, ``-N`` and ``-R`` are
accepted and ignored: pyghmi negotiates the cipher suite itself, and the driver's own
timeout bounds every call.

pyghmi's client is blocking and keeps process-wide state on one I/O thread of its own, so
each call runs in a daemon thread of its own, bounded by the timeout; a call that pyghmi
has not finished by then is reported as failed and left to pyghmi's retry logic, which gives
up by itself a few seconds later.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pyghmi.exceptions as pyghmi_exceptions
import pyghmi.ipmi.command as pyghmi_command
import pyghmi.ipmi.private.session as pyghmi_session

from groupmanager.power.driver import DEFAULT_TIMEOUT, WakeupError, WakeupSettingsError

__all__ = ["IpmiOptions", "IpmiWakeup", "parse_ipmi_options"]

DEFAULT_PORT = 623

_PRIVILEGE_LEVELS = {"CALLBACK": 1, "USER": 2, "OPERATOR": 3, "ADMINISTRATOR": 4, "ADMIN": 4}
_WITH_VALUE = set("IHpUPfkyLCNR")
_FLAGS = set("E")

T = TypeVar("T")


@dataclass(frozen=True)
class IpmiOptions:
    host: str
    port: int = DEFAULT_PORT
    user: str = ""
    password: str = field(default="", repr=False)
    kg: bytes | None = field(default=None, repr=False)
    privilege: int | None = None
    """pyghmi privilege level (4 = administrator); None lets pyghmi pick the highest."""


def parse_ipmi_options(options: str) -> IpmiOptions:
    """Read ipmitool-style options (see the module docstring)."""
    try:
        words = shlex.split(options)
    except ValueError as exc:
        raise WakeupSettingsError(f"IPMI: cannot parse options: {exc}") from None
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(words):
        word = words[i]
        if len(word) < 2 or word[0] != "-" or word[1] not in _WITH_VALUE | _FLAGS:
            # Never echo the options: they hold the BMC password.
            raise WakeupSettingsError(f"IPMI: unsupported option or argument {_redact(word)!r}")
        letter = word[1]
        if letter in _FLAGS:
            flags.add(letter)
            i += 1
            continue
        # ipmitool uses getopt, so "-H addr" and "-Haddr" both work.
        if len(word) > 2:
            values[letter] = word[2:]
            i += 1
        elif i + 1 < len(words):
            values[letter] = words[i + 1]
            i += 2
        else:
            raise WakeupSettingsError(f"IPMI: option -{letter} needs a value")

    interface = values.get("I", "lanplus")
    if interface not in ("lanplus", "lan"):
        raise WakeupSettingsError(f"IPMI: interface {interface!r} is not supported (use lanplus)")
    host = values.get("H")
    if not host:
        raise WakeupSettingsError("IPMI: no BMC address (-H) in the options")
    try:
        port = int(values.get("p", DEFAULT_PORT))
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise WakeupSettingsError(f"IPMI: {values['p']!r} is not a UDP port")
    return IpmiOptions(
        host=host,
        port=port,
        user=values.get("U", ""),
        password=_password(values, flags),
        kg=_kg(values),
        privilege=_privilege(values.get("L")),
    )


def _redact(word: str) -> str:
    return word if word.startswith("-") else "<value>"


def _password(values: dict[str, str], flags: set[str]) -> str:
    if "P" in values:
        return values["P"]
    if "E" in flags:
        password = os.environ.get("IPMI_PASSWORD")
        if password is None:
            raise WakeupSettingsError("IPMI: -E given but $IPMI_PASSWORD is not set")
        return password
    if "f" in values:
        try:
            with open(values["f"], encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise WakeupSettingsError(f"IPMI: cannot read the password file: {exc}") from None
    return ""


def _kg(values: dict[str, str]) -> bytes | None:
    if "y" in values:
        try:
            return bytes.fromhex(values["y"].removeprefix("0x"))
        except ValueError:
            raise WakeupSettingsError("IPMI: -y expects a hexadecimal Kg key") from None
    if "k" in values:
        return values["k"].encode("utf-8")
    return None


def _privilege(level: str | None) -> int | None:
    if level is None:
        return None
    try:
        return _PRIVILEGE_LEVELS[level.upper()]
    except KeyError:
        raise WakeupSettingsError(f"IPMI: unknown privilege level {level!r}") from None


class IpmiWakeup:
    name = "IPMI"

    def __init__(self, options: IpmiOptions, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.options = options
        self.timeout = timeout

    @classmethod
    def from_options(cls, options: str, *, timeout: float = DEFAULT_TIMEOUT) -> IpmiWakeup:
        return cls(parse_ipmi_options(options), timeout=timeout)

    async def wake(self) -> None:
        await self._call("power on", lambda command: command.set_power("on", wait=False))

    async def power_status(self) -> str | None:
        reply = await self._call("power status", lambda command: command.get_power())
        state = reply.get("powerstate") if isinstance(reply, dict) else None
        return state if state in ("on", "off") else None

    async def _call(self, what: str, action: Callable[[pyghmi_command.Command], T]) -> T:
        bmc = f"BMC {self.options.host}:{self.options.port}"
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        threading.Thread(
            target=_run_in_thread,
            args=(future, lambda: _session_call(self.options, action)),
            name=f"ipmi-{what.replace(' ', '-')}-{self.options.host}",
            daemon=True,
        ).start()
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise WakeupError(
                f"IPMI {what}: no answer from {bmc} within {self.timeout:g} s "
                "(unreachable, or not a BMC)"
            ) from None
        except _PyghmiFailure as exc:
            raise WakeupError(f"IPMI {what} via {bmc}: {exc.describe()}") from exc.__cause__

    def __repr__(self) -> str:
        return f"IpmiWakeup({self.options.user}@{self.options.host}:{self.options.port})"


class _PyghmiFailure(Exception):
    """A pyghmi error, carried from the worker thread to the event loop."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error

    def describe(self) -> str:
        error = self.error
        text = str(error) if str(error) not in ("", "None") else ""
        if isinstance(error, pyghmi_exceptions.IpmiException):
            lowered = text.lower()
            if "password" in lowered or "unauthorized name" in lowered:
                return f"authentication failed ({text})"
            if not text or "timeout" in lowered or "no longer connected" in lowered:
                return "unreachable (no answer to the session login)"
            return text
        if isinstance(error, pyghmi_exceptions.PyghmiException):
            return text or type(error).__name__
        if isinstance(error, OSError):  # name resolution, no route, socket limits
            return f"cannot reach it ({text or type(error).__name__})"
        # Everything else is pyghmi tripping over a reply it did not expect.
        return f"protocol error ({type(error).__name__}: {text})"


# pyghmi's client forgets to remove a login from its table of logins in progress (it adds
# the key with str credentials and deletes it with bytes), so after a logout the next login
# to the same BMC would pick up the dead session. Logins to one BMC are serialised and the
# stale entry is dropped first.
_login_locks: dict[tuple[str, int, str], threading.Lock] = {}
_login_locks_guard = threading.Lock()


# pyghmi's client registers its wait for a reply after sending the request; a reply that
# arrives first (a BMC on loopback answers in 0.1 ms) is queued but wakes nobody, and the
# caller sleeps until its retry timer, 0.5 to 1.5 s. In the threads of this module, every
# wait is cut into short slices after which pyghmi looks at its queue again.
_WAIT_SLICE = 0.02
_our_thread = threading.local()
# A reload of this module must wrap pyghmi's function, not the previous wrapper.
_pyghmi_io_wait = getattr(pyghmi_session._io_wait, "pyghmi_original", pyghmi_session._io_wait)


def _sliced_io_wait(timeout: float, myaddr: object = None, evq: object = None) -> None:
    if getattr(_our_thread, "active", False):
        timeout = min(timeout, _WAIT_SLICE)
    _pyghmi_io_wait(timeout, myaddr, evq)


_sliced_io_wait.pyghmi_original = _pyghmi_io_wait  # type: ignore[attr-defined]
pyghmi_session._io_wait = _sliced_io_wait


def _session_call(options: IpmiOptions, action: Callable[[pyghmi_command.Command], T]) -> T:
    key = (options.host, options.port, options.user)
    with _login_locks_guard:
        lock = _login_locks.setdefault(key, threading.Lock())
    _our_thread.active = True
    with lock:
        pyghmi_session.Session.initting_sessions.pop(
            (options.host, options.user, options.password, options.port, options.kg), None
        )
        command = pyghmi_command.Command(
            bmc=options.host,
            userid=options.user,
            password=options.password,
            port=options.port,
            kg=options.kg,
            privlevel=options.privilege,
        )
        try:
            return action(command)
        finally:
            # Real BMCs have a handful of session slots: give ours back at once.
            try:
                command.ipmi_session.logout()
            except Exception:  # the answer is already in hand
                pass


def _run_in_thread(future: asyncio.Future[T], call: Callable[[], T]) -> None:
    loop = future.get_loop()
    try:
        result = call()
    except Exception as exc:  # pyghmi raises far more than its own exception types
        failure = _PyghmiFailure(exc)
        failure.__cause__ = exc
        _settle(loop, future, failure=failure)
    else:
        _settle(loop, future, result=result)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    *,
    result: T | None = None,
    failure: BaseException | None = None,
) -> None:
    def settle() -> None:
        if future.done():  # timed out or cancelled meanwhile
            return
        if failure is not None:
            future.set_exception(failure)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the loop closed while pyghmi was still trying
