"""The network model's HTTP API, part of the bootstrap (same process, same port): ``/networks``,
``/subnets`` (and their addresses), ``/flavors``, ``/fwgroups``, ``/vlans``, ``/vlangroups``,
``/guests``, ``/hypervisors``. The objects live in ZooKeeper (``snooze.network.store``); see
docs/networking.md.
"""

from .api import NetworkApi

__all__ = ["NetworkApi"]
