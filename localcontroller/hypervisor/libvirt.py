"""The local controller's hypervisor: one libvirt connection per host, driven off the event loop.

One of the two modules that call libvirt; the other is ``localcontroller.hypervisor.migration``,
the live-migration step (with its own connection to the destination), which ``migrate`` runs
on a thread of its own so that a long migration does not hold up the rest. Every other libvirt
call runs on this module's single worker thread (one connection, calls serialised), so the
asyncio loop never blocks on the hypervisor; in both modules every ``libvirtError`` becomes
one of ``localcontroller.hypervisor.errors``. With the test driver (``test:///PATH/host.xml``) each
``open()`` starts from fresh state, so the connection is kept for the life of the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from localcontroller.hypervisor.adapt import check_on_host
from localcontroller.hypervisor.errors import (
    DomainNotFound,
    HypervisorError,
    InvalidDomainXML,
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


class LibvirtHypervisor:
    def __init__(self, uri: str, policy: DomainPolicy | None = None) -> None:
        self.uri = uri
        # What a domain defined here may contain ([templates]); the defaults when not given.
        self.policy = policy or DomainPolicy.default()
        self._conn: libvirt.virConnect | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libvirt")

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
        def do() -> None:
            self._conn = libvirt.open(self.uri)

        await self._run(f"open {self.uri}", do)

    async def close(self) -> None:
        def do() -> None:
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

    async def start(self, xml: str) -> DomainInfo:
        """Define and start a persistent domain; nothing stays defined if the start fails.

        The XML is checked against this host's template policy and rebuilt first, whoever sent
        it (a group manager's order, a peer's migrated domain): only the rebuilt XML is defined.
        """
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

    async def xml(self, name: str) -> str:
        return await self._run(f"xml of {name}", lambda: self._lookup(name).XMLDesc(0))

    async def migrate(self, name: str, destination: dict[str, Any], *, uuid: str | None = None) -> dict[str, Any]:
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
            )
        except ValueError as exc:
            raise HypervisorError(f"bad migration settings: {exc}") from exc
        uri = destination.get("remoteUri")
        if not uri:
            raise HypervisorError("destination has no remoteUri in its hypervisorSettings")
        domain = await self._run(f"look up {name}", lambda: self._lookup(name))

        def do() -> dict[str, Any]:
            result = migrate_domain(domain, str(uri), destination.get("migrationUri"), settings, expected_uuid=uuid)
            return {"duration": result.duration, "libvirtSeconds": result.libvirt_seconds, "nonLive": False,
                    "pausedToConverge": result.paused_to_converge, "switchedToPostCopy": result.switched_to_post_copy}

        return await asyncio.get_running_loop().run_in_executor(None, do)

    async def raw(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn(connection)`` on the libvirt thread (for migration and other rare calls)."""
        return await self._run(what, lambda: fn(self._c()))
