"""The local controller's hypervisor: one libvirt connection per host, driven off the event loop.

One of the two modules that call libvirt; the other is ``localcontroller.hypervisor.migration``,
the live-migration step (with its own connection to the destination), which ``migrate`` runs
on a thread of its own so that a long migration does not hold up the rest. Every other libvirt
call runs on this module's single worker thread (one connection, calls serialised; a daemon
thread, so a hypervisor that never answers cannot keep a stopped process alive), so the asyncio
loop never blocks on the hypervisor; in both modules every ``libvirtError`` becomes
one of ``localcontroller.hypervisor.errors``. With the test driver (``test:///PATH/host.xml``) each
``open()`` starts from fresh state, so the connection is kept for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from localcontroller.hypervisor.adapt import check_on_host
from localcontroller.hypervisor.errors import (
    DomainNotFound,
    HypervisorError,
    HypervisorUnavailable,
    InvalidDomainXML,
    ResizeRefused,
    UnsupportedOperation,
)
from snooze.codes import ErrorCode, VMStatus
from snooze.domainxml import DomainPolicy

T = TypeVar("T")

# virDomainState -> the original's VM status names
_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: VMStatus.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: VMStatus.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VMStatus.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VMStatus.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VMStatus.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: VMStatus.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: VMStatus.ERROR,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VMStatus.PAUSED,
}


def _silence(_ctx: Any, _err: Any) -> None:
    # libvirt prints every error to stderr by default; we report them ourselves.
    return None


libvirt.registerErrorHandler(_silence, None)


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: VMStatus
    vcpus: int
    memory_kib: int
    cpu_time_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "state": self.state,
            "vcpus": self.vcpus,
            "memory": self.memory_kib,
        }


def _map_error(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    code = exc.get_error_code()
    msg = f"{what}: {exc.get_error_message() or exc}"
    if code in (libvirt.VIR_ERR_NO_DOMAIN,):
        return DomainNotFound(msg)
    if code in (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_INVALID_ARG):
        return InvalidDomainXML(msg)
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
        return UnsupportedOperation(msg)
    return HypervisorError(msg)


class _DaemonWorker(Executor):
    """One daemon thread running the submitted calls in order (what a one-worker
    ThreadPoolExecutor does, whose thread the interpreter waits for at exit): a libvirt call that
    never returns (a socket that accepts and never answers) cannot keep a stopped process alive."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            if not self._thread.is_alive():
                self._thread.start()
            self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
            started = self._thread.is_alive()
        if wait and started:
            self._thread.join()


_EVENTS_LOCK = threading.Lock()
_events_running = False


def _run_event_loop() -> None:
    """libvirt's default event implementation, once per process, on a daemon thread of its own;
    a connection delivers domain events only if this ran before it was opened."""
    global _events_running
    with _EVENTS_LOCK:
        if _events_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # a callback's error: the loop goes on
                    continue

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _events_running = True


#: A lifecycle event's receiver: (domain name, domain UUID, event type, detail), called on
#: libvirt's event thread.
LifecycleCallback = Callable[[str, str, int, int], None]


class LibvirtHypervisor:
    def __init__(self, uri: str, policy: DomainPolicy | None = None, *, events: bool = False) -> None:
        self.uri = uri
        # What a domain defined here may contain ([templates]); the defaults when not given.
        self.policy = policy or DomainPolicy.default()
        self._conn: libvirt.virConnect | None = None
        self._pool = _DaemonWorker("libvirt")
        # Domain lifecycle events wanted (watch_lifecycle): the event loop runs before open().
        self.events = events
        self._callbacks: list[int] = []

    @property
    def is_test_driver(self) -> bool:
        return self.uri.startswith("test:")

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                return fn()
            except libvirt.libvirtError as exc:
                raise _map_error(exc, what) from exc

        return await asyncio.get_running_loop().run_in_executor(self._pool, guarded)

    def _c(self) -> libvirt.virConnect:
        if self._conn is None:
            raise HypervisorError("hypervisor connection is not open")
        return self._conn

    async def open(self) -> None:
        """Connect; HypervisorUnavailable with libvirt's one-line reason (e.g. the socket it tried)."""

        def do() -> None:
            if self.events:
                _run_event_loop()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                reason = " ".join(str(exc.get_error_message() or exc).split())
                raise HypervisorUnavailable(f"cannot open {self.uri}: {reason}") from exc

        await self._run(f"open {self.uri}", do)

    async def watch_lifecycle(self, callback: LifecycleCallback) -> None:
        """``callback`` for every domain lifecycle event of this connection (libvirt's
        VIR_DOMAIN_EVENT_ID_LIFECYCLE), on libvirt's event thread; needs ``events``."""
        if not self.events:
            raise HypervisorError("lifecycle events need a hypervisor opened with events=True")

        def relay(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            try:
                callback(dom.name(), dom.UUIDString(), int(event), int(detail))
            except Exception:  # never into libvirt's loop
                pass

        def do() -> None:
            self._callbacks.append(self._c().domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, relay, None))

        await self._run("watch lifecycle events", do)

    async def close(self) -> None:
        def do() -> None:
            for cb in self._callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    self._c().domainEventDeregisterAny(cb)
            self._callbacks = []
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await self._run("close", do)
        finally:
            self._pool.shutdown(wait=False)

    async def host_info(self) -> tuple[int, int, str]:
        """(cpus, memory KiB, hostname) of this host."""

        def do() -> tuple[int, int, str]:
            info = self._c().getInfo()
            return int(info[2]), int(info[1]) * 1024, self._c().getHostname()

        return await self._run("host info", do)

    @staticmethod
    def _info(dom: libvirt.virDomain) -> DomainInfo:
        state, _max_mem, mem, vcpus, cpu_time = dom.info()
        return DomainInfo(dom.name(), dom.UUIDString(), _STATES.get(state, VMStatus.UNKNOWN), int(vcpus), int(mem), int(cpu_time))

    async def domains(self) -> list[DomainInfo]:
        """Every domain libvirt knows, running or defined."""

        def do() -> list[DomainInfo]:
            out = []
            for d in self._c().listAllDomains():
                try:
                    out.append(self._info(d))
                except libvirt.libvirtError as exc:
                    # A domain leaving (migrated away, destroyed) between the listing and its info.
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return out

        return await self._run("list domains", do)

    def _lookup(self, name: str) -> libvirt.virDomain:
        return self._c().lookupByName(name)

    async def start(self, xml: str, *, checked: bool = False) -> DomainInfo:
        """Define and start a persistent domain; nothing stays defined if the start fails.

        The XML is checked against this host's template policy and rebuilt first, whoever sent
        it (a group manager's order, a peer's migrated domain): only the rebuilt XML is defined.
        ``checked``: the XML comes from ``adapt_domain_xml``, which checked the template under
        the policy before it added the files the local controller made itself (a VM's overlay
        and config drive, outside the image store): defined as it is.
        """
        if not checked:
            xml = check_on_host(xml, self.policy, test_driver=self.is_test_driver).xml

        def do() -> DomainInfo:
            dom = self._c().defineXML(xml)
            try:
                dom.create()
            except libvirt.libvirtError:
                try:
                    dom.undefine()
                except libvirt.libvirtError:
                    pass
                raise
            return self._info(dom)

        return await self._run("start domain", do)

    async def lifecycle(self, name: str, action: str, *, uuid: str | None = None) -> DomainInfo | None:
        """suspend, resume, shutdown, reboot or destroy a domain by name; given ``uuid``, only if
        the domain of that name is still that one (checked on the libvirt thread, so no other
        call can replace the domain between the check and the action)."""

        def do() -> DomainInfo | None:
            dom = self._lookup(name)
            if uuid is not None and dom.UUIDString() != uuid:
                raise HypervisorError(f"{name} is domain {dom.UUIDString()}, not {uuid}", code=ErrorCode.VIRTUAL_MACHINE_MISMATCH)
            if action == "suspend":
                dom.suspend()
            elif action == "resume":
                dom.resume()
            elif action == "shutdown":
                dom.shutdown()
            elif action == "reboot":
                dom.reboot(0)
            elif action == "destroy":
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
                return None
            else:
                raise UnsupportedOperation(f"unknown action {action}")
            return self._info(dom)

        return await self._run(f"{action} {name}", do)

    async def resize(self, name: str, vcpus: int, memory_kib: int, *, uuid: str | None = None) -> DomainInfo:
        """Give the running domain ``name`` (given ``uuid``: only if it is that one) ``vcpus``
        and ``memory_kib``, live, and in its persistent definition too. Within its maximums
        (``<vcpu>``, ``<memory>``): vcpus by hotplug, memory by the balloon. What the hypervisor
        cannot do live is ResizeRefused, with libvirt's reason and nothing half-changed where
        libvirt allows undoing it (the vcpus are set back if the memory change is refused)."""

        def do() -> DomainInfo:
            dom = self._lookup(name)
            if uuid is not None and dom.UUIDString() != uuid:
                raise HypervisorError(f"{name} is domain {dom.UUIDString()}, not {uuid}", code=ErrorCode.VIRTUAL_MACHINE_MISMATCH)
            if not dom.isActive():
                raise ResizeRefused(f"{name} is not running: only a running domain is resized here")
            persistent = bool(dom.isPersistent())

            def apply(setter: Callable[[int, int], Any], value: int) -> None:
                setter(value, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                if persistent:
                    # Separately (some drivers refuse LIVE|CONFIG together), and only as a
                    # courtesy: the live domain is what runs, and what a migration sends on.
                    with contextlib.suppress(libvirt.libvirtError):
                        setter(value, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

            _state, max_mem, mem, old_vcpus, _cpu = dom.info()
            max_vcpus = dom.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_MAXIMUM | libvirt.VIR_DOMAIN_AFFECT_LIVE)
            if vcpus > max_vcpus:
                raise ResizeRefused(f"{name} can have at most {max_vcpus} vcpus live (its <vcpu> maximum), not {vcpus}")
            if memory_kib > max_mem:
                raise ResizeRefused(f"{name} can have at most {max_mem} KiB of memory live (its <memory> maximum), "
                                    f"not {memory_kib}")
            try:
                if vcpus != old_vcpus:
                    apply(dom.setVcpusFlags, vcpus)
            except libvirt.libvirtError as exc:
                raise ResizeRefused(f"the hypervisor cannot set {name}'s vcpus to {vcpus} live: "
                                    f"{' '.join(str(exc.get_error_message() or exc).split())}") from exc
            try:
                if memory_kib != mem:
                    apply(dom.setMemoryFlags, memory_kib)
            except libvirt.libvirtError as exc:
                if vcpus != old_vcpus:
                    with contextlib.suppress(libvirt.libvirtError):
                        apply(dom.setVcpusFlags, old_vcpus)
                raise ResizeRefused(f"the hypervisor cannot set {name}'s memory to {memory_kib} KiB live: "
                                    f"{' '.join(str(exc.get_error_message() or exc).split())}") from exc
            return self._info(dom)

        return await self._run(f"resize {name}", do)

    async def xml(self, name: str, *, migratable: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0
        return await self._run(f"xml of {name}", lambda: self._lookup(name).XMLDesc(flags))

    async def domain_types(self) -> frozenset[str]:
        """The domain types this host offers for its own architecture (``kvm``, ``qemu``...):
        from its capabilities; empty when they cannot be read (the test driver's are fixed)."""

        def do() -> frozenset[str]:
            import xml.etree.ElementTree as ET

            caps = ET.fromstring(self._c().getCapabilities())
            arch = caps.findtext("host/cpu/arch") or ""
            types = set()
            for guest in caps.findall("guest"):
                a = guest.find("arch")
                if a is not None and (not arch or a.get("name") == arch):
                    types |= {d.get("type") or "" for d in a.findall("domain")}
            return frozenset(t for t in types if t)

        try:
            return await self._run("capabilities", do)
        except HypervisorError:
            return frozenset()

    async def migrate(self, name: str, destination: dict[str, Any], *, uuid: str | None = None,
                      dest_xml: str | None = None, migrate_disks: list[str] | None = None) -> dict[str, Any]:
        """Live-migrate ``name`` (given ``uuid``: only if it is that domain) to the hypervisor
        described by ``destination`` (its hypervisorSettings). Runs on its own thread: a
        migration can take minutes and must not hold up monitoring or other VMs' actions on
        the libvirt thread."""
        from localcontroller.hypervisor.migration import MigrationSettings, migrate_domain

        mig = destination.get("migration") or {}
        try:
            settings = MigrationSettings(
                method=str(mig.get("method", "live")), timeout=float(mig.get("timeout", 60.0)),
                auto_converge=bool(mig.get("autoConverge", False)), post_copy=bool(mig.get("postCopy", False)),
                bandwidth_mib=int(mig["bandwidth"]) if mig.get("bandwidth") else None,
                recovery_timeout=float(mig.get("recoveryTimeout", 60.0)),
            )
        except (TypeError, ValueError) as exc:
            raise HypervisorError(f"bad migration settings: {exc}") from exc
        uri = destination.get("remoteUri")
        if not uri:
            raise HypervisorError("destination has no remoteUri in its hypervisorSettings")
        domain = await self._run(f"look up {name}", lambda: self._lookup(name))

        def do() -> dict[str, Any]:
            result = migrate_domain(domain, str(uri), destination.get("migrationUri"), settings, expected_uuid=uuid,
                                    dest_xml=dest_xml, migrate_disks=migrate_disks)
            return {"duration": result.duration, "libvirtSeconds": result.libvirt_seconds, "nonLive": False,
                    "pausedToConverge": result.paused_to_converge, "switchedToPostCopy": result.switched_to_post_copy,
                    **({"postCopyRecovered": True, "recoveryAttempts": result.recovery_attempts}
                       if result.post_copy_recovered else {})}

        return await asyncio.get_running_loop().run_in_executor(None, do)

    async def raw(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn(connection)`` on the libvirt thread (for migration and other rare calls)."""
        return await self._run(what, lambda: fn(self._c()))
