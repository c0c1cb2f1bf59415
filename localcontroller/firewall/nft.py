"""The one boundary between Snooze and nftables: runs ``nft -j`` with JSON batches.

Every failure (nft missing, refused batch, timeout, unreadable answer) becomes one
:class:`NftError`. A batch is refused *before* it runs unless every command in it names one of
Snooze's own tables (``snooze`` in :data:`render.FAMILIES`): ``flush ruleset``, or any command on
another table, can never be sent from here.

``netns``: run inside that named network namespace (``ip netns exec NAME nft …``) — the tests
use it; a local controller runs in its host's namespace and passes None.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from localcontroller.firewall.render import FAMILIES, TABLE, HostFirewall, removal, render

__all__ = [
    "Applied",
    "BridgeFiltering",
    "NftError",
    "apply",
    "apply_async",
    "available",
    "bridge_filtering",
    "check_scope",
    "enable_bridge_filtering",
    "list_tables",
    "remove",
    "remove_async",
    "run_batch",
    "run_batch_async",
    "table",
    "table_handles_async",
    "usable",
]

NFT = "nft"
TIMEOUT = 30.0
# Kinds of object a command may name inside one of our tables.
OBJECTS = frozenset({"table", "chain", "rule", "set", "map", "element", "counter", "quota", "limit", "ct helper", "flowtable"})


class NftError(RuntimeError):
    """nft could not be run, or refused what it was given; says what and why."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Applied:
    """What one apply did: the number of commands and how long nft took (seconds)."""

    commands: int
    seconds: float


@dataclass(frozen=True)
class BridgeFiltering:
    """Whether bridged IPv4/IPv6 packets go through the inet hooks (br_netfilter) here.

    A value is None where the setting does not exist (no br_netfilter in this kernel).
    """

    iptables: bool | None
    ip6tables: bool | None

    @property
    def ok(self) -> bool:
        return bool(self.iptables) and bool(self.ip6tables)

    def problem(self) -> str | None:
        """None if bridged guests are filtered by ``table inet snooze``; else what is missing."""
        if self.iptables is None:
            return "br_netfilter is not available (no net.bridge.bridge-nf-call-iptables): bridged traffic to guests bypasses table inet snooze"
        missing = [n for n, v in (("bridge-nf-call-iptables", self.iptables), ("bridge-nf-call-ip6tables", self.ip6tables)) if not v]
        if missing:
            return f"net.bridge.{' and net.bridge.'.join(missing)} is 0: bridged traffic to guests bypasses table inet snooze"
        return None


def available() -> str | None:
    """None if nft can be run here; else why not."""
    if shutil.which(NFT) is None:
        return "nft (Debian package nftables) is not installed"
    return None


def _argv(args: Sequence[str], netns: str | None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, NFT, *args]


def _describe(argv: Sequence[str], returncode: int | None, stderr: str) -> str:
    said = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
    return f"{' '.join(argv)} failed ({'exit status ' + str(returncode) if returncode is not None else 'not run'}): {said or 'no message'}"


def _run(args: Sequence[str], netns: str | None, stdin: str | None = None, timeout: float = TIMEOUT) -> str:
    argv = _argv(args, netns)
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise NftError(f"{argv[0]} is not installed: {exc}", argv=argv) from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{' '.join(argv)}: {exc}", argv=argv) from exc
    if done.returncode != 0:
        raise NftError(_describe(argv, done.returncode, done.stderr), argv=argv, returncode=done.returncode, stderr=done.stderr)
    return done.stdout


async def _run_async(args: Sequence[str], netns: str | None, stdin: str | None = None, timeout: float = TIMEOUT) -> str:
    argv = _argv(args, netns)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise NftError(f"{argv[0]} cannot be run: {exc}", argv=argv) from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise NftError(f"{' '.join(argv)}: no answer within {timeout} s", argv=argv) from exc
    if proc.returncode != 0:
        stderr = err.decode(errors="replace")
        raise NftError(_describe(argv, proc.returncode, stderr), argv=argv, returncode=proc.returncode, stderr=stderr)
    return out.decode(errors="replace")


def check_scope(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The commands of ``batch`` if each names one of Snooze's tables; NftError otherwise.

    Refuses ``flush ruleset``, ``list``/``reset`` of anything, and every command on a table
    that is not ``snooze`` in a family of :data:`render.FAMILIES`.
    """
    commands = batch.get("nftables") if isinstance(batch, Mapping) else None
    if not isinstance(commands, list):
        raise NftError("not an nft JSON batch: no 'nftables' list")
    out = []
    for i, command in enumerate(commands):
        if not isinstance(command, dict) or len(command) != 1:
            raise NftError(f"command {i}: not an object with one verb: {command!r}")
        ((verb, body),) = command.items()
        if verb == "metainfo":
            continue
        if verb not in ("add", "create", "insert", "replace", "delete", "destroy", "flush"):
            raise NftError(f"command {i}: verb {verb!r} is not allowed here")
        if not isinstance(body, dict) or len(body) != 1:
            raise NftError(f"command {i}: {verb} of {body!r}: not one object")
        ((kind, obj),) = body.items()
        if kind not in OBJECTS or not isinstance(obj, dict):
            raise NftError(f"command {i}: {verb} {kind}: only Snooze's own tables may be changed")
        family = obj.get("family")
        name = obj.get("name") if kind == "table" else obj.get("table")
        if family not in FAMILIES or name != TABLE:
            raise NftError(f"command {i}: {verb} {kind} in table {family} {name}: only tables {', '.join(f'{f} {TABLE}' for f in FAMILIES)} may be changed")
        out.append(command)
    return out


def run_batch(batch: Mapping[str, Any], netns: str | None = None, timeout: float = TIMEOUT) -> Applied:
    """Run ``batch`` (checked by :func:`check_scope`) in one ``nft -j -f -`` transaction."""
    commands = check_scope(batch)
    start = time.perf_counter()
    _run(["-j", "-f", "-"], netns, json.dumps(batch), timeout)
    return Applied(len(commands), time.perf_counter() - start)


async def run_batch_async(batch: Mapping[str, Any], netns: str | None = None, timeout: float = TIMEOUT) -> Applied:
    """:func:`run_batch` without blocking the event loop."""
    commands = check_scope(batch)
    start = time.perf_counter()
    await _run_async(["-j", "-f", "-"], netns, json.dumps(batch), timeout)
    return Applied(len(commands), time.perf_counter() - start)


def apply(firewall: HostFirewall, netns: str | None = None) -> Applied:
    """Render ``firewall`` and replace Snooze's tables with it, atomically."""
    return run_batch(render(firewall), netns)


async def apply_async(firewall: HostFirewall, netns: str | None = None) -> Applied:
    """:func:`apply` without blocking the event loop."""
    return await run_batch_async(render(firewall), netns)


def remove(netns: str | None = None) -> Applied:
    """Remove Snooze's tables (if there); nothing else is touched."""
    return run_batch(removal(), netns)


async def remove_async(netns: str | None = None) -> Applied:
    """:func:`remove` without blocking the event loop."""
    return await run_batch_async(removal(), netns)


def _json(text: str, argv: Sequence[str]) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise NftError(f"{' '.join(argv)}: unreadable answer: {exc}", argv=argv) from exc
    if not isinstance(value, dict) or not isinstance(value.get("nftables"), list):
        raise NftError(f"{' '.join(argv)}: unexpected answer {text[:200]!r}", argv=argv)
    return value


def list_tables(netns: str | None = None) -> list[tuple[str, str]]:
    """(family, name) of every table (read only)."""
    args = ["-j", "list", "tables"]
    out = _json(_run(args, netns), _argv(args, netns))
    return [(t["table"]["family"], t["table"]["name"]) for t in out["nftables"] if "table" in t]


async def table_handles_async(netns: str | None = None) -> dict[tuple[str, str], int]:
    """(family, name) → handle of every table (read only). A table deleted and made again gets a
    new handle: the daemon compares them to notice that someone else replaced Snooze's."""
    args = ["-j", "list", "tables"]
    out = _json(await _run_async(args, netns), _argv(args, netns))
    return {(t["table"]["family"], t["table"]["name"]): int(t["table"].get("handle", -1)) for t in out["nftables"] if "table" in t}


def usable(netns: str | None = None) -> str | None:
    """None if nft can be run here and may read the ruleset (root or CAP_NET_ADMIN); else why not."""
    reason = available()
    if reason:
        return reason
    try:
        list_tables(netns)
    except NftError as exc:
        return str(exc)
    return None


def table(family: str, name: str, netns: str | None = None) -> dict[str, Any] | None:
    """``nft -j list table FAMILY NAME`` (read only; any table), or None if it does not exist."""
    if (family, name) not in list_tables(netns):
        return None
    args = ["-j", "list", "table", family, name]
    return _json(_run(args, netns), _argv(args, netns))


def _sysctl(path: str, netns: str | None) -> bool | None:
    if netns is None:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip() == "1"
        except OSError:
            return None
    argv = ["ip", "netns", "exec", netns, "cat", path]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{' '.join(argv)}: {exc}", argv=argv) from exc
    if done.returncode != 0:
        return None
    return done.stdout.strip() == "1"


def bridge_filtering(netns: str | None = None) -> BridgeFiltering:
    """Whether this (or ``netns``'s) network namespace passes bridged IP traffic through the
    inet hooks (read only: nothing is changed; the sysctls are per namespace)."""
    return BridgeFiltering(
        iptables=_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables", netns),
        ip6tables=_sysctl("/proc/sys/net/bridge/bridge-nf-call-ip6tables", netns),
    )


def enable_bridge_filtering(netns: str | None = None) -> BridgeFiltering:
    """Set ``net.bridge.bridge-nf-call-iptables`` and ``-ip6tables`` to 1 in this (or ``netns``'s)
    namespace, so bridged guests' traffic reaches table inet snooze; returns the state after.

    Opt-in (the caller decides): the setting is per namespace but applies to every bridge in it
    and to iptables rules too. NftError if the kernel has no br_netfilter or refuses.
    """
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        path = f"/proc/sys/net/bridge/{name}"
        if netns is None:
            try:
                with open(path, "w", encoding="ascii") as f:
                    f.write("1\n")
            except OSError as exc:
                raise NftError(f"cannot set net.bridge.{name}: {exc}") from exc
            continue
        argv = ["ip", "netns", "exec", netns, "sh", "-c", f"echo 1 > {path}"]  # path: a constant
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"{' '.join(argv)}: {exc}", argv=argv) from exc
        if done.returncode != 0:
            raise NftError(_describe(argv, done.returncode, done.stderr), argv=argv, returncode=done.returncode, stderr=done.stderr)
    state = bridge_filtering(netns)
    if not state.ok:
        raise NftError(f"bridge filtering still off after setting it: {state.problem()}")
    return state
