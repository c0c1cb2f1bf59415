"""Firewall groups applied on a local controller with nftables (issue 12).

:mod:`.render` turns the guests of this host, their firewall groups and the groups' members
into one ``nft -j`` batch replacing ``table inet snooze`` (and ``table bridge snooze``, the
guests' ports) atomically; :mod:`.nft` is the one module that runs ``nft``. See
docs/firewall.md.
"""
