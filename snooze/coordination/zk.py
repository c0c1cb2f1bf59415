"""The ZooKeeper session as an explicit state machine, and the znodes this cluster keeps.

Layout under the cluster's root (``[cluster] zk_root``)::

    election/             kazoo Lock contenders; the holder is the group leader
    epoch                 leader-term counter, incremented with version-checked writes
    leader                ephemeral: the group leader's description and epoch
    groupmanagers/<id>    ephemeral: each group manager's description
    localcontrollers/<id> ephemeral: each local controller's description
    bootstraps/<id>       ephemeral: each bootstrap's description

States: CONNECTED (agreement possible), SUSPENDED (connection lost, session may still be alive:
pause everything that needs agreement), LOST (session expired: ephemeral znodes and leadership
are gone; they are re-created when a new session connects), CLOSED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

log = logging.getLogger(__name__)
T = TypeVar("T")


class CoordinationError(Exception):
    """ZooKeeper could not do what was asked (unreachable, timed out, refused)."""


class SessionState(str, Enum):
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"
    CLOSED = "CLOSED"


StateListener = Callable[[SessionState, bool], None]  # (state, is_new_session)


class Coordinator:
    """One kazoo session for one process, driven from the asyncio loop."""

    def __init__(self, hosts: str, root: str = "/snooze", session_timeout: float = 10.0) -> None:
        self.root = root.rstrip("/") or "/snooze"
        self.state = SessionState.CONNECTING
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[StateListener] = []
        self._ephemerals: dict[str, bytes] = {}
        self._session_id: int | None = None
        self._connected = asyncio.Event()
        self._reregister_task: asyncio.Task[None] | None = None
        self.client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0, max_jitter=0.3),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=0.5, max_jitter=0.2),
        )
        self.client.add_listener(self._on_kazoo_state)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, wait: float | None = None) -> None:
        """Start connecting (kazoo keeps retrying for ever); optionally wait for a session."""
        self._loop = asyncio.get_running_loop()
        self.client.start_async()
        if wait is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def stop(self) -> None:
        self.state = SessionState.CLOSED
        self._connected.clear()
        if self._reregister_task:
            self._reregister_task.cancel()

        def _close() -> None:
            with contextlib.suppress(Exception):
                self.client.stop()
            with contextlib.suppress(Exception):
                self.client.close()

        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(loop.run_in_executor(None, _close), 5)

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def connected(self) -> bool:
        return self.state == SessionState.CONNECTED

    # -- state machine (kazoo thread -> loop) --------------------------------------------
    def _on_kazoo_state(self, state: str) -> None:
        # Runs on kazoo's thread: never block, never touch loop state here.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        session = self.client.client_id[0] if state == KazooState.CONNECTED and self.client.client_id else None
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_state, state, session)

    def _on_state(self, kstate: str, session: int | None) -> None:
        if self.state == SessionState.CLOSED:
            return
        new_session = False
        if kstate == KazooState.CONNECTED:
            new_session = session != self._session_id
            self._session_id = session
            self.state = SessionState.CONNECTED
            self._connected.set()
            if new_session and self._ephemerals:
                self._reregister_task = asyncio.ensure_future(self._reregister())
        elif kstate == KazooState.SUSPENDED:
            self.state = SessionState.SUSPENDED
            self._connected.clear()
        else:
            self.state = SessionState.LOST
            self._connected.clear()
        log.info("zookeeper session %s%s", self.state.value, " (new session)" if new_session else "")
        for listener in list(self._listeners):
            try:
                listener(self.state, new_session)
            except Exception:
                log.exception("session listener failed")

    async def _reregister(self) -> None:
        for path, data in list(self._ephemerals.items()):
            try:
                await self._put_ephemeral(path, data)
            except CoordinationError as exc:
                log.warning("could not re-register %s: %s", path, exc)

    # -- calls ---------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0, **kw: Any) -> T:
        """Run a blocking kazoo call off the loop; kazoo errors become CoordinationError."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, lambda: fn(*args, **kw)), timeout)
        except (KazooException, KazooTimeoutError, TimeoutError) as exc:
            raise CoordinationError(f"{getattr(fn, '__name__', 'zookeeper call')}: {exc!r}") from exc

    async def _put_ephemeral(self, path: str, data: bytes) -> None:
        def put() -> None:
            try:
                self.client.create(path, data, ephemeral=True, makepath=True)
            except NodeExistsError:
                # Ours from this session (a retried create), or a dead session's not yet expired.
                stat = self.client.exists(path)
                if stat is not None and stat.ephemeralOwner == self.client.client_id[0]:
                    self.client.set(path, data)
                else:
                    with contextlib.suppress(NoNodeError):
                        self.client.delete(path)
                    self.client.create(path, data, ephemeral=True, makepath=True)

        await self.call(put)

    async def register(self, path: str, value: Any) -> None:
        """Keep an ephemeral znode with a JSON value for as long as this process lives."""
        data = json.dumps(value).encode()
        self._ephemerals[path] = data
        await self._put_ephemeral(path, data)

    async def unregister(self, path: str) -> None:
        self._ephemerals.pop(path, None)
        with contextlib.suppress(CoordinationError):
            await self.call(self._delete_quiet, path)

    def _delete_quiet(self, path: str) -> None:
        with contextlib.suppress(NoNodeError):
            self.client.delete(path)

    async def get_json(self, path: str) -> Any | None:
        def get() -> Any | None:
            try:
                data, _ = self.client.get(path)
            except NoNodeError:
                return None
            return json.loads(data) if data else None

        return await self.call(get)

    async def children_json(self, path: str) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            out: dict[str, Any] = {}
            try:
                names = self.client.get_children(path)
            except NoNodeError:
                return out
            for name in names:
                try:
                    data, _ = self.client.get(f"{path}/{name}")
                except NoNodeError:
                    continue
                with contextlib.suppress(ValueError):
                    out[name] = json.loads(data)
            return out

        return await self.call(get)

    async def bump_epoch(self) -> int:
        """Increment the leader-term counter; version-checked so two winners never share one."""
        path = self.path("epoch")

        def bump() -> int:
            self.client.ensure_path(path)
            while True:
                data, stat = self.client.get(path)
                value = int(data or b"0") + 1
                try:
                    self.client.set(path, str(value).encode(), version=stat.version)
                    return value
                except BadVersionError:
                    continue

        return await self.call(bump)

    # -- watches -------------------------------------------------------------------------
    def watch_json(self, path: str, callback: Callable[[Any | None], None]) -> None:
        """Call ``callback(value)`` on the loop now and whenever the znode changes."""
        loop = asyncio.get_running_loop()

        def on_change(data: bytes | None, _stat: Any) -> None:
            try:
                value = json.loads(data) if data else None
            except ValueError:
                value = None
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback, value)

        self.client.DataWatch(path, on_change)

    async def watch_children(self, path: str, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(names)`` on the loop now and whenever the children change."""
        loop = asyncio.get_running_loop()

        def on_change(children: list[str]) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback, list(children))

        # A children watch on a missing znode ends at once: make sure the parent exists.
        await self.call(self.client.ensure_path, path)
        self.client.ChildrenWatch(path, on_change, allow_session_lost=True)
