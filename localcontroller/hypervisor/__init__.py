"""The local controller's hypervisor layer: one libvirt connection per host, errors mapped."""

from localcontroller.hypervisor.errors import (
    DomainNotFound,
    HypervisorError,
    InvalidDomainXML,
    MigrationFailed,
    NotEnoughCapacity,
    ResizeRefused,
    UnsupportedOperation,
)
from localcontroller.hypervisor.libvirt import DomainInfo, LibvirtHypervisor

__all__ = [
    "DomainInfo",
    "DomainNotFound",
    "HypervisorError",
    "InvalidDomainXML",
    "LibvirtHypervisor",
    "MigrationFailed",
    "NotEnoughCapacity",
    "ResizeRefused",
    "UnsupportedOperation",
]
