"""Clients of the Snooze HTTP API: one asynchronous client and everything built on it.

- ``SnoozeClient`` (asyncio, aiohttp) — the one module of this package that sends HTTP
  requests (and maps their failures to ``SnoozeClientError``); the others call it;
- ``SyncSnoozeClient`` — the same calls, blocking;
- ``snooze.client.java`` — the original Java client's classes (``CommunicatorFactory`` …);
- ``snooze.client.libcloud_driver`` — the libcloud compute driver (``Provider.SNOOZE``).

The ``snooze`` command (``snooze.cli``) is built on ``SyncSnoozeClient``. Other HTTP in the
project is not the API's client side: the roles serve the API and talk to each other
(``snooze.http``, ``snooze.rpc``), and the development tooling (``snooze.dev``) polls its
local cluster with ``urllib``.

The Java-style and libcloud modules are imported on demand (libcloud registration has
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
