"""The ``ovs`` plugin: the VM's tap device as a port of an Open vSwitch bridge, through the
host's OVSDB (ovsdbapp).

``plug``: the persistent tap ``vif.vif_name`` (pyroute2, up, the network's MTU), then in **one
transaction** the bridge ``vif.bridge_name`` (``datapath_type`` from the VIF's port profile, or
the plugin's option: ``netdev`` for the userspace datapath), the port and its interface with
os-vif's ``external_ids``: ``iface-id`` (the profile's ``interface_id``), ``iface-status``
(``active``), ``attached-mac`` (the guest's MAC), ``vm-uuid``; the network's VLAN as the
port's ``tag`` (an access port). Bridge and port are kept if they
exist, so a second plug changes nothing. If the transaction fails (OVSDB down) the tap this
call made is removed. ``unplug`` removes the port (keeping the bridge) and the tap.

Options (``[vif.ovs]``): ``ovsdb`` (the connection string, default
``unix:/var/run/openvswitch/db.sock``), ``datapath_type`` (``system``), ``timeout`` (10 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localcontroller.vif import netlink
from localcontroller.vif.base import VifPlugin
from localcontroller.vif.ovsdb import Ovsdb, OvsdbError
from snooze.vif.errors import PlugException, UnplugException
from snooze.vif.objects import (
    DATAPATH_TYPES,
    InstanceInfo,
    VIFBase,
    VIFOpenVSwitch,
    VIFPortProfileOpenVSwitch,
)

__all__ = ["OvsPlugin"]

DEFAULT_OVSDB = "unix:/var/run/openvswitch/db.sock"


class OvsPlugin(VifPlugin):
    name = "ovs"
    vif_classes = ((VIFOpenVSwitch, "1.0"),)
    port_profiles = ((VIFPortProfileOpenVSwitch, "1.0"),)

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.datapath_type = str(self.options.get("datapath_type", "system"))
        if self.datapath_type not in DATAPATH_TYPES:
            raise ValueError(f"[vif.ovs] datapath_type must be one of {', '.join(DATAPATH_TYPES)}, not {self.datapath_type!r}")
        self.db = Ovsdb(str(self.options.get("ovsdb", DEFAULT_OVSDB)), float(self.options.get("timeout", 10.0)))

    def external_ids(self, vif: VIFOpenVSwitch, instance: InstanceInfo) -> dict[str, str]:
        profile = vif.port_profile
        iface_id = profile.interface_id if isinstance(profile, VIFPortProfileOpenVSwitch) else vif.id
        ids = {"iface-id": iface_id, "iface-status": "active", "vm-uuid": instance.uuid}
        if vif.address:
            ids["attached-mac"] = vif.address
        return ids

    def plug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        assert isinstance(vif, VIFOpenVSwitch)
        profile = vif.port_profile
        datapath = profile.datapath_type if isinstance(profile, VIFPortProfileOpenVSwitch) and profile.datapath_type != "system" \
            else self.datapath_type
        mtu = vif.network.mtu if vif.network is not None else None
        made = False
        try:
            made = netlink.ensure_tap(vif.vif_name, bridge=None, mtu=mtu, guest_mac=vif.address)
            self.db.plug_port(vif.bridge_name, vif.vif_name, datapath_type=datapath,
                              external_ids=self.external_ids(vif, instance), mtu=mtu,
                              tag=vif.network.vlan if vif.network is not None else None,
                              uplink=vif.network.bridge_interface if vif.network is not None else None)
        except Exception as exc:  # whatever failed (a library's bug too), the tap made goes
            if made:
                try:
                    netlink.delete_link(vif.vif_name)
                except netlink.VifNetlinkError:
                    pass
            if not isinstance(exc, (netlink.VifNetlinkError, OvsdbError)):
                raise
            raise PlugException(f"ovs could not plug {vif.vif_name} of {instance.name or instance.uuid} "
                                f"into {vif.bridge_name}: {exc}") from exc

    def unplug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        assert isinstance(vif, VIFOpenVSwitch)
        try:
            self.db.unplug_port(vif.bridge_name, vif.vif_name)
            netlink.delete_link(vif.vif_name)
        except (netlink.VifNetlinkError, OvsdbError) as exc:
            raise UnplugException(f"ovs could not unplug {vif.vif_name} from {vif.bridge_name}: {exc}") from exc

    def close(self) -> None:
        self.db.close()
