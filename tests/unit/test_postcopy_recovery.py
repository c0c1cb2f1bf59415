"""The post-copy recovery step of ``migrate_domain`` against a fake domain: when it resumes
(``VIR_MIGRATE_POSTCOPY_RESUME``, with the first call's flags and parameters), when it gives up
and what it then says. The real thing is tests/integration/test_postcopy_recovery.py."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from localcontroller.hypervisor.migration import (
    GONE_THERE,
    RUNNING_THERE,
    UNREACHABLE,
    MigrationSettings,
    PostCopyFailed,
    _recover_post_copy,
    resume_command,
)
from snooze.codes import ErrorCode, VMStatus
from snooze.records import VMRecord

FLAGS = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_POSTCOPY
PARAMS: dict[str, object] = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"}


def _error(message: str) -> libvirt.libvirtError:
    """A libvirtError carrying ``message``: the constructor takes the thread's last libvirt error
    when there is one (left by an earlier test of this worker, e.g. 'Cannot write data: Broken
    pipe') over its own message, so that is cleared first."""
    libvirt.virResetLastError()
    return libvirt.libvirtError(message)


class FakeDomain:
    """A source domain in failed post-copy: each resume call fails with the next of ``failures``."""

    def __init__(self, failures: list[str], active: bool = True) -> None:
        self.failures = list(failures)
        self.calls: list[tuple[str, dict[str, object], int]] = []
        self.active = active

    def migrateToURI3(self, uri: str, params: dict[str, object], flags: int) -> int:  # noqa: N802 (libvirt's name)
        self.calls.append((uri, dict(params), flags))
        if self.failures:
            raise _error(self.failures.pop(0))
        self.active = False
        return 0

    def isActive(self) -> bool:  # noqa: N802
        return self.active

    def connect(self) -> Any:
        raise _error("no connection in a fake")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def recover(domain: FakeDomain, probe: Any, timeout: float = 5.0, clock: Clock | None = None) -> int:
    clock = clock or Clock()
    return _recover_post_copy(
        domain,
        "qemu+tcp://dest/system", "tcp://127.0.0.1", PARAMS, FLAGS,
        MigrationSettings(post_copy=True, recovery_timeout=timeout, bandwidth_mib=4),
        probe=probe, name="vm-1", error="stream cut", sleep=clock.sleep, clock=clock,
    )


def test_resumes_with_the_first_calls_flags_and_params_after_failed_attempts() -> None:
    domain = FakeDomain(["QEMU reports migration is still running"])

    assert recover(domain, lambda: RUNNING_THERE) == 2

    assert len(domain.calls) == 2
    for uri, params, flags in domain.calls:
        assert uri == "qemu+tcp://dest/system" and params == PARAMS
        assert flags == FLAGS | libvirt.VIR_MIGRATE_POSTCOPY_RESUME


def test_a_destination_that_lost_the_guest_is_reported_lost_without_trying() -> None:
    domain = FakeDomain([])

    with pytest.raises(PostCopyFailed) as caught:
        recover(domain, lambda: GONE_THERE)

    assert caught.value.guest_lost and caught.value.code is ErrorCode.MIGRATION_GUEST_LOST
    assert "destroy the VM" in caught.value.message
    assert domain.calls == []


def test_an_unreachable_destination_is_waited_for_then_reported_with_the_resume_command() -> None:
    domain = FakeDomain([])
    clock = Clock()

    with pytest.raises(PostCopyFailed) as caught:
        recover(domain, lambda: UNREACHABLE, timeout=3.0, clock=clock)

    error = caught.value
    assert not error.guest_lost and error.code is ErrorCode.MIGRATION_NEEDS_RECOVERY
    assert domain.calls == [], "no resume while the destination's libvirt does not answer"
    assert clock.now >= 3.0
    assert "does not answer" in error.message and "--postcopy-resume" in error.message
    assert "paused at both hosts" in error.message


def test_the_destination_coming_back_within_the_timeout_is_resumed() -> None:
    domain = FakeDomain([])
    answers = iter([UNREACHABLE, UNREACHABLE, RUNNING_THERE])

    assert recover(domain, lambda: next(answers)) == 1


def test_attempts_that_keep_failing_end_with_the_last_reason() -> None:
    domain = FakeDomain(["Unable to find an unused port"] * 100)

    with pytest.raises(PostCopyFailed) as caught:
        recover(domain, lambda: RUNNING_THERE, timeout=2.0)

    assert "Unable to find an unused port" in caught.value.message
    assert 2 <= len(domain.calls) <= 6


def test_a_migration_that_finished_after_all_needs_no_resume() -> None:
    domain = FakeDomain([], active=False)

    assert recover(domain, lambda: RUNNING_THERE) == 0
    assert domain.calls == []


def test_the_resume_command_repeats_the_migrations_addresses_and_bandwidth() -> None:
    command = resume_command("qemu:///system", "vm 1", "qemu+tcp://dest/system", "tcp://10.0.0.2:49152",
                             MigrationSettings(bandwidth_mib=8))

    assert command.startswith("virsh -c qemu:///system migrate --live --p2p")
    assert "--postcopy --postcopy-resume 'vm 1' qemu+tcp://dest/system" in command
    assert "--migrateuri tcp://10.0.0.2:49152 --listen-address 10.0.0.2" in command
    assert "--bandwidth 8 --postcopy-bandwidth 8" in command


# -- the VM's record ----------------------------------------------------------------------------

def _running_record() -> VMRecord:
    return VMRecord("vm-1", VMStatus.RUNNING, lc_id="lc-a", requested=(1.0, 65536.0, 0.0, 0.0))


def test_a_vm_stuck_in_post_copy_is_recorded_paused_with_the_code_and_the_instructions() -> None:
    rec = _running_record()
    rec.move("lc-b", None, "gm-1", None, "uuid-1", {"from": "lc-a", "to": "lc-b"})
    rec.stall(ErrorCode.MIGRATION_NEEDS_RECOVERY, "resume it", {"from": "lc-a", "to": "lc-b", "postCopyFailed": True})

    assert (rec.status, rec.error_code, rec.message, rec.lc_id) == (VMStatus.PAUSED, ErrorCode.MIGRATION_NEEDS_RECOVERY,
                                                                    "resume it", "lc-b")
    meta = rec.metadata()
    assert meta["errorCode"] == "MIGRATION_NEEDS_RECOVERY" and meta["lastMigration"]["postCopyFailed"]
    # Written and read back (the code is one every reader knows).
    again = VMRecord.from_json(rec.to_json(), "vm-1")
    assert again.error_code is ErrorCode.MIGRATION_NEEDS_RECOVERY and again.status is VMStatus.PAUSED


def test_a_later_migration_of_a_stuck_vm_records_it_running_again() -> None:
    rec = _running_record()
    rec.stall(ErrorCode.MIGRATION_NEEDS_RECOVERY, "resume it", {"from": "lc-a", "to": "lc-b"})
    rec.move("lc-b", None, "gm-1", None, "uuid-1", {"from": "lc-a", "to": "lc-b", "postCopyRecovered": True})

    assert (rec.status, rec.error_code, rec.message) == (VMStatus.RUNNING, None, None)


def test_a_guest_lost_vm_stays_recorded_on_its_source_and_a_finished_vm_is_not_stalled() -> None:
    rec = _running_record()
    rec.stall(ErrorCode.MIGRATION_GUEST_LOST, "destroy it", {"from": "lc-a", "to": "lc-b"})
    assert rec.status is VMStatus.PAUSED and rec.lc_id == "lc-a"

    gone = VMRecord("vm-2", VMStatus.ERROR, error_code=ErrorCode.VIRTUAL_MACHINE_LOST)
    gone.stall(ErrorCode.MIGRATION_NEEDS_RECOVERY, "resume it", {})
    assert gone.status is VMStatus.ERROR and gone.error_code is ErrorCode.VIRTUAL_MACHINE_LOST
