"""The role scope: the narrow interface a role works through, and everything it owns.

A process (a local controller, a bootstrap, a group manager) has one root ``Scope``; each role
it runs (the group leader, a group manager's manager role) gets a ``child`` of it. A scope gives
its role what it needs of the node (the RPC client, the heartbeat endpoint, the ZooKeeper store,
the settings, the node's id and known epoch) and records what the role starts through it:

* ``on(kind, handler)`` / ``on_message(MessageClass, handler)`` (the handler gets the typed
  message, ``snooze.protocol.messages``) / ``heartbeat_on(kind, handler)`` register a message
  handler and return a ``Registration``;
* ``spawn(name, coro)`` / ``every(name, interval, fn)`` start a named task.

``close()`` closes all of them together, so nothing is unregistered from a hand-copied list: a
handler registered by a role no longer answers once the role stops (the internal endpoint says
``UNKNOWN_KIND``), and no task of it outlives it by more than a bounded grace.

Tasks are *critical* or not. A critical task is one the process cannot do its job without (the
ZooKeeper supervisor, the election, a join loop): when it fails the process stops with code 1,
and whoever runs it restarts it (one orchestrator decides, as in kopf). Every other task that
fails is logged, its ``on_error`` marks what it was doing as failed (a submission's VMs become
ERROR with the reason, a request fails), and the process goes on: one bad record or request
never takes a process down.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, Protocol, TypeVar

from snooze import config as cfg
from snooze.coordination import CoordinationError, Coordinator
from snooze.coordination.store import Store
from snooze.events import EventKind, EventLog
from snooze.heartbeat import Handler as HeartbeatHandler
from snooze.heartbeat import HeartbeatEndpoint
from snooze.http import InternalEndpoint, InternalHandler
from snooze.models import NetworkAddress
from snooze.protocol import Envelope
from snooze.protocol.messages import Message

M = TypeVar("M", bound=Message)

__all__ = ["DEFAULT_GRACE", "OnError", "Registration", "Rpc", "Scope"]

log = logging.getLogger(__name__)

#: Seconds ``close`` lets tasks finish (those spawned with ``drain``) or react to their
#: cancellation before it gives up on them.
DEFAULT_GRACE = 5.0

#: Called with the exception of a non-critical task that failed; may be a coroutine function.
OnError = Callable[[Exception], Awaitable[None] | None]


class Rpc(Protocol):
    """What a role needs of the RPC client (``snooze.rpc.RpcClient``): one call."""

    async def call(
        self, peer: NetworkAddress, kind: str, body: Any = None, *, epoch: int = 0, timeout: float = 5.0
    ) -> Any: ...


class Registration:
    """A handler registered through a scope. ``close()`` removes it (idempotent); it removes
    only this registration, never a later handler of the same kind."""

    def __init__(self, kind: str, remove: Callable[[], None]) -> None:
        self.kind = kind
        self._remove: Callable[[], None] | None = remove

    @property
    def active(self) -> bool:
        return self._remove is not None

    def close(self) -> None:
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def __repr__(self) -> str:
        return f"Registration({self.kind!r}, {'active' if self.active else 'closed'})"


class Scope:
    """What one role (or the process itself) can use, and everything it started.

    ``coordinator`` and ``epoch`` are read when used: the ZooKeeper session is made after the
    process scope, and the known epoch moves. ``on_critical`` is called when a critical task
    fails (the process stops); a child scope passes its critical failures up to its parent.
    """

    def __init__(
        self, name: str, *, node_id: str, address: NetworkAddress, settings: cfg.Settings, rpc: Rpc,
        internal: InternalEndpoint, heartbeat: HeartbeatEndpoint,
        coordinator: Callable[[], Coordinator | None] = lambda: None, epoch: Callable[[], int] = lambda: 0,
        on_critical: Callable[[str, BaseException], None] | None = None, grace: float = DEFAULT_GRACE,
    ) -> None:
        self.name = name
        self.id = node_id
        self.address = address
        self.settings = settings
        self.rpc = rpc
        self.heartbeat = heartbeat
        self.grace = grace
        self._internal = internal
        self._coordinator = coordinator
        self._epoch = epoch
        self._on_critical = on_critical
        self._store: Store | None = None
        self._events: EventLog | None = None
        self._registrations: list[Registration] = []
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._drain: set[asyncio.Task[Any]] = set()
        self._children: list[Scope] = []
        self._parent: Scope | None = None
        self._closed = False
        #: Non-critical tasks of this scope and its children that failed (each logged when it happened).
        self.failures = 0

    # -- what the node offers ------------------------------------------------------------
    @property
    def coord(self) -> Coordinator | None:
        """The ZooKeeper session (None before the process has one)."""
        return self._coordinator()

    @property
    def store(self) -> Store | None:
        """The records in ZooKeeper (None before the process has a session)."""
        coord = self._coordinator()
        if coord is None:
            return None
        if self._store is None or self._store.coord is not coord:
            self._store = Store(coord)
        return self._store

    @property
    def epoch(self) -> int:
        """The newest leader epoch this process has seen."""
        return self._epoch()

    # -- events --------------------------------------------------------------------------
    def attach_events(self, events: EventLog) -> None:
        """The process's event log (the root scope's; its children emit through it)."""
        self._events = events

    def emit(self, kind: EventKind, **data: Any) -> None:
        """Record an event in the cluster's stream (snooze.events); never waits. Dropped when
        the process has no event log yet (before its first ZooKeeper session)."""
        scope: Scope | None = self
        while scope is not None and scope._events is None:
            scope = scope._parent
        if scope is not None and scope._events is not None:
            scope._events.emit(kind, **data)

    async def flush_events(self) -> None:
        """Write the events emitted so far now, before what follows makes their outcome visible
        (a submission marked done, an answer to a client): a crash after that point loses none.
        ZooKeeper away: they stay queued for the log's own task."""
        scope: Scope | None = self
        while scope is not None and scope._events is None:
            scope = scope._parent
        if scope is not None and scope._events is not None:
            with contextlib.suppress(CoordinationError):
                await scope._events.flush()

    @property
    def closed(self) -> bool:
        return self._closed

    def child(self, name: str, *, grace: float | None = None) -> Scope:
        """A scope for one role of this process: the same node, its own handlers and tasks.
        Closing this scope closes its children first."""
        sub = Scope(
            name, node_id=self.id, address=self.address, settings=self.settings, rpc=self.rpc,
            internal=self._internal, heartbeat=self.heartbeat, coordinator=self._coordinator, epoch=self._epoch,
            on_critical=self._critical, grace=self.grace if grace is None else grace,
        )
        sub._parent = self
        self._children.append(sub)
        return sub

    # -- handlers ------------------------------------------------------------------------
    def on(self, kind: str, handler: InternalHandler, *, order: bool = False) -> Registration:
        """Answer internal messages of ``kind`` with ``handler`` until this scope closes.
        ``order``: refuse the message when its epoch is older than the one this node has seen."""
        self._check_open(kind)
        endpoint = self._internal
        if kind in endpoint.handlers:
            raise ValueError(f"{self.name}: internal messages {kind!r} already have a handler")
        endpoint.on(kind, handler, order=order)
        entry = endpoint.handlers[kind]

        def remove() -> None:
            if endpoint.handlers.get(kind) is entry:
                del endpoint.handlers[kind]

        return self._keep(Registration(kind, remove))

    def on_message(self, message: type[M], handler: Callable[[M, Envelope], Awaitable[Any]], *,
                   order: bool = False) -> Registration:
        """Answer internal messages of ``message.KIND``: each body is read with
        ``message.from_wire`` and ``handler(msg, env)`` gets the typed message. A body it cannot
        read is answered 400 ``BAD_MESSAGE`` naming the field (the endpoint answers the
        ``BadMessage``); the handler never sees it."""

        async def typed(env: Envelope) -> Any:
            return await handler(message.from_wire(env.body), env)

        return self.on(message.KIND, typed, order=order)

    def heartbeat_on(self, kind: str, handler: HeartbeatHandler) -> Registration:
        """Hand heartbeats of ``kind`` to ``handler`` until this scope closes."""
        self._check_open(kind)
        endpoint = self.heartbeat
        if kind in endpoint.handlers:
            raise ValueError(f"{self.name}: heartbeats {kind!r} already have a handler")
        endpoint.on(kind, handler)

        def remove() -> None:
            if endpoint.handlers.get(kind) is handler:
                del endpoint.handlers[kind]

        return self._keep(Registration(kind, remove))

    def _keep(self, registration: Registration) -> Registration:
        self._registrations.append(registration)
        return registration

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed: cannot register {what}")

    # -- tasks ---------------------------------------------------------------------------
    def spawn(
        self, name: str, coro: Coroutine[Any, Any, Any], *, critical: bool = False, on_error: OnError | None = None,
        drain: bool = False,
    ) -> asyncio.Task[Any] | None:
        """Run ``coro`` as the task ``name`` of this scope (a running task of that name is
        cancelled first). ``critical``: its failure stops the process. Otherwise a failure is
        logged and ``on_error(exc)`` marks what it was doing as failed. ``drain``: ``close``
        lets it finish, within the grace, instead of cancelling it at once.

        On a closed scope nothing starts (None): the role is over, and so is its work."""
        if self._closed:
            coro.close()
            log.debug("%s is closed: task %s not started", self.name, name)
            return None
        old = self._tasks.get(name)
        if old is not None and not old.done():
            old.cancel()
        task = asyncio.create_task(self._guarded(name, coro, critical, on_error), name=name)
        self._tasks[name] = task
        if drain:
            self._drain.add(task)
        task.add_done_callback(lambda t: self._task_done(t, coro))
        return task

    async def _guarded(self, name: str, coro: Coroutine[Any, Any, Any], critical: bool,
                       on_error: OnError | None) -> Any:
        try:
            return await coro
        except Exception as exc:  # CancelledError is not an Exception: it passes
            if critical:
                raise
            scope: Scope | None = self
            while scope is not None:  # counted up to the process (getStatistics: taskFailures)
                scope.failures += 1
                scope = scope._parent
            log.error("task %s of %s failed (the process goes on): %s", name, self.name, exc, exc_info=exc)
            if on_error is not None:
                try:
                    result = on_error(exc)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("task %s of %s: recording its failure failed too", name, self.name)
            return None

    def _task_done(self, task: asyncio.Task[Any], coro: Coroutine[Any, Any, Any]) -> None:
        # A task cancelled before its first step never awaited its coroutine: close it.
        coro.close()
        self._drain.discard(task)
        if self._tasks.get(task.get_name()) is task:
            del self._tasks[task.get_name()]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # only critical tasks let an exception out of _guarded
            self._critical(task.get_name(), exc)

    def _critical(self, name: str, exc: BaseException) -> None:
        if self._on_critical is not None:
            self._on_critical(name, exc)
        else:
            log.error("critical task %s of %s crashed, and nobody stops the process", name, self.name, exc_info=exc)

    def every(self, name: str, interval: Callable[[], float], fn: Callable[[], Awaitable[None]], *,
              wait_first: bool = False) -> asyncio.Task[Any] | None:
        """Run ``fn`` periodically (at once, or after one interval with ``wait_first``); its
        errors are logged and the loop goes on."""

        async def loop() -> None:
            if wait_first:
                await asyncio.sleep(interval())
            while True:
                try:
                    await fn()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("periodic task %s failed; will retry", name)
                await asyncio.sleep(interval())

        return self.spawn(name, loop())

    def cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def task(self, name: str) -> asyncio.Task[Any] | None:
        """This scope's task ``name``, while it runs."""
        return self._tasks.get(name)

    def task_names(self) -> list[str]:
        """The names of this scope's tasks that still run."""
        return sorted(name for name, task in self._tasks.items() if not task.done())

    # -- closing -------------------------------------------------------------------------
    async def close(self, grace: float | None = None) -> None:
        """Close every registration, then every task: cancelled at once, except those spawned
        with ``drain``, which get ``grace`` seconds to finish first. A task still running after
        the grace is logged and abandoned, so ``close`` always returns. Children close first.
        Closing again cancels whatever is left."""
        grace = self.grace if grace is None else grace
        again = self._closed
        self._closed = True
        for registration in reversed(self._registrations):
            registration.close()
        self._registrations.clear()
        for sub in list(self._children):
            await sub.close(grace)
        me = asyncio.current_task()
        tasks = [t for t in self._tasks.values() if t is not me and not t.done()]
        for task in tasks:
            if again or task not in self._drain:
                task.cancel()
        pending = await _wait(tasks, grace)
        if pending:
            for task in pending:
                task.cancel()
            pending = await _wait(pending, min(grace, 1.0))
        if pending:
            log.warning("%s: %d task(s) did not end within %.1fs of closing: %s", self.name, len(pending), grace,
                        ", ".join(sorted(t.get_name() for t in pending)))
        if self._parent is not None and not pending:
            with contextlib.suppress(ValueError):
                self._parent._children.remove(self)


async def _wait(tasks: Collection[asyncio.Task[Any]], timeout: float) -> set[asyncio.Task[Any]]:
    """The tasks still not done after ``timeout`` seconds."""
    if not tasks:
        return set()
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    return pending
