"""Firewall groups → one nftables JSON batch (pure: no I/O, no nft, no ZooKeeper).

Input (plain dataclasses of this module; the local controller maps the network model onto them):
the guests on this host (addresses, firewall group, and, when known, their bridge port and MAC),
the firewall groups those guests use, and the membership of every group a rule names (the
addresses of all guests in it, on any host). Output: the batch that replaces Snooze's tables
atomically when ``nft -j -f -`` runs it (one netlink transaction):

- ``table inet snooze`` — every packet *to* a guest address (routed, bridged, or sent by the
  host itself) goes through its group's chain: replies to the guest's own connections, ICMPv6
  neighbour discovery, then the group's rules in order (first match wins), then ``drop``.
  Bridged packets reach the ``forward`` hook of an inet table only through br_netfilter
  (``net.bridge.bridge-nf-call-iptables``/``-ip6tables`` = 1); see docs/firewall.md.
- ``table bridge snooze`` — anti-spoofing on each guest's bridge port (when the port is
  known): a frame from the guest must carry its MAC and one of its addresses (ARP included), so
  a guest cannot claim a group member's address to pass that member's rules.

Each table is replaced by ``add table`` (so the delete never fails), ``delete table``, ``add
table`` and its contents; no other table is named, and ``flush ruleset`` never appears.
Names are derived injectively from the ids (:func:`ident`), so two groups can never share a
set or a chain.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACTIONS",
    "BRIDGE_TABLE",
    "FAMILIES",
    "Group",
    "Guest",
    "HostFirewall",
    "INET_TABLE",
    "PROTOCOLS",
    "RenderError",
    "Rule",
    "TABLE",
    "chain_name",
    "ident",
    "member_set_name",
    "removal",
    "render",
]

TABLE = "snooze"
INET_TABLE = ("inet", TABLE)
BRIDGE_TABLE = ("bridge", TABLE)
FAMILIES = ("inet", "bridge")  # the families Snooze owns a ``snooze`` table in
MAX_NAME = 250  # the kernel's limit on set and chain names is 256 bytes with the NUL

# Rule protocols: name → the layer-4 protocol nft matches (``None``: any protocol).
PROTOCOLS: dict[str, str | None] = {
    "tcp": "tcp",
    "udp": "udp",
    "sctp": "sctp",
    "icmp": "icmp",
    "icmpv6": "ipv6-icmp",
    "all": None,
    "any": None,
}
PORTED = frozenset({"tcp", "udp", "sctp"})
# Rule actions (Loch Ness stores a free string; both spellings are taken; its daemon accepted
# on every rule, so an empty action is accept).
ACTIONS: dict[str, str] = {"accept": "accept", "allow": "accept", "": "accept", "drop": "drop", "deny": "drop", "reject": "reject"}

# Neighbour discovery a guest needs whatever its group says (unicast solicitations carry the
# guest's address as destination): router advertisement, neighbour solicitation/advertisement.
ND_TYPES = ["nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]


class RenderError(ValueError):
    """The input cannot be rendered; ``field`` names what is wrong (e.g. ``rules[2].portEnd``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One rule of a firewall group, for traffic coming *to* the group's guests.

    ``source`` (a CIDR) and ``group`` (a firewall group id: its guests' addresses) may be given
    alone or together (both must match); neither means any source. ``port_start``..``port_end``
    is the destination port range (0..0: any port; only for tcp, udp, sctp).
    """

    source: str | None = None
    group: str | None = None
    port_start: int = 0
    port_end: int = 0
    protocol: str = "tcp"
    action: str = "accept"


@dataclass(frozen=True)
class Group:
    """A firewall group: its rules, in order (the first that matches decides)."""

    id: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Guest:
    """A guest on this host. ``group`` None (or unknown): everything incoming is denied.

    ``interface`` is its port on the bridge (the tap/veth on this host) and ``mac`` its MAC:
    with ``interface`` known, frames from it are checked against its addresses (and ``mac``).
    """

    id: str
    addresses: tuple[str, ...]
    group: str | None = None
    interface: str | None = None
    mac: str | None = None


@dataclass(frozen=True)
class HostFirewall:
    """Everything one host's firewall is rendered from.

    ``groups``: the groups of the guests here (more may be given). ``members``: for every group
    a rule names, the addresses of all its guests, on any host (a group absent here has none).
    """

    guests: tuple[Guest, ...] = ()
    groups: Mapping[str, Group] = field(default_factory=dict)
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# -- names -------------------------------------------------------------------------------
def ident(value: str) -> str:
    """``value`` as an nft identifier, injectively: ASCII letters and digits stay, every other
    byte (``_`` included) becomes ``_XX`` (hex). Two different ids never give one name."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def _name(prefix: str, value: str, what: str) -> str:
    name = prefix + ident(value)
    if len(name) > MAX_NAME:
        raise RenderError(what, f"id too long for an nftables name ({len(value)} characters)")
    return name


def chain_name(group_id: str) -> str:
    """The chain holding group ``group_id``'s rules (in ``table inet snooze``)."""
    return _name("group_", group_id, "group.id")


def member_set_name(group_id: str, version: int) -> str:
    """The set of group ``group_id``'s member addresses of IP ``version`` (4 or 6)."""
    return _name(f"members{version}_", group_id, "group.id")


def _port_chain_name(guest_id: str) -> str:
    return _name("port_", guest_id, "guest.id")


# -- JSON pieces -------------------------------------------------------------------------
def _cmd(verb: str, kind: str, family: str, **body: Any) -> dict[str, Any]:
    if kind == "table":
        return {verb: {"table": {"family": family, "name": TABLE, **body}}}
    return {verb: {kind: {"family": family, "table": TABLE, **body}}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": fld}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _addr(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _rule(family: str, chain: str, *expr: dict[str, Any], comment: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"chain": chain, "expr": list(expr)}
    if comment:
        body["comment"] = comment[:128]
    return _cmd("add", "rule", family, **body)


def _verdict(action: str, l4: str | None) -> dict[str, Any]:
    if action == "reject":
        if l4 == "tcp":
            return {"reject": {"type": "tcp reset"}}
        return {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}
    return {action: None}


def _ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise RenderError(what, f"not an IP address: {value!r}") from exc


# -- the inet table ----------------------------------------------------------------------
def _rule_exprs(rule: Rule, where: str) -> list[tuple[list[dict[str, Any]], str | None]]:
    """The match expressions of ``rule`` (one list per address family it covers) + its l4."""
    protocol = (rule.protocol or "all").lower()
    if protocol not in PROTOCOLS:
        raise RenderError(f"{where}.protocol", f"unknown protocol {rule.protocol!r} (one of {', '.join(PROTOCOLS)})")
    if (rule.action or "").lower() not in ACTIONS:
        raise RenderError(f"{where}.action", f"unknown action {rule.action!r} (one of {', '.join(ACTIONS)})")
    for name, value in (("portStart", rule.port_start), ("portEnd", rule.port_end)):
        if not 0 <= value <= 65535:
            raise RenderError(f"{where}.{name}", f"port {value} outside 0-65535")
    if rule.port_start > rule.port_end:
        raise RenderError(f"{where}.portEnd", f"portEnd {rule.port_end} is below portStart {rule.port_start}")
    ported = (rule.port_start, rule.port_end) != (0, 0)
    if ported and protocol not in PORTED:
        raise RenderError(f"{where}.protocol", f"ports need tcp, udp or sctp, not {protocol}")
    l4 = PROTOCOLS[protocol]

    source = None
    if rule.source:
        try:
            source = ipaddress.ip_network(rule.source, strict=False)
        except ValueError as exc:
            raise RenderError(f"{where}.source", f"not a CIDR: {rule.source!r}") from exc
    versions = [source.version] if source is not None else [4, 6]
    if protocol == "icmp":
        versions = [v for v in versions if v == 4]
    elif protocol == "icmpv6":
        versions = [v for v in versions if v == 6]
    if not versions:
        raise RenderError(f"{where}.protocol", f"{protocol} cannot match the IPv{source.version if source else '?'} source")

    tail: list[dict[str, Any]] = []
    if l4 is not None:
        tail.append(_match(_meta("l4proto"), l4))
    if ported:
        port: Any = rule.port_start if rule.port_start == rule.port_end else {"range": [rule.port_start, rule.port_end]}
        tail.append(_match(_payload("th", "dport"), port))

    if source is None and not rule.group:
        # Any source: one rule for both families (l4proto and th work for both).
        return [(tail, l4)]
    out = []
    for version in versions:
        proto = "ip" if version == 4 else "ip6"
        head: list[dict[str, Any]] = []
        if source is not None:
            head.append(_match(_payload(proto, "saddr"), _addr(source)))
        if rule.group:
            head.append(_match(_payload(proto, "saddr"), "@" + member_set_name(rule.group, version)))
        out.append((head + tail, l4))
    return out


def _guest_chain(chain: str, rules: Iterable[tuple[int, Rule]], where: str) -> list[dict[str, Any]]:
    fam = "inet"
    out = [
        _cmd("add", "chain", fam, name=chain),
        _rule(fam, chain, _match({"ct": {"key": "state"}}, ["established", "related"], op="in"), {"accept": None}),
        _rule(fam, chain, _match({"ct": {"key": "state"}}, "invalid", op="in"), {"drop": None}),
        _rule(fam, chain, _match(_payload("icmpv6", "type"), {"set": ND_TYPES}), {"accept": None}),
    ]
    for index, rule in rules:
        for exprs, l4 in _rule_exprs(rule, f"{where}.rules[{index}]"):  # checks the action too
            action = ACTIONS[(rule.action or "").lower()]
            out.append(_rule(fam, chain, *exprs, _verdict(action, l4)))
    out.append(_rule(fam, chain, {"drop": None}))
    return out


def _inet(firewall: HostFirewall) -> list[dict[str, Any]]:
    fam = "inet"
    cmds = [_cmd("add", "table", fam), _cmd("delete", "table", fam), _cmd("add", "table", fam)]

    # Groups of the guests here (a chain each) and every group a rule of theirs names (a set each).
    used: dict[str, Group] = {}
    for g in firewall.guests:
        if g.group is not None and g.group in firewall.groups:
            used.setdefault(g.group, firewall.groups[g.group])
    named: list[str] = []
    for group in used.values():
        for rule in group.rules:
            if rule.group and rule.group not in named:
                named.append(rule.group)

    for group_id in sorted(named):
        members: dict[int, list[str]] = {4: [], 6: []}
        for i, value in enumerate(firewall.members.get(group_id, ())):
            addr = _ip(value, f"members[{group_id}][{i}]")
            text = str(addr)
            if text not in members[addr.version]:
                members[addr.version].append(text)
        for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            body: dict[str, Any] = {"name": member_set_name(group_id, version), "type": kind}
            if members[version]:
                body["elem"] = sorted(members[version], key=ipaddress.ip_address)
            cmds.append(_cmd("add", "set", fam, **body))

    cmds.extend(_guest_chain("no_group", (), "no_group"))  # guests without a (known) group: deny all
    for group_id in sorted(used):
        group = used[group_id]
        cmds.extend(_guest_chain(chain_name(group_id), enumerate(group.rules), f"groups[{group_id}]"))

    # Guest address → its group's chain.
    targets: dict[int, dict[str, tuple[str, str]]] = {4: {}, 6: {}}
    for i, guest in enumerate(firewall.guests):
        chain = chain_name(guest.group) if guest.group in used and guest.group is not None else "no_group"
        for j, value in enumerate(guest.addresses):
            addr = _ip(value, f"guests[{i}].addresses[{j}]")
            text = str(addr)
            other = targets[addr.version].get(text)
            if other is not None and other[0] != guest.id:
                raise RenderError(f"guests[{i}].addresses[{j}]", f"{text} is also guest {other[0]}'s address")
            targets[addr.version][text] = (guest.id, chain)
    for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        body = {"name": f"to_guest{version}", "type": kind, "map": "verdict"}
        elems = [[a, {"goto": {"target": c}}] for a, (_, c) in sorted(targets[version].items(), key=lambda kv: ipaddress.ip_address(kv[0]))]
        if elems:
            body["elem"] = elems
        cmds.append(_cmd("add", "map", fam, **body))

    # Hooks: forward (routed, and bridged through br_netfilter) and output (from the host itself).
    for hook in ("forward", "output"):
        cmds.append(_cmd("add", "chain", fam, name=hook, type="filter", hook=hook, prio=0, policy="accept"))
        cmds.append(_rule(fam, hook, {"vmap": {"key": _payload("ip", "daddr"), "data": "@to_guest4"}}))
        cmds.append(_rule(fam, hook, {"vmap": {"key": _payload("ip6", "daddr"), "data": "@to_guest6"}}))
    return cmds


# -- the bridge table: anti-spoofing on the guests' ports --------------------------------
def _bridge(firewall: HostFirewall) -> list[dict[str, Any]]:
    fam = "bridge"
    cmds = [_cmd("add", "table", fam), _cmd("delete", "table", fam), _cmd("add", "table", fam)]
    ports: dict[str, str] = {}
    for i, guest in enumerate(firewall.guests):
        if not guest.interface:
            continue
        if guest.interface in ports:
            raise RenderError(f"guests[{i}].interface", f"{guest.interface} is also guest {ports[guest.interface]}'s port")
        ports[guest.interface] = guest.id
        chain = _port_chain_name(guest.id)
        v4 = sorted({str(a) for a in (_ip(x, f"guests[{i}].addresses") for x in guest.addresses) if a.version == 4}, key=ipaddress.ip_address)
        v6 = sorted({str(a) for a in (_ip(x, f"guests[{i}].addresses") for x in guest.addresses) if a.version == 6}, key=ipaddress.ip_address)
        cmds.append(_cmd("add", "chain", fam, name=chain))
        if guest.mac:
            mac = guest.mac.lower()
            cmds.append(_rule(fam, chain, _match(_payload("ether", "saddr"), mac, op="!="), {"drop": None}))
        if v4:
            arp = [_match(_payload("arp", "saddr ip"), {"set": v4})]
            if guest.mac:
                arp.append(_match(_payload("arp", "saddr ether"), guest.mac.lower()))
            cmds.append(_rule(fam, chain, *arp, {"accept": None}))
            cmds.append(_rule(fam, chain, _match(_payload("ip", "saddr"), {"set": v4}), {"accept": None}))
        # DHCP before the guest has an address (Snooze configures guests statically; harmless).
        cmds.append(_rule(fam, chain, _match(_payload("ip", "saddr"), "0.0.0.0"), _match(_payload("udp", "dport"), 67), {"accept": None}))
        six: list[Any] = [*v6, {"prefix": {"addr": "fe80::", "len": 10}}, "::"]
        cmds.append(_rule(fam, chain, _match(_payload("ip6", "saddr"), {"set": six}), {"accept": None}))
        cmds.append(_rule(fam, chain, {"drop": None}, comment="any other frame: spoofed address, other ether type, VLAN tag"))
    body: dict[str, Any] = {"name": "guest_ports", "type": "ifname", "map": "verdict"}
    if ports:
        body["elem"] = [[port, {"goto": {"target": _port_chain_name(gid)}}] for port, gid in sorted(ports.items())]
    cmds.append(_cmd("add", "map", fam, **body))
    cmds.append(_cmd("add", "chain", fam, name="from_guests", type="filter", hook="prerouting", prio=-200, policy="accept"))
    cmds.append(_rule(fam, "from_guests", {"vmap": {"key": _meta("iifname"), "data": "@guest_ports"}}))
    return cmds


def render(firewall: HostFirewall) -> dict[str, Any]:
    """The ``nft -j`` batch replacing ``table inet snooze`` and ``table bridge snooze``."""
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *_inet(firewall), *_bridge(firewall)]}


def removal() -> dict[str, Any]:
    """The batch removing Snooze's tables (if there), touching nothing else."""
    cmds: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    for fam in FAMILIES:
        cmds += [_cmd("add", "table", fam), _cmd("delete", "table", fam)]
    return {"nftables": cmds}
