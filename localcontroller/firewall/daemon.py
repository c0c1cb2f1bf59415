"""The local controller's firewall daemon: keeps Snooze's nftables tables equal to the
rendering of this host's guests, their firewall groups and the groups' members in ZooKeeper.

One loop (:meth:`FirewallDaemon.run`) does every sync: read the inputs (:mod:`.source`, in a
thread), find the guests' bridge ports (:mod:`.ports`), render (:mod:`.render`), and replace the
tables in one ``nft -j`` batch (:mod:`.nft`) — only when the batch differs from the one last
applied, or when Snooze's tables are no longer the ones it made (their handles changed:
someone deleted or replaced them). Never ``flush ruleset``; no other table is named.

When a sync runs is :class:`Pacer`'s decision (pure, tested with a fake clock):

- a change in ZooKeeper (a kazoo watch firing) is synced after ``debounce`` seconds without
  another change, so a burst (a virtual cluster of 50 guests written at once) is one apply —
  but never later than ``max_delay`` after the first change of the burst;
- every ``resync_interval`` seconds a full sync happens anyway: the safety net for a missed
  watch, and how a guest's tap that appeared since (libvirt made it) is picked up;
- a failed sync (ZooKeeper unreachable, nft refusing, a bad record) is logged and retried after
  a jittered exponential backoff (``retry_base`` doubling up to ``retry_cap``); changes do not
  shorten it, a reconnection to ZooKeeper does (resync at once).

Failures never end the loop, and never change the rules: while ZooKeeper is away the tables
applied last stay as they are (fail static: running guests stay protected, nothing opens).
``close()`` stops the loop and leaves the tables in place (they keep protecting the running
guests); ``remove()`` deletes them, for a host that is being decommissioned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kazoo.client import KazooClient, KazooState

from localcontroller.firewall import nft
from localcontroller.firewall.ports import PortsError, bridge_ports
from localcontroller.firewall.render import FAMILIES, TABLE, RenderError, render
from localcontroller.firewall.source import Snapshot, SourceError, ZkSource, host_firewall

__all__ = ["MODES", "FirewallDaemon", "FirewallSettings", "NftBackend", "Pacer", "decide"]

log = logging.getLogger(__name__)

#: ``[localcontroller] firewall``'s values.
MODES = ("auto", "on", "off")
OURS = tuple((family, TABLE) for family in FAMILIES)


@dataclass(frozen=True)
class FirewallSettings:
    """When the daemon syncs (seconds)."""

    #: Quiet time after a change in ZooKeeper before the sync: a burst of changes is one apply.
    debounce: float = 0.2
    #: A continuous burst is synced at the latest this long after its first change.
    max_delay: float = 2.0
    #: A full sync at least this often (a missed watch, a guest's tap that appeared since).
    resync_interval: float = 30.0
    #: First wait after a failed sync; doubled after each further failure, up to retry_cap.
    retry_base: float = 1.0
    retry_cap: float = 30.0
    #: Bound of each ZooKeeper read.
    read_timeout: float = 10.0


def decide(mode: str, test_driver: bool, nft_problem: str | None) -> tuple[bool, str]:
    """Whether the firewall runs, and why (one line for the log). ``mode`` is the option
    (auto, on, off); ``nft_problem`` is ``nft.usable()``'s answer. ValueError for an ``on``
    that cannot work, or a mode that is none of MODES.

    ``auto`` is off with libvirt's test driver: its guests exist nowhere, and the local
    controllers of a test cluster share one network namespace, where each would replace the
    others' tables."""
    if mode not in MODES:
        raise ValueError(f"firewall must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return False, "off ([localcontroller] firewall = off)"
    if mode == "on":
        if nft_problem:
            raise ValueError(f"firewall = on, but nft cannot be used here: {nft_problem}")
        return True, "on ([localcontroller] firewall = on)"
    if test_driver:
        return False, "off: libvirt's test driver runs no guest to protect (firewall = auto)"
    if nft_problem:
        return False, f"off: {nft_problem} (firewall = auto)"
    return True, "on (firewall = auto: nft is usable here)"


class Pacer:
    """When the next sync is due (a pure state machine on the times it is given)."""

    def __init__(self, settings: FirewallSettings, now: float, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.rng = rng
        self.pending_since: float | None = now  # a first sync at once
        self.last_change: float | None = now - settings.debounce
        self.next_resync = now + settings.resync_interval
        self.retry_at: float | None = None
        self.failures = 0
        self._started: float | None = None

    def changed(self, now: float) -> None:
        """Something the rendering depends on changed (a watch fired)."""
        if self.pending_since is None:
            self.pending_since = now
        self.last_change = now

    def reconnected(self, now: float) -> None:
        """ZooKeeper is back: sync at once, whatever the backoff said."""
        self.retry_at = None
        self.pending_since = now
        self.last_change = now - self.settings.debounce

    def due(self) -> float:
        if self.retry_at is not None:
            return self.retry_at
        at = self.next_resync
        if self.pending_since is not None and self.last_change is not None:
            at = min(at, self.last_change + self.settings.debounce, self.pending_since + self.settings.max_delay)
        return at

    def begin(self, now: float) -> None:
        """A sync starts now: it reads everything that changed before now."""
        self._started = now

    def done(self, now: float, ok: bool) -> None:
        started = self._started if self._started is not None else now
        self._started = None
        if self.last_change is not None and self.last_change >= started:
            self.pending_since = self.last_change  # changed while the sync read: once more
        elif ok:
            self.pending_since = None
        if ok:
            self.failures = 0
            self.retry_at = None
            self.next_resync = now + self.settings.resync_interval
            return
        self.failures += 1
        s = self.settings
        backoff = min(s.retry_cap, s.retry_base * 2 ** min(self.failures - 1, 30))
        self.retry_at = now + backoff * (0.5 + self.rng() / 2)  # equal jitter: hosts spread out
        if self.pending_since is None:
            self.pending_since = now


class NftBackend(Protocol):
    """What the daemon does with nft (the tests give a fake)."""

    async def apply(self, batch: Mapping[str, Any]) -> nft.Applied: ...

    async def handles(self) -> dict[tuple[str, str], int]: ...

    async def remove(self) -> nft.Applied: ...


@dataclass
class Nft:
    """nft in this host's network namespace (or ``netns``)."""

    netns: str | None = None

    async def apply(self, batch: Mapping[str, Any]) -> nft.Applied:
        return await nft.run_batch_async(batch, self.netns)

    async def handles(self) -> dict[tuple[str, str], int]:
        return await nft.table_handles_async(self.netns)

    async def remove(self) -> nft.Applied:
        return await nft.remove_async(self.netns)


class Source(Protocol):
    def read(self, watch: Callable[[Any], None]) -> Snapshot: ...


Ports = Callable[[list[str]], Awaitable[Mapping[str, str]]]
Spawn = Callable[[str, Coroutine[Any, Any, Any]], "asyncio.Task[Any] | None"]


@dataclass
class Status:
    """What the daemon did last (for logs, /health-like answers and the tests)."""

    syncs: int = 0
    applies: int = 0
    failures: int = 0  # consecutive
    last_error: str | None = None
    last_apply: float | None = None  # wall-clock time
    commands: int = 0
    guests: int = 0
    ports: int = 0
    connected: bool = True
    problem: str | None = None  # bridge filtering, if off
    errors: list[str] = field(default_factory=list)  # the last few, newest last

    def to_json(self) -> dict[str, Any]:
        return {"syncs": self.syncs, "applies": self.applies, "failures": self.failures,
                "lastError": self.last_error, "lastApply": self.last_apply, "commands": self.commands,
                "guests": self.guests, "ports": self.ports, "zookeeper": self.connected,
                "bridgeFiltering": self.problem or "ok"}


class FirewallDaemon:
    """Keeps one host's Snooze tables equal to what ZooKeeper says (module docstring)."""

    def __init__(self, source: Source, backend: NftBackend, *, settings: FirewallSettings | None = None,
                 ports: Ports | None = None, client: KazooClient | None = None, netns: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.backend = backend
        self.settings = settings or FirewallSettings()
        self.netns = netns
        self.ports: Ports = ports or (lambda macs: bridge_ports(macs, netns))
        self.client = client
        self.clock = clock
        self.pacer = Pacer(self.settings, clock())
        self.status = Status()
        self._applied: Mapping[str, Any] | None = None
        self._handles: dict[tuple[str, str], int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._ports_error: str | None = None

    @classmethod
    def for_host(cls, client: KazooClient, root: str, host: str, *, netns: str | None = None,
                 settings: FirewallSettings | None = None) -> FirewallDaemon:
        """The daemon of local controller ``host`` (its hypervisor id) of the cluster at ``root``."""
        settings = settings or FirewallSettings()
        return cls(ZkSource(client, root, host, settings.read_timeout), Nft(netns), settings=settings,
                   client=client, netns=netns)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, spawn: Spawn | None = None) -> None:
        """Start syncing: in the caller's scope (``spawn(name, coro)``) or as a task of its own."""
        self._loop = asyncio.get_running_loop()
        if self.client is not None:
            self.status.connected = bool(self.client.connected)
            self.client.add_listener(self._on_state)
        problem = nft.bridge_filtering(self.netns).problem()
        self.status.problem = problem
        if problem:
            log.warning("firewall: %s (docs/firewall.md: modprobe br_netfilter and set the two sysctls to 1)", problem)
        if spawn is not None:
            self._task = spawn("firewall", self.run())
        else:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="firewall")

    async def close(self) -> None:
        """Stop syncing. The tables stay: they keep protecting the running guests."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.remove_listener(self._on_state)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def remove(self) -> None:
        """Delete Snooze's tables (a host being decommissioned); nothing else is touched."""
        await self.backend.remove()
        self._applied = None
        self._handles = None

    def poke(self) -> None:
        """Sync soon (e.g. a guest's domain just started here: its tap can now be found)."""
        self.pacer.changed(self.clock())
        self._wake.set()

    # -- kazoo's thread -> the loop --------------------------------------------------------------
    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _on_watch(self, _event: Any) -> None:
        self._soon(self.poke)

    def _on_state(self, state: str) -> None:
        self._soon(self._state_changed, state)

    def _state_changed(self, state: str) -> None:
        connected = state == KazooState.CONNECTED
        if connected and not self.status.connected:
            log.info("firewall: ZooKeeper is back; resyncing")
            self.pacer.reconnected(self.clock())
            self._wake.set()
        elif not connected and self.status.connected:
            log.warning("firewall: ZooKeeper %s; keeping the rules applied last", state)
        self.status.connected = connected

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sync whenever the pacer says so, for ever; failures are logged and retried."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        while True:
            delay = self.pacer.due() - self.clock()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            await self.sync()

    async def sync(self) -> bool:
        """One sync (read, render, apply if needed); True if the tables match ZooKeeper now."""
        now = self.clock()
        self.pacer.begin(now)
        self.status.syncs += 1
        try:
            await self._sync()
        except (SourceError, RenderError, nft.NftError, TimeoutError, OSError) as exc:
            self._failed(exc)
            self.pacer.done(self.clock(), ok=False)
            return False
        self.status.failures = 0
        self.status.last_error = None
        self.pacer.done(self.clock(), ok=True)
        return True

    def _failed(self, exc: BaseException) -> None:
        self.status.failures += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        self.status.errors = [*self.status.errors[-9:], self.status.last_error]
        # The first failure in a row loudly, then every 10th: a ZooKeeper outage is one line a minute.
        level = logging.WARNING if self.status.failures == 1 or self.status.failures % 10 == 0 else logging.DEBUG
        if self.status.applies == 0 and isinstance(exc, SourceError) and not self.status.connected:
            level = logging.INFO  # a start before the session: the reconnection resyncs at once
        log.log(level, "firewall: sync failed (%d in a row; the rules applied last stay): %s",
                self.status.failures, self.status.last_error)

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        snapshot = await loop.run_in_executor(None, self.source.read, self._on_watch)
        ports = await self._find_ports(snapshot.macs)
        firewall = host_firewall(snapshot, ports)
        batch = render(firewall)
        self.status.guests = len(snapshot.guests)
        self.status.ports = len(ports)
        if batch == self._applied:
            handles = await self.backend.handles()
            if self._handles is not None and all(handles.get(t) == self._handles.get(t) for t in OURS):
                return
            log.warning("firewall: Snooze's tables were changed by someone else; applying them again")
        applied = await self.backend.apply(batch)
        handles = await self.backend.handles()
        self._applied = batch
        self._handles = {t: handles[t] for t in OURS if t in handles}
        self.status.applies += 1
        self.status.commands = applied.commands
        self.status.last_apply = time.time()
        log.info("firewall: %d guests here, %d groups: %d commands applied in %.0f ms",
                 len(snapshot.guests), len(firewall.groups), applied.commands, applied.seconds * 1000)

    async def _find_ports(self, macs: list[str]) -> Mapping[str, str]:
        """The guests' ports; on failure none (the filter works without them; anti-spoofing
        waits for the next sync), said once per distinct error."""
        try:
            found = await self.ports(macs)
        except PortsError as exc:
            if str(exc) != self._ports_error:
                log.warning("firewall: guests' bridge ports not found (no anti-spoofing until they are): %s", exc)
            self._ports_error = str(exc)
            return {}
        self._ports_error = None
        return found
