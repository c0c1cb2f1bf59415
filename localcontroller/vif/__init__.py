"""VIF plugging on the local controller (os-vif's model): ``library.VifLibrary`` loads the
plugins (entry point group ``snooze.vif``: ``linux_bridge``, ``ovs``, ``noop``) and plugs a
VM's interfaces before libvirt starts or receives its domain. The objects and the version rule
are ``snooze.vif``'s. See docs/networking.md, "Plugging a VM's interface"."""
