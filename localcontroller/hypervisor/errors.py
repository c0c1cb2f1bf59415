"""The hypervisor layer's own errors: the rest of the local controller never sees a libvirtError.

Each error carries a short machine-readable ``code`` (what the HTTP layer and the group manager
report to users) and a human message.
"""

from __future__ import annotations


class HypervisorError(Exception):
    """Something the hypervisor refused or failed to do."""

    code = "HYPERVISOR_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class DomainNotFound(HypervisorError):
    code = "VIRTUAL_MACHINE_NOT_FOUND"


class InvalidDomainXML(HypervisorError):
    code = "INVALID_LIBVIRT_TEMPLATE"


class NotEnoughCapacity(HypervisorError):
    code = "NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY"


class MigrationFailed(HypervisorError):
    code = "MIGRATION_FAILED"


class UnsupportedOperation(HypervisorError):
    code = "OPERATION_NOT_SUPPORTED"
