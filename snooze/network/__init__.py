"""The network model (Loch Ness's objects) in ZooKeeper: networks, subnets, flavors, firewall
groups, VLANs and VLAN groups, guests and hypervisors (``model``), their store under
``network/`` (``store``) and the address management of subnets (``ipam``). docs/networking.md
describes the model and its ZooKeeper layout."""
