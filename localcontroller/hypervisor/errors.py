"""The hypervisor layer's own errors: the rest of the local controller never sees a libvirtError.

Each error carries its ``ErrorCode`` (what the local controller answers, and the group manager
reports to users: ``snooze.rpc.api_error`` maps it) and a human message.
"""

from __future__ import annotations

from snooze.codes import CodedError, ErrorCode


class HypervisorError(CodedError):
    """Something the hypervisor refused or failed to do."""

    code = ErrorCode.HYPERVISOR_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message, code=code)


class HypervisorUnavailable(HypervisorError):
    """The hypervisor's connection cannot be opened (no libvirtd, a wrong URI, no permission)."""


class DomainNotFound(HypervisorError):
    code = ErrorCode.VIRTUAL_MACHINE_NOT_FOUND


class InvalidDomainXML(HypervisorError):
    code = ErrorCode.INVALID_LIBVIRT_TEMPLATE


class NotEnoughCapacity(HypervisorError):
    code = ErrorCode.NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY


class MigrationFailed(HypervisorError):
    code = ErrorCode.MIGRATION_FAILED


class ResizeRefused(HypervisorError):
    """The hypervisor cannot give a running domain that size live (above its maximum vcpus or
    memory, no vcpu hotplug, a test driver that cannot change a running domain's memory)."""

    code = ErrorCode.RESIZE_REFUSED


class UnsupportedOperation(HypervisorError):
    code = ErrorCode.OPERATION_NOT_SUPPORTED
