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

Two guards keep one bad request from cutting the process off from ZooKeeper. Every path is
checked (``check_path``, ZooKeeper's own rules plus UTF-8) before kazoo queues a request for it:
kazoo serialises requests on its connection thread, and a path it cannot encode (a lone
surrogate) used to kill that thread, leaving the session LOST for good while the process stayed
up. And ``Coordinator.supervise`` watches for a connection thread that died anyway (any other
bug on it): it restarts the client, which gets a new session (ephemerals, watches and the
election come back as after any expiry), and if that keeps failing it ends, so the process
exits and is restarted by whoever runs it.

Nothing here waits for ZooKeeper on the event loop: a process whose ZooKeeper is unreachable
keeps answering (``/health`` says what it waits for) and stops on SIGTERM. Watches are armed
with kazoo's asynchronous calls whenever the session is CONNECTED (kazoo's DataWatch would do
a synchronous read where it is created, which blocks until a first connection), and
registrations wait for the connection instead of failing on kazoo's not-yet-started client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from enum import Enum
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from snooze.codes import CodedError, ErrorCode
from snooze.config import zookeeper_servers

log = logging.getLogger(__name__)
T = TypeVar("T")


class CoordinationError(CodedError):
    """ZooKeeper could not do what was asked (unreachable, timed out, refused)."""

    code = ErrorCode.ZOOKEEPER_UNAVAILABLE


class DuplicateRegistration(CoordinationError):
    """Another live process holds this registration (the same id): this one must not take it."""


class InvalidPath(CoordinationError, ValueError):
    """A znode path ZooKeeper (or kazoo's encoder) would refuse; nothing was sent."""


def _path_problem(path: object) -> str | None:
    """Why ZooKeeper would refuse ``path`` (its PathUtils.validatePath, plus UTF-8), or None."""
    if not isinstance(path, str):
        return f"a path must be text, not {type(path).__name__}"
    if not path.startswith("/"):
        return "a path must start with '/'"
    if path == "/":
        return None
    if path.endswith("/"):
        return "a path must not end with '/'"
    try:
        path.encode("utf-8", "strict")
    except UnicodeEncodeError:
        return "a path must be valid Unicode (no lone surrogates)"
    for segment in path[1:].split("/"):
        if segment == "":
            return "empty node name"
        if segment in (".", ".."):
            return "relative paths ('.', '..') are not allowed"
    for c in path:
        o = ord(c)
        # ZooKeeper checks UTF-16 code units: anything above U+FFFF is a surrogate pair there.
        if o == 0 or o <= 0x1F or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xF8FF or o >= 0xFFF0:
            return f"invalid character {ascii(c)}"
    return None


def check_path(path: object) -> str:
    """``path`` if ZooKeeper would accept it as a znode path, else InvalidPath."""
    problem = _path_problem(path)
    if problem is not None:
        shown = ascii(path) if isinstance(path, str) else type(path).__name__
        raise InvalidPath(f"{problem}: {shown[:120]}")
    assert isinstance(path, str)
    return path


def _raised_by_kazoo(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("kazoo")


def _request_paths(request: Any) -> Iterable[Any]:
    if hasattr(request, "path"):
        yield request.path
    for op in getattr(request, "operations", None) or ():
        yield from _request_paths(op)


class _GuardedClient(KazooClient):  # type: ignore[misc]
    """A KazooClient that refuses bad paths before they are queued for its connection thread.

    ``_call`` is where every request (recipes and transactions included) enters kazoo's queue;
    checking there also protects code that uses ``Coordinator.client`` directly.
    """

    def _call(self, request: Any, async_object: Any) -> Any:
        for path in _request_paths(request):
            problem = _path_problem(path)
            if problem is not None:
                shown = ascii(path) if isinstance(path, str) else type(path).__name__
                async_object.set_exception(InvalidPath(f"{problem}: {shown[:120]}"))
                return False
        return super()._call(request, async_object)


class SessionState(str, Enum):
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"
    CLOSED = "CLOSED"


StateListener = Callable[[SessionState, bool], None]  # (state, is_new_session)
#: Called with (path, the value found there) when a registration finds its znode held by another
#: session; raises DuplicateRegistration if that session's process is alive, else returns and
#: the stale znode is replaced.
OwnerCheck = Callable[[str, bytes], Awaitable[None]]


def describe_hosts(hosts: str) -> str:
    """The servers of a connect string as HOST:PORT[,HOST:PORT] for log lines and /health."""
    try:
        servers = zookeeper_servers(hosts)
    except ValueError:
        return hosts
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in servers) or hosts


class _KazooLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's own log lines, with the servers they are about, and a repeated warning (its
    "Connection dropped: … Connection refused" on every retry) at most once per interval."""

    INTERVAL = 30.0

    def __init__(self, where: str) -> None:
        super().__init__(logging.getLogger("kazoo.client"), {})
        self.where = where
        self._last: dict[str, float] = {}
        #: Set while the client is being stopped: its complaints about an interrupted retry are
        #: what stopping means, not news.
        self.stopping = False

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"ZooKeeper at {self.where}: {msg}", kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if self.stopping and level >= logging.WARNING:
            level = logging.DEBUG
        elif level >= logging.WARNING and self.isEnabledFor(level):
            try:
                key = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                key = str(msg)
            now = time.monotonic()
            if now - self._last.get(key, -self.INTERVAL) < self.INTERVAL:
                level = logging.DEBUG
            else:
                if len(self._last) > 256:  # messages with ever-new details: stay bounded
                    self._last.clear()
                self._last[key] = now
        super().log(level, msg, *args, **kwargs)

    def warn(self, msg: Any, *args: Any, **kwargs: Any) -> None:  # kazoo still calls it
        self.log(logging.WARNING, msg, *args, **kwargs)


_UNSEEN = object()


class _DataWatch:
    """The value of one znode, delivered to the loop when first read and on every change.

    Driven from the loop with kazoo's asynchronous calls (no thread ever waits): armed when
    created if the session is CONNECTED, and again on every CONNECTED (kazoo drops its watchers
    on a lost connection). The callback runs when the value's version differs from the last
    delivered one, with None for a missing znode.

    ``until_found``: only until a value is delivered; the znode is then read without a watch,
    and no watch is left once it was (a missing or unreadable znode is watched until it is
    there). Thousands of readers that need a value once, not its every change, then cost
    ZooKeeper no notification and no re-read when it changes.
    """

    def __init__(self, coord: Coordinator, path: str, callback: Callable[[Any | None], None],
                 until_found: bool = False) -> None:
        self.coord = coord
        self.path = path
        self.callback = callback
        self.version: object = _UNSEEN
        self.until_found = until_found
        self.found = False

    def arm(self) -> None:
        if self.found or not self.coord.connected:
            return  # done, or armed again on the next CONNECTED
        try:
            self.coord.client.get_async(self.path, watch=None if self.until_found else self._event).rawlink(self._got_data)
        except KazooException as exc:
            log.debug("watch on %s not armed: %r", self.path, exc)

    # kazoo's threads -> the loop
    def _event(self, _event: Any) -> None:
        self.coord.soon(self.arm)

    def _got_data(self, result: Any) -> None:
        self.coord.soon(self._on_data, result)

    def _got_stat(self, result: Any) -> None:
        self.coord.soon(self._on_stat, result)

    # on the loop
    def _on_data(self, result: Any) -> None:
        try:
            data, stat = result.get_nowait()
        except NoNodeError:
            # Watch for its creation instead.
            with contextlib.suppress(KazooException):
                self.coord.client.exists_async(self.path, watch=self._event).rawlink(self._got_stat)
            return
        except Exception as exc:  # connection lost meanwhile: armed again on the next CONNECTED
            log.debug("watch on %s: %r", self.path, exc)
            return
        self._deliver(data, stat.mzxid)
        if self.until_found and not self.found:
            # There, but no value yet (not JSON): watch it for a change (exists() watches
            # data changes too).
            with contextlib.suppress(KazooException):
                self.coord.client.exists_async(self.path, watch=self._event).rawlink(self._got_stat)

    def _on_stat(self, result: Any) -> None:
        try:
            stat = result.get_nowait()
        except Exception as exc:
            log.debug("watch on %s: %r", self.path, exc)
            return
        if stat is not None:
            if not self.until_found or self.version != stat.mzxid:
                self.arm()  # created between the two reads (or changed since the one delivered)
        else:
            self._deliver(None, None)

    def _deliver(self, data: bytes | None, version: int | None) -> None:
        if version == self.version:
            return
        self.version = version
        try:
            value = json.loads(data) if data else None
        except ValueError:
            value = None
        try:
            self.callback(value)
        except Exception:
            log.exception("watch callback for %s failed", self.path)
        if self.until_found and value is not None:
            self.found = True
            with contextlib.suppress(ValueError):
                self.coord._watches.remove(self)


#: kazoo waits for the answer to a connect request for the session timeout divided by the
#: servers listed. A lone server that accepts the connection while its JVM is still starting
#: then holds the client a whole session: CI saw a leader's session come back only after its
#: step-down timer (the session) had run out, though ZooKeeper was back within seconds.
#: Listing each server again (up to this many entries) bounds that wait to about 3 s or more.
CONNECT_ENTRIES = 4
CONNECT_WAIT_FLOOR = 3.0


def kazoo_hosts(hosts: str, session_timeout: float) -> str:
    """The connect string given to kazoo: ``hosts`` with its servers listed again so that a
    connect attempt waits about ``session_timeout / CONNECT_ENTRIES`` seconds, never much less
    than ``CONNECT_WAIT_FLOOR`` (a loaded server answers late, and an attempt given up too early
    only adds to its load); the chroot, if any, kept."""
    servers, sep, chroot = hosts.partition("/")
    items = [item.strip() for item in servers.split(",") if item.strip()]
    if not items:
        return hosts
    wanted = max(1, min(CONNECT_ENTRIES, int(session_timeout // CONNECT_WAIT_FLOOR)))
    copies = max(1, -(-wanted // len(items)))
    return ",".join(items * copies) + (sep + chroot if sep else "")


class Coordinator:
    """One kazoo session for one process, driven from the asyncio loop."""

    # A connection thread that died this many times within RESTART_WINDOW seconds is not
    # coming back by restarting it: the supervisor gives up and the process exits.
    MAX_RESTARTS = 5
    RESTART_WINDOW = 60.0
    #: Seconds between two "waiting for ZooKeeper at …" lines while not connected.
    WAITING_LOG_INTERVAL = 10.0
    #: Seconds between two looks of the supervisor while the session is CONNECTED. A connection
    #: thread that dies reports the session lost, which wakes the supervisor at once: the look
    #: is a fallback, and one a second per client was 2,000 wake-ups a second for 2,000 hosts
    #: simulated on one machine.
    CONNECTED_CHECK_INTERVAL = 5.0

    def __init__(self, hosts: str, root: str = "/snooze", session_timeout: float = 10.0) -> None:
        self.root = check_path(root.rstrip("/") or "/snooze")
        self.hosts = hosts
        #: The servers, as HOST:PORT[,HOST:PORT], for log lines and health answers.
        self.where = describe_hosts(hosts)
        self.session_timeout = session_timeout
        self.state = SessionState.CONNECTING
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[StateListener] = []
        self._ephemerals: dict[str, tuple[bytes, OwnerCheck | None]] = {}
        self._register_locks: dict[str, asyncio.Lock] = {}
        self._ephemeral_sends = threading.Lock()
        self._watches: list[_DataWatch] = []
        self._not_connected_since = time.monotonic()
        self._session_id: int | None = None
        self._connected = asyncio.Event()
        # Re-creating the ephemeral znodes after a new session: one task at a time, tracked so
        # that stop() ends it and a failure is logged, never lost with an unreferenced future.
        self._reregister_task: asyncio.Task[None] | None = None
        self._check_now = asyncio.Event()
        self.restarts: list[float] = []  # monotonic times the connection thread was restarted
        self._kazoo_log = _KazooLog(self.where)
        self.client = _GuardedClient(
            hosts=kazoo_hosts(hosts, session_timeout),
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0, max_jitter=0.3),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=0.5, max_jitter=0.2),
            logger=self._kazoo_log,
        )
        self.client.add_listener(self._on_kazoo_state)

    def path(self, *parts: str) -> str:
        """The znode ``root/part/...``; InvalidPath if a part is not one valid node name."""
        for part in parts:
            if not isinstance(part, str) or "/" in part:
                raise InvalidPath(f"not a node name: {ascii(part)[:120]}")
        return check_path("/".join([self.root, *parts]))

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

    @property
    def waiting_detail(self) -> str | None:
        """What this session waits for ("waiting for ZooKeeper at HOST:PORT"), or None if CONNECTED."""
        if self.connected:
            return None
        if self.state == SessionState.CLOSED:
            return f"ZooKeeper session to {self.where} closed"
        return f"waiting for ZooKeeper at {self.where}"

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (from any thread); dropped once the loop is closed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    async def stop(self) -> None:
        self.state = SessionState.CLOSED
        self._connected.clear()
        self._check_now.set()
        self._watches.clear()
        self._kazoo_log.stopping = True
        task, self._reregister_task = self._reregister_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)

        def _close() -> None:
            with contextlib.suppress(Exception):
                self.client.stop()
            with contextlib.suppress(Exception):
                self.client.close()

        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(loop.run_in_executor(None, _close), 5)

    # -- supervision -----------------------------------------------------------------------
    def _connection_thread_died(self) -> bool | None:
        """Whether kazoo's connection thread ended although nobody stopped the client.

        kazoo has no public call for this; its client and connection handler expose it as
        events. None if they no longer do (a kazoo upgrade): ``supervise`` then falls back to
        ending the process when the session stays LOST for long.
        """
        try:
            stopped = self.client._stopped.is_set()
            ended = self.client._connection.connection_stopped.is_set()
        except AttributeError:
            return None
        return bool(ended and not stopped)

    async def supervise(self, interval: float = 1.0) -> None:
        """Run for the life of the process: restart the kazoo client whenever its connection
        thread has died (the session would otherwise stay LOST for ever), and raise
        CoordinationError when that happened MAX_RESTARTS times within RESTART_WINDOW seconds,
        so that the process stops (whoever runs it restarts it) rather than limps on."""
        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        waiting_logged = -math.inf
        while self.state != SessionState.CLOSED:
            wait = max(interval, self.CONNECTED_CHECK_INTERVAL) if self.connected else interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), wait)
            self._check_now.clear()
            if self.closed:  # stop() may have run while we waited
                return
            now = time.monotonic()
            if self.connected:
                waiting_logged = -math.inf
            elif now - waiting_logged >= self.WAITING_LOG_INTERVAL:
                waiting_logged = now
                log.warning("%s (%s for %.0fs)", self.waiting_detail, self.state.value, now - self._not_connected_since)
            lost_since = (lost_since or now) if self.state == SessionState.LOST else None
            died = self._connection_thread_died()
            if died is None:
                if lost_since is not None and now - lost_since > max(60.0, 6 * self.session_timeout):
                    raise CoordinationError("the ZooKeeper session has stayed LOST for over a minute; giving up")
                continue
            if not died:
                continue
            self.restarts = [t for t in self.restarts if now - t < self.RESTART_WINDOW]
            if len(self.restarts) >= self.MAX_RESTARTS:
                raise CoordinationError(
                    f"kazoo's connection thread died {len(self.restarts) + 1} times in {self.RESTART_WINDOW:.0f}s; giving up"
                )
            self.restarts.append(now)
            log.error("zookeeper: kazoo's connection thread died; restarting the client (a new session follows)")
            # start_async() joins the dead thread and starts a new one. The dead one's queue was
            # cleared when kazoo reported the session closed, so nothing of it is sent again.
            await asyncio.wait_for(loop.run_in_executor(None, self.client.start_async), 30)

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def closed(self) -> bool:
        return self.state == SessionState.CLOSED

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
                self._start_reregister()
            for watch in list(self._watches):
                watch.arm()  # kazoo dropped its watchers when the connection went
        elif kstate == KazooState.SUSPENDED:
            self.state = SessionState.SUSPENDED
            self._connected.clear()
            self._not_connected_since = time.monotonic()
        else:
            self.state = SessionState.LOST
            self._connected.clear()
            self._not_connected_since = time.monotonic()
            self._check_now.set()  # the supervisor looks at once whether kazoo's thread died
        log.info("zookeeper session at %s %s%s", self.where, self.state.value, " (new session)" if new_session else "")
        for listener in list(self._listeners):
            try:
                listener(self.state, new_session)
            except Exception:
                log.exception("session listener failed")

    def _start_reregister(self) -> None:
        old = self._reregister_task
        if old is not None and not old.done():
            old.cancel()  # a newer session: its own pass re-creates everything
        task = asyncio.get_running_loop().create_task(self._reregister(), name="zookeeper.reregister")
        task.add_done_callback(self._reregister_done)
        self._reregister_task = task

    def _reregister_done(self, task: asyncio.Task[None]) -> None:
        if self._reregister_task is task:
            self._reregister_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("re-registering the ephemeral znodes failed", exc_info=task.exception())

    async def _reregister(self) -> None:
        for path, (data, check) in list(self._ephemerals.items()):
            try:
                await self._put_ephemeral(path, data, check)
            except DuplicateRegistration as exc:
                self._ephemerals.pop(path, None)
                log.error("not re-registering %s: %s", path, exc)
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
        except (ValueError, TypeError) as exc:
            # kazoo checks some arguments itself before queueing ("relative paths not allowed").
            if _raised_by_kazoo(exc):
                raise InvalidPath(f"{getattr(fn, '__name__', 'zookeeper call')}: {exc}") from exc
            raise

    def _send_if_latest(self, path: str, data: bytes, send: Callable[[], Any]) -> None:
        """Queue a write of ``data`` to ``path`` (``send`` returns kazoo's pending result) and
        wait for its answer, unless ``data`` is no longer what this process registers there:
        then nothing is sent, the newer registration's own write does it. The check and the
        queueing are done under one lock, and kazoo sends requests in the order they are
        queued: a superseded write never lands after a newer one, even from the thread of a
        call whose task was cancelled or timed out (the thread goes on all the same)."""
        with self._ephemeral_sends:
            latest = self._ephemerals.get(path)
            if latest is None or latest[0] != data:
                return
            pending = send()
        pending.get()

    async def _put_ephemeral(self, path: str, data: bytes, owner_check: OwnerCheck | None = None) -> None:
        def create() -> None:
            self._send_if_latest(path, data, lambda: self.client.create_async(path, data, ephemeral=True, makepath=True))

        def put() -> bytes | None:
            """None once written (or superseded); the value found if another session holds the znode."""
            try:
                create()
                return None
            except NodeExistsError:
                pass
            try:
                found, stat = self.client.get(path)
            except NoNodeError:  # gone meanwhile
                create()
                return None
            if stat.ephemeralOwner == self.client.client_id[0]:  # ours: a retried create, or an older value
                self._send_if_latest(path, data, lambda: self.client.set_async(path, data))
                return None
            return bytes(found or b"")

        found = await self.call(put)
        if found is None:
            return
        if owner_check is not None:
            await owner_check(path, found)  # DuplicateRegistration if its holder is alive
        # A dead session's znode, not yet expired: take it over.

        def replace() -> None:
            with contextlib.suppress(NoNodeError):  # not when superseded: it would be the newer one's
                self._send_if_latest(path, data, lambda: self.client.delete_async(path))
            create()

        await self.call(replace)

    async def register(self, path: str, value: Any, *, owner_check: OwnerCheck | None = None) -> None:
        """Keep an ephemeral znode with a JSON value for as long as this process lives.

        A znode already there from another session is taken over (a previous run's, not yet
        expired), unless ``owner_check`` raises DuplicateRegistration (its holder is alive):
        then nothing is written, here or after a new session.
        """
        check_path(path)
        data = json.dumps(value).encode()
        self._ephemerals[path] = (data, owner_check)
        # One write at a time per znode, and always of the latest value: two registrations in
        # flight (a local controller registers at start, and again once it joined a group
        # manager, milliseconds later) ran on two threads, and the older value could land last.
        # The lock is let go when a caller is cancelled (a named task started again) while its
        # thread goes on: _send_if_latest keeps that thread's older value from landing.
        lock = self._register_locks.setdefault(path, asyncio.Lock())
        async with lock:
            latest = self._ephemerals.get(path)
            if latest is None:
                return  # unregistered meanwhile
            try:
                await self._put_ephemeral(path, *latest)
            except DuplicateRegistration:
                self._ephemerals.pop(path, None)
                raise

    async def unregister(self, path: str) -> None:
        self._ephemerals.pop(path, None)
        # While the connection is down kazoo keeps the delete queued until it is back (and a
        # session that ends removes the znode anyway): no need to hold up a step-down or a
        # stop for it.
        with contextlib.suppress(CoordinationError):
            await self.call(self._delete_quiet, path, timeout=10.0 if self.connected else 0.5)

    def _delete_quiet(self, path: str) -> None:
        with contextlib.suppress(NoNodeError):
            self.client.delete(path)

    async def get_json(self, path: str) -> Any | None:
        check_path(path)

        def get() -> Any | None:
            try:
                data, _ = self.client.get(path)
            except NoNodeError:
                return None
            return json.loads(data) if data else None

        return await self.call(get)

    async def children(self, path: str) -> list[str]:
        """The names of ``path``'s children; [] when it does not exist."""
        check_path(path)

        def names() -> list[str]:
            try:
                return list(self.client.get_children(path))
            except NoNodeError:
                return []

        return await self.call(names)

    async def children_json(self, path: str) -> dict[str, Any]:
        check_path(path)

        def get() -> dict[str, Any]:
            out: dict[str, Any] = {}
            try:
                names = self.client.get_children(path)
            except NoNodeError:
                return out
            got = self.fetch(f"{path}/{name}" for name in names)
            for name in names:
                entry = got.get(f"{path}/{name}")
                if entry is not None:
                    with contextlib.suppress(ValueError):
                        out[name] = json.loads(entry[0])
            return out

        return await self.call(get)

    def fetch(self, paths: Iterable[str], window: int = 1000) -> dict[str, tuple[bytes, int]]:
        """Read many znodes with pipelined requests, at most ``window`` in flight (a round trip
        per window, not one per znode: the group leader reads its 2,000 hosts' registrations
        every few seconds): path -> (data, version); a missing znode is left out. Blocking: run
        it off the loop (``call``)."""
        out: dict[str, tuple[bytes, int]] = {}
        todo = list(paths)
        for start in range(0, len(todo), window):
            pending = [(p, self.client.get_async(p)) for p in todo[start:start + window]]
            for p, res in pending:
                try:
                    data, stat = res.get(timeout=self.session_timeout + 10)
                except NoNodeError:
                    continue
                out[p] = (data, stat.version)
        return out

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
    def watch_json(self, path: str, callback: Callable[[Any | None], None], *, until_found: bool = False) -> None:
        """Call ``callback(value)`` on the loop once the znode is read (now if CONNECTED, else when
        the session connects) and whenever it changes; None while it does not exist. Never waits.
        ``until_found``: only until a value (not None) was delivered, leaving no watch behind."""
        check_path(path)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        watch = _DataWatch(self, path, callback, until_found)
        self._watches.append(watch)
        watch.arm()

    async def watch_children(self, path: str, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(names)`` on the loop now and whenever the children change."""
        check_path(path)
        loop = asyncio.get_running_loop()

        def on_change(children: list[str]) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback, list(children))

        # A children watch on a missing znode ends at once: make sure the parent exists.
        await self.call(self.client.ensure_path, path)
        # kazoo's ChildrenWatch reads the children where it is created: off the loop.
        await self.call(lambda: self.client.ChildrenWatch(path, on_change, allow_session_lost=True))


async def once_reachable(fn: Callable[[], Awaitable[T]], what: str, interval: float = 1.0) -> T:
    """``fn()``'s result, called again every ``interval`` seconds while it fails with a
    CoordinationError (ZooKeeper not reachable yet): for a role's start-up work that must not
    block its start nor give up."""
    while True:
        try:
            return await fn()
        except CoordinationError as exc:
            log.debug("%s: ZooKeeper not reachable yet: %s", what, exc)
            await asyncio.sleep(interval)
