"""The local controller's migration step: move one domain to another hypervisor.

``migrate_domain`` live-migrates with libvirt, peer to peer: the source daemon drives the
whole migration and the domain's memory flows straight between the two QEMUs. Like the
original Snooze it bounds the time a migration may take: after ``timeout`` seconds a watchdog
forces convergence, by switching to post-copy when that is allowed and by pausing the domain
otherwise (OpenStack Nova's ``live_migration_completion_timeout`` with the ``force_complete``
action does the same). On failure the domain keeps running at the source and nothing of it is
left at the destination.

After a switch to post-copy that is no longer true: the destination runs the guest while part
of its memory is still at the source, so a failure (the stream cut, the destination's daemon
gone) leaves it paused at both hosts. ``migrate_domain`` then resumes the migration itself
(``VIR_MIGRATE_POSTCOPY_RESUME``, libvirt >= 8.5), retrying for ``recovery_timeout`` seconds;
when that is impossible it raises ``PostCopyFailed``, which says what an operator must do:
resume it later (``MIGRATION_NEEDS_RECOVERY``, the guest's state lives at the destination), or
nothing can be saved because the destination's QEMU is gone (``MIGRATION_GUEST_LOST``).

Where libvirt cannot migrate (its test driver) the local controller moves the domain
non-live instead, across processes (``lc.receiveDomain``, see localcontroller/service.py).

It is blocking; callers run it in a worker thread. No ``libvirtError`` escapes: failures
are ``MigrationFailed``, or ``UnsupportedOperation`` when the driver cannot migrate at all.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import libvirt

from localcontroller.hypervisor.errors import MigrationFailed, UnsupportedOperation
from snooze.codes import ErrorCode

__all__ = [
    "MIGRATION_METHODS",
    "MigrationResult",
    "MigrationSettings",
    "PostCopyFailed",
    "migrate_domain",
    "migration_flags",
    "resume_command",
]

log = logging.getLogger(__name__)

MIGRATION_METHODS = ("live", "nonshared-incremental", "nonshared-full")
"""The original's "live" (shared storage), "non-shared incremental" and "non-shared full"."""

_WATCHDOG_PERIOD = 0.1
# Between two attempts to resume a failed post-copy migration: QEMU needs a moment to notice a
# cut stream ("QEMU reports migration is still running" until it does).
_RECOVERY_PERIOD = 0.5

# Error codes that mean "this driver cannot migrate", as opposed to "this migration failed".
_UNSUPPORTED_CODES = frozenset({libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED})


@dataclass(frozen=True)
class MigrationSettings:
    """How the local controller migrates; one value for the whole cluster."""

    method: str = "live"
    """``live`` (disks on shared storage), ``nonshared-incremental`` (copy disks whose backing
    image the destination has) or ``nonshared-full`` (copy whole disks)."""
    timeout: float = 60.0
    """Seconds after which the watchdog forces convergence (post-copy, else pause)."""
    auto_converge: bool = False
    """Let QEMU throttle the guest's vCPUs when memory is dirtied faster than it is sent."""
    post_copy: bool = False
    """Allow post-copy, and use it rather than pausing when the timeout expires."""
    bandwidth_mib: int | None = None
    """Bandwidth cap of the migration stream in MiB/s; ``None`` for libvirt's default."""
    abort_after: float | None = None
    """Seconds after convergence was forced at which the migration is aborted (``None``: never)."""
    recovery_timeout: float = 60.0
    """Seconds during which a post-copy migration that failed is resumed
    (``VIR_MIGRATE_POSTCOPY_RESUME``, retried) before it is reported as needing recovery;
    0: a single attempt."""

    def __post_init__(self) -> None:
        if self.method not in MIGRATION_METHODS:
            raise ValueError(f"migration method {self.method!r} not in {MIGRATION_METHODS}")
        if self.timeout < 0:
            raise ValueError("migration timeout must not be negative")
        if self.bandwidth_mib is not None and self.bandwidth_mib <= 0:
            raise ValueError("migration bandwidth must be positive")
        if self.abort_after is not None and self.abort_after < 0:
            raise ValueError("abort_after must not be negative")
        if self.recovery_timeout < 0:
            raise ValueError("recovery_timeout must not be negative")


@dataclass(frozen=True)
class MigrationResult:
    """What one completed move took."""

    duration: float
    """Seconds for the whole step, checks and clean-up included."""
    libvirt_seconds: float
    """Seconds spent inside libvirt's migration call."""
    paused_to_converge: bool
    switched_to_post_copy: bool
    post_copy_recovered: bool = False
    """The post-copy phase failed and was resumed (``VIR_MIGRATE_POSTCOPY_RESUME``) to the end."""
    recovery_attempts: int = 0


class PostCopyFailed(MigrationFailed):
    """A migration failed after its switch to post-copy and could not be resumed.

    ``guest_lost`` False (``MIGRATION_NEEDS_RECOVERY``): the guest is paused at both hosts, its
    running state at the destination, where it will end once resumed. True
    (``MIGRATION_GUEST_LOST``): the destination's QEMU is gone with that state; the copy
    paused at the source is stale and can never run again. The message says what to do.
    """

    def __init__(self, message: str, *, guest_lost: bool) -> None:
        super().__init__(
            message,
            code=ErrorCode.MIGRATION_GUEST_LOST if guest_lost else ErrorCode.MIGRATION_NEEDS_RECOVERY,
        )
        self.guest_lost = guest_lost


def migration_flags(settings: MigrationSettings) -> int:
    """The ``virDomainMigrate*`` flags for these settings."""
    flags: int = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    if settings.method == "nonshared-incremental":
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    elif settings.method == "nonshared-full":
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if settings.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if settings.post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


def _migration_params(migration_uri: str | None, settings: MigrationSettings) -> dict[str, object]:
    params: dict[str, object] = {}
    if migration_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri
        # Without a listen address the destination QEMU listens on every interface; listen
        # only where the source is told to connect.
        host = urlsplit(migration_uri).hostname
        if host:
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = host
    if settings.bandwidth_mib is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = settings.bandwidth_mib
        # QEMU's post-copy phase has its own cap, unlimited by default: the same one for both.
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = settings.bandwidth_mib
    return params


def _message(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


class _Watchdog(threading.Thread):
    """Forces a running migration to converge once ``settings.timeout`` has passed."""

    def __init__(self, domain: libvirt.virDomain, name: str, settings: MigrationSettings) -> None:
        super().__init__(name=f"migration-watchdog-{name}", daemon=True)
        self.domain = domain
        self.domain_name = name
        self.settings = settings
        self.done = threading.Event()
        self.paused = False
        self.switched_to_post_copy = False
        self.aborted = False

    def run(self) -> None:
        if self.done.wait(self.settings.timeout):
            return
        forced_at = time.monotonic()
        while not self.done.is_set():
            if not (self.paused or self.switched_to_post_copy):
                self._force_convergence()
            elif (
                self.settings.abort_after is not None
                and not self.aborted
                and not self.switched_to_post_copy  # a post-copy migration cannot be undone
                and time.monotonic() - forced_at >= self.settings.abort_after
            ):
                self._abort()
            self.done.wait(_WATCHDOG_PERIOD)

    def _force_convergence(self) -> None:
        name = self.domain_name
        try:
            if self.settings.post_copy:
                # Refused until the pre-copy phase has begun: retried at the next tick.
                self.domain.migrateStartPostCopy(0)
                self.switched_to_post_copy = True
                log.info(
                    "migration of %s: switched to post-copy after %.1f s",
                    name,
                    self.settings.timeout,
                )
            else:
                self.domain.suspend()
                self.paused = True
                log.info(
                    "migration of %s: paused the domain to converge after %.1f s",
                    name,
                    self.settings.timeout,
                )
        except libvirt.libvirtError as exc:
            log.debug("migration of %s: cannot force convergence yet: %s", name, _message(exc))

    def _abort(self) -> None:
        try:
            self.domain.abortJob()
            self.aborted = True
            log.warning(
                "migration of %s: aborted after %.1f s more",
                self.domain_name,
                self.settings.abort_after,
            )
        except libvirt.libvirtError as exc:
            log.debug("migration of %s: abort refused: %s", self.domain_name, _message(exc))

    def stop(self) -> None:
        self.done.set()
        self.join()


def _lookup(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    # Listing rather than lookupByUUIDString: a miss is normal here, and libvirt's default
    # error handler would print every miss on stderr.
    try:
        domains = conn.listAllDomains(0)
    except libvirt.libvirtError:
        return None
    for candidate in domains:
        with contextlib.suppress(libvirt.libvirtError):
            if candidate.UUIDString() == uuid:
                return candidate
    return None


def _open(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"cannot reach destination {uri}: {_message(exc)}") from exc


def _check_absent(conn: libvirt.virConnect, name: str, uuid: str, where: str) -> None:
    """Refuse before anything changes when the destination already has this domain's name or UUID."""
    try:
        domains = conn.listAllDomains(0)
        present = {(d.name(), d.UUIDString()) for d in domains}
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"{name}: cannot query {where}: {_message(exc)}") from exc
    for other_name, other_uuid in present:
        if other_uuid == uuid:
            raise MigrationFailed(f"{name}: a domain with UUID {uuid} already exists at {where}")
        if other_name == name:
            raise MigrationFailed(f"{name}: a domain of that name already exists at {where}")


def _remove(domain: libvirt.virDomain) -> None:
    """Destroy and undefine, whatever state the domain is in."""
    with contextlib.suppress(libvirt.libvirtError):
        if domain.isActive():
            domain.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        if domain.isPersistent():
            domain.undefine()


def migrate_domain(
    domain: libvirt.virDomain,
    destination_uri: str,
    migration_uri: str | None,
    settings: MigrationSettings,
    *,
    expected_uuid: str | None = None,
    dest_xml: str | None = None,
    migrate_disks: list[str] | None = None,
) -> MigrationResult:
    """Live-migrate a running ``domain`` to the libvirt at ``destination_uri``; blocking.

    ``migration_uri`` (``VIR_MIGRATE_PARAM_URI``, e.g. ``tcp://10.0.0.2``) says where the
    memory stream goes; the destination listens on that host only. Raises ``MigrationFailed``
    with libvirt's message, leaving the domain running at the source, or
    ``UnsupportedOperation`` when the source's driver cannot migrate (the local controller then
    moves the domain non-live). With ``expected_uuid``, a domain with another UUID (a later VM
    that reuses the name) is refused before anything moves (``MigrationFailed`` with the code
    ``VIRTUAL_MACHINE_MISMATCH``).

    ``dest_xml`` (``VIR_MIGRATE_PARAM_DEST_XML``): the domain as the destination must define it
    (e.g. its disks at the destination's paths); ``migrate_disks``
    (``VIR_MIGRATE_PARAM_MIGRATE_DISKS``): the targets whose content a non-shared migration
    copies (the others, e.g. a read-only config drive, must exist at the destination).
    """
    started = time.monotonic()
    try:
        name = domain.name()
        uuid = domain.UUIDString()
        driver = domain.connect().getType()
        active = domain.isActive()
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"cannot inspect the domain to migrate: {_message(exc)}") from exc
    if expected_uuid is not None and uuid != expected_uuid:
        raise MigrationFailed(f"{name} is domain {uuid}, not {expected_uuid}", code=ErrorCode.VIRTUAL_MACHINE_MISMATCH)
    if driver.lower() == "test":
        raise UnsupportedOperation(f"{name}: libvirt's test driver cannot migrate")
    if not active:
        raise MigrationFailed(f"{name}: only a running domain can be live-migrated")
    if _post_copy_failed(domain, failed_only=True):
        # Ordered again to move a domain whose post-copy phase failed: resume that migration
        # (to the same destination: the guest's running state is there, nowhere else).
        attempts = _recover_post_copy(
            domain, destination_uri, migration_uri, _migration_params(migration_uri, settings),
            migration_flags(settings), settings, probe=lambda: _destination_copy(destination_uri, uuid),
            name=name, error="its post-copy phase had failed",
        )
        _ensure_running_at(destination_uri, uuid, name)
        elapsed = time.monotonic() - started
        return MigrationResult(duration=elapsed, libvirt_seconds=elapsed, paused_to_converge=False,
                               switched_to_post_copy=True, post_copy_recovered=True, recovery_attempts=attempts)

    destination = _open(destination_uri)
    try:
        _check_absent(destination, name, uuid, destination_uri)
        flags = migration_flags(settings)
        params = _migration_params(migration_uri, settings)
        if dest_xml:
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = dest_xml
        if migrate_disks is not None and settings.method != "live":
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(migrate_disks)
        watchdog = _Watchdog(domain, name, settings)
        log.info(
            "migrating %s to %s (%s, flags %#x)", name, destination_uri, settings.method, flags
        )
        call_started = time.monotonic()
        watchdog.start()
        error: libvirt.libvirtError | None = None
        try:
            domain.migrateToURI3(destination_uri, params, flags)
        except libvirt.libvirtError as exc:
            error = exc
        finally:
            # Stopped before anything is examined, so it cannot pause the domain afterwards.
            watchdog.stop()
        libvirt_seconds = time.monotonic() - call_started

        if error is not None:
            if _moved_anyway(domain, destination, uuid):
                log.warning(
                    "migration of %s reported %r but the domain runs at %s",
                    name,
                    _message(error),
                    destination_uri,
                )
            elif watchdog.switched_to_post_copy or _post_copy_failed(domain):
                # The destination already ran the guest: neither side has its whole memory,
                # libvirt keeps both paused, and removing either would lose it. Resume.
                recovery = _recover_post_copy(
                    domain, destination_uri, migration_uri, params, flags, settings,
                    probe=lambda: _destination_copy(destination_uri, uuid),
                    name=name, error=_message(error),
                )
                _ensure_running_at(destination_uri, uuid, name)
                return MigrationResult(
                    duration=time.monotonic() - started,
                    libvirt_seconds=libvirt_seconds,
                    paused_to_converge=watchdog.paused,
                    switched_to_post_copy=True,
                    post_copy_recovered=True,
                    recovery_attempts=recovery,
                )
            else:
                _restore_after_failure(domain, destination, uuid, watchdog.paused)
                if error.get_error_code() in _UNSUPPORTED_CODES:
                    raise UnsupportedOperation(
                        f"{name}: cannot migrate: {_message(error)}"
                    ) from error
                reason = " (aborted by the watchdog)" if watchdog.aborted else ""
                raise MigrationFailed(
                    f"{name}: migration to {destination_uri} failed{reason}: {_message(error)}"
                ) from error

        _ensure_running(destination, uuid, name)
        return MigrationResult(
            duration=time.monotonic() - started,
            libvirt_seconds=libvirt_seconds,
            paused_to_converge=watchdog.paused,
            switched_to_post_copy=watchdog.switched_to_post_copy,
        )
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            destination.close()


def _moved_anyway(source: libvirt.virDomain, destination: libvirt.virConnect, uuid: str) -> bool:
    """True when libvirt reported an error but the domain left the source and runs at the
    destination (an error in the last, confirm phase): undoing that would kill the only copy."""
    try:
        if source.isActive():
            return False
    except libvirt.libvirtError:
        pass  # undefined at the source: it moved, or was lost
    arrived = _lookup(destination, uuid)
    try:
        return arrived is not None and bool(arrived.isActive())
    except libvirt.libvirtError:
        return False


def _restore_after_failure(
    source: libvirt.virDomain, destination: libvirt.virConnect, uuid: str, paused: bool
) -> None:
    leftover = _lookup(destination, uuid)
    if leftover is not None:
        # _check_absent made sure it was not there before: this is a half-done incoming copy.
        log.warning("removing the incomplete copy of %s left at the destination", uuid)
        _remove(leftover)
    if paused:
        try:
            source.resume()
        except libvirt.libvirtError as exc:
            log.error(
                "could not resume %s at the source after a failed migration: %s",
                uuid,
                _message(exc),
            )


def _ensure_running(destination: libvirt.virConnect, uuid: str, name: str) -> None:
    arrived = _lookup(destination, uuid)
    if arrived is None:
        raise MigrationFailed(f"{name}: libvirt reported success but it is not at the destination")
    try:
        state, _ = arrived.state()
        if state == libvirt.VIR_DOMAIN_PAUSED:
            # Paused at the source to converge: libvirt may carry that state over.
            arrived.resume()
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"{name}: migrated but cannot be resumed: {_message(exc)}") from exc


# -- after a failed post-copy phase -------------------------------------------------------------

#: What ``_destination_copy`` finds at the destination.
RUNNING_THERE, GONE_THERE, UNREACHABLE = "running", "gone", "unreachable"


def _post_copy_failed(domain: libvirt.virDomain, *, failed_only: bool = False) -> bool:
    """True when libvirt holds the source paused in failed post-copy (or, unless
    ``failed_only``, in post-copy at all: the watchdog may not have seen its own switch
    accepted before the migration failed)."""
    try:
        state, reason = domain.state()
    except libvirt.libvirtError:
        return False
    reasons: tuple[int, ...] = (libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,)
    if not failed_only:
        reasons += (libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,)
    return state == libvirt.VIR_DOMAIN_PAUSED and reason in reasons


def _left(domain: libvirt.virDomain) -> bool:
    """True when the source no longer runs its copy (the migration finished after all)."""
    try:
        return not domain.isActive()
    except libvirt.libvirtError:
        return True  # undefined at the source


def _destination_copy(destination_uri: str, uuid: str) -> str:
    """Where the incoming copy stands: ``running`` (active, so resumable), ``gone`` (its QEMU
    died: the copy left, inactive, is removed — it was not there before the migration), or
    ``unreachable`` (the destination's daemon does not answer: maybe later)."""
    try:
        conn = libvirt.open(destination_uri)
    except libvirt.libvirtError:
        return UNREACHABLE
    try:
        copy = _lookup(conn, uuid)
        if copy is None:
            return GONE_THERE
        try:
            if copy.isActive():
                return RUNNING_THERE
        except libvirt.libvirtError:
            return UNREACHABLE
        log.warning("removing the dead copy of %s left at %s after a failed post-copy", uuid, destination_uri)
        _remove(copy)
        return GONE_THERE
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _source_uri(domain: libvirt.virDomain) -> str:
    try:
        return str(domain.connect().getURI())
    except libvirt.libvirtError:
        return "SOURCE-URI"


def _recover_post_copy(
    domain: libvirt.virDomain,
    destination_uri: str,
    migration_uri: str | None,
    params: dict[str, object],
    flags: int,
    settings: MigrationSettings,
    *,
    probe: Callable[[], str],
    name: str,
    error: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Resume a post-copy migration that failed (``VIR_MIGRATE_POSTCOPY_RESUME`` from the
    source, with the first call's flags and parameters), retried every ``_RECOVERY_PERIOD``
    for ``settings.recovery_timeout`` seconds; the number of attempts once the domain has
    arrived. Raises ``PostCopyFailed`` when the destination lost the guest or the time is up.
    ``probe`` says where the destination's copy stands (``_destination_copy``)."""
    log.warning("migration of %s to %s failed in post-copy (%s): resuming it", name, destination_uri, error)
    resume = getattr(libvirt, "VIR_MIGRATE_POSTCOPY_RESUME", None)
    deadline = clock() + settings.recovery_timeout
    attempts = 0
    last = error
    while True:
        where = probe()
        if where == GONE_THERE:
            log.error("migration of %s: the destination lost the guest during post-copy", name)
            raise PostCopyFailed(
                f"{name}: post-copy migration to {destination_uri} failed ({error}) and the destination's "
                f"QEMU is gone with the guest's running state: the guest cannot be recovered. Its copy paused at "
                f"the source is stale and can never run again: destroy the VM (destroyVirtualMachine) to free "
                f"it, then submit the VM again.",
                guest_lost=True,
            )
        if where == RUNNING_THERE and _left(domain):
            log.warning("migration of %s: finished at the destination after all", name)
            return attempts
        if resume is None:
            last = f"this libvirt ({libvirt.getVersion()}) cannot resume a post-copy migration (needs 8.5)"
            break
        if where == RUNNING_THERE:
            attempts += 1
            try:
                domain.migrateToURI3(destination_uri, params, flags | resume)
            except libvirt.libvirtError as exc:
                last = _message(exc)
                log.info("migration of %s: post-copy recovery attempt %d failed: %s", name, attempts, last)
            else:
                log.warning("migration of %s: post-copy recovered after %d attempt(s)", name, attempts)
                return attempts
        else:
            last = f"the destination's libvirt at {destination_uri} does not answer"
        if clock() >= deadline:
            if probe() == GONE_THERE:  # died during the last attempt: say so, not "resume it"
                continue
            break
        sleep(_RECOVERY_PERIOD)
    log.error("migration of %s: post-copy not recovered after %.0f s (%d attempts): %s",
              name, settings.recovery_timeout, attempts, last)
    raise PostCopyFailed(
        f"{name}: post-copy migration to {destination_uri} failed ({error}) and could not be resumed within "
        f"{settings.recovery_timeout:g} s ({attempts} attempts; last: {last}). The guest is paused at both hosts; "
        f"its running state is at the destination, where it will end. Make the destination's libvirt and the "
        f"migration link work again, then resume it from the source: "
        f"`{resume_command(_source_uri(domain), name, destination_uri, migration_uri, settings)}`. "
        f"Do not destroy either copy: that loses the guest.",
        guest_lost=False,
    )


def resume_command(source_uri: str, name: str, destination_uri: str, migration_uri: str | None,
                   settings: MigrationSettings) -> str:
    """The ``virsh`` command that resumes a failed post-copy migration as ``migrate_domain``
    would (same stream address, listen address and bandwidth)."""
    words = ["virsh", "-c", source_uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
             "--postcopy", "--postcopy-resume", name, destination_uri]
    if migration_uri:
        words += ["--migrateuri", migration_uri]
        host = urlsplit(migration_uri).hostname
        if host:
            words += ["--listen-address", host]
    if settings.bandwidth_mib is not None:
        words += ["--bandwidth", str(settings.bandwidth_mib), "--postcopy-bandwidth", str(settings.bandwidth_mib)]
    return shlex.join(words)


def _ensure_running_at(destination_uri: str, uuid: str, name: str) -> None:
    """``_ensure_running`` on a fresh connection (the first one may not have survived)."""
    try:
        conn = libvirt.open(destination_uri)
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"{name}: resumed, but cannot reach {destination_uri}: {_message(exc)}") from exc
    try:
        _ensure_running(conn, uuid, name)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
