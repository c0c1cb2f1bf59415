"""The ``linux_bridge`` plugin: the VM's tap device on a Linux bridge.

``plug`` makes (or finds) the bridge ``vif.bridge_name`` with the network's MTU, joins the
network's uplink to it — as a VLAN sub-interface ``vlanTAG`` of ``network.bridge_interface``
when the network has a VLAN and ``should_provide_vlan``, else the interface itself — then makes
the persistent tap ``vif.vif_name`` on the bridge, up, for QEMU to open (libvirt's
``<interface type='ethernet'>`` with ``<target dev=… managed='no'/>``). All idempotent: a second
plug changes nothing. On failure what this call made is removed. ``unplug`` removes the tap and
keeps the bridge and the uplink (other VMs use them).
"""

from __future__ import annotations

from localcontroller.vif import netlink
from localcontroller.vif.base import VifPlugin
from snooze.vif.errors import PlugException, UnplugException
from snooze.vif.objects import InstanceInfo, VIFBase, VIFBridge

__all__ = ["LinuxBridgePlugin"]


class LinuxBridgePlugin(VifPlugin):
    name = "linux_bridge"
    vif_classes = ((VIFBridge, "1.0"),)

    def plug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        assert isinstance(vif, VIFBridge)
        network = vif.network
        mtu = network.mtu if network is not None else None
        made: list[str] = []
        try:
            if netlink.ensure_bridge(vif.bridge_name, mtu):
                made.append(vif.bridge_name)
            if network is not None and network.bridge_interface:
                if network.should_provide_vlan and network.vlan:
                    vlan, new = netlink.ensure_vlan(network.bridge_interface, network.vlan, vif.bridge_name, mtu)
                    if new:
                        made.append(vlan)
                else:
                    netlink.set_master(network.bridge_interface, vif.bridge_name)
            if netlink.ensure_tap(vif.vif_name, bridge=vif.bridge_name, mtu=mtu, guest_mac=vif.address):
                made.append(vif.vif_name)
        except Exception as exc:  # whatever failed (a library's bug too), what was made goes
            for name in reversed(made):
                try:
                    netlink.delete_link(name)
                except netlink.VifNetlinkError:
                    pass
            if not isinstance(exc, netlink.VifNetlinkError):
                raise
            raise PlugException(f"linux_bridge could not plug {vif.vif_name} of {instance.name or instance.uuid} "
                                f"into {vif.bridge_name}: {exc}") from exc

    def unplug(self, vif: VIFBase, instance: InstanceInfo) -> None:
        assert isinstance(vif, VIFBridge)
        try:
            netlink.delete_link(vif.vif_name)
        except netlink.VifNetlinkError as exc:
            raise UnplugException(f"linux_bridge could not unplug {vif.vif_name}: {exc}") from exc
