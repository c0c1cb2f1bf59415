"""Clients of the Snooze HTTP API: one asynchronous client and everything built on it.

- ``SnoozeClient`` (asyncio, aiohttp) — the only code that speaks HTTP;
- ``SyncSnoozeClient`` — the same calls, blocking;
- ``snooze.client.java`` — the original Java client's classes (``CommunicatorFactory`` …);
- ``snooze.client.libcloud_driver`` — the libcloud compute driver (``Provider.SNOOZE``);
- ``snooze.client.cli`` — the ``snooze submit|vms|vm|suspend|…`` verbs.

The Java-style, libcloud and CLI modules are imported on demand (libcloud registration has
a side effect on libcloud, and nobody should pay for it by importing this package).
"""

from snooze.client.aio import SnoozeClient
from snooze.client.errors import SnoozeClientError
from snooze.client.sync import SyncSnoozeClient
from snooze.client.templates import (
    libvirt_template,
    libvirt_template_file,
    network_demand,
    sized_template,
    submission_request,
)
from snooze.client.types import Progress

__all__ = [
    "Progress",
    "SnoozeClient",
    "SnoozeClientError",
    "SyncSnoozeClient",
    "libvirt_template",
    "libvirt_template_file",
    "network_demand",
    "sized_template",
    "submission_request",
]
