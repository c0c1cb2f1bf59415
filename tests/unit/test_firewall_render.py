"""The firewall renderer (pure): firewall groups → the nft JSON batch; and the boundary's scope
check (no nft is run here: tests/integration/test_firewall.py runs the batches for real)."""

from __future__ import annotations

from typing import Any

import pytest

from localcontroller.firewall import nft
from localcontroller.firewall.render import (
    Group,
    Guest,
    HostFirewall,
    RenderError,
    Rule,
    chain_name,
    ident,
    member_set_name,
    removal,
    render,
)

WEB = Group("web", (
    Rule(group="clients", port_start=8080, port_end=8080, protocol="tcp", action="accept"),
    Rule(source="192.168.0.0/16", port_start=5000, port_end=5010, protocol="udp", action="allow"),
    Rule(source="2001:db8::/32", protocol="all", action="drop"),
    Rule(protocol="icmp"),
))


def fw(*guests: Guest, groups: dict[str, Group] | None = None, members: dict[str, tuple[str, ...]] | None = None) -> HostFirewall:
    return HostFirewall(guests=guests, groups={"web": WEB} if groups is None else groups,
                        members={"clients": ("10.0.0.3", "fd00::3", "10.0.0.4")} if members is None else members)


def commands(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in batch["nftables"] if "metainfo" not in c]


def objects(batch: dict[str, Any], verb: str, kind: str, family: str = "inet") -> list[dict[str, Any]]:
    return [c[verb][kind] for c in commands(batch) if verb in c and kind in c[verb] and c[verb][kind]["family"] == family]


def rules_of(batch: dict[str, Any], chain: str, family: str = "inet") -> list[list[dict[str, Any]]]:
    return [r["expr"] for r in objects(batch, "add", "rule", family) if r["chain"] == chain]


def test_replaces_only_its_own_tables_atomically() -> None:
    batch = render(fw(Guest("g1", ("10.0.0.2",), "web")))
    cmds = commands(batch)
    table = {"family": "inet", "name": "snooze"}
    assert cmds[:3] == [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    bridge = {"family": "bridge", "name": "snooze"}
    i = cmds.index({"delete": {"table": bridge}})
    assert cmds[i - 1] == {"add": {"table": bridge}} and cmds[i + 1] == {"add": {"table": bridge}}
    # Every command names a snooze table; nothing is flushed.
    assert nft.check_scope(batch) == cmds
    assert all("flush" not in c for c in cmds)
    assert render(fw(Guest("g1", ("10.0.0.2",), "web"))) == batch, "deterministic"


def test_group_rules_become_chain_rules_in_order_then_default_drop() -> None:
    batch = render(fw(Guest("g1", ("10.0.0.2", "fd00::2"), "web")))
    chain = chain_name("web")
    rules = rules_of(batch, chain)
    # Replies to the guest's own connections, invalid dropped, neighbour discovery.
    assert rules[0][0]["match"]["right"] == ["established", "related"]
    assert rules[1] == [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": None}]
    assert rules[2][0]["match"]["left"] == {"payload": {"protocol": "icmpv6", "field": "type"}}
    # The group rule: one rule per family, matching the group's member sets.
    assert rules[3] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@" + member_set_name("clients", 4)}},
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 8080}},
        {"accept": None},
    ]
    assert rules[4][0]["match"] == {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@" + member_set_name("clients", 6)}
    # A CIDR rule: its own family only, a port range, "allow" is accept.
    assert rules[5] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "192.168.0.0", "len": 16}}}},
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"range": [5000, 5010]}}},
        {"accept": None},
    ]
    assert rules[6] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}}, {"drop": None}]
    assert rules[7] == [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "icmp"}}, {"accept": None}]
    assert rules[8] == [{"drop": None}]
    assert len(rules) == 9


def test_member_sets_and_guest_maps() -> None:
    batch = render(fw(Guest("g1", ("10.0.0.2", "fd00::2"), "web"), Guest("g2", ("10.0.0.9",), None), Guest("g3", ("10.0.0.10",), "gone")))
    sets = {s["name"]: s for s in objects(batch, "add", "set")}
    assert sets[member_set_name("clients", 4)]["elem"] == ["10.0.0.3", "10.0.0.4"]
    assert sets[member_set_name("clients", 6)]["elem"] == ["fd00::3"]
    maps = {m["name"]: m for m in objects(batch, "add", "map")}
    assert maps["to_guest4"]["elem"] == [
        ["10.0.0.2", {"goto": {"target": chain_name("web")}}],
        ["10.0.0.9", {"goto": {"target": "no_group"}}],  # no group: deny all incoming
        ["10.0.0.10", {"goto": {"target": "no_group"}}],  # unknown group: the same
    ]
    assert maps["to_guest6"]["elem"] == [["fd00::2", {"goto": {"target": chain_name("web")}}]]
    assert rules_of(batch, "no_group")[-1] == [{"drop": None}]
    # Both hooks send guest-bound packets through the maps.
    chains = {c["name"]: c for c in objects(batch, "add", "chain")}
    assert chains["forward"]["hook"] == "forward" and chains["output"]["hook"] == "output"
    assert rules_of(batch, "forward") == rules_of(batch, "output") == [
        [{"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@to_guest4"}}],
        [{"vmap": {"key": {"payload": {"protocol": "ip6", "field": "daddr"}}, "data": "@to_guest6"}}],
    ]


def test_loch_ness_defaults() -> None:
    # Loch Ness's JSON: "group": "" when absent, a free-form action its daemon ignored (accept).
    batch = render(fw(Guest("g1", ("10.0.0.2",), "web"), groups={"web": Group("web", (Rule(group="", source="10.1.0.0/16", protocol="", action=""),))}))
    assert rules_of(batch, chain_name("web"))[3] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.1.0.0", "len": 16}}}},
        {"accept": None},
    ]


def test_a_named_group_without_members_has_empty_sets() -> None:
    batch = render(fw(Guest("g1", ("10.0.0.2",), "web"), members={}))
    sets = {s["name"]: s for s in objects(batch, "add", "set")}
    assert "elem" not in sets[member_set_name("clients", 4)] and "elem" not in sets[member_set_name("clients", 6)]


def test_no_guests_still_renders_empty_tables() -> None:
    batch = render(HostFirewall())
    maps = {m["name"]: m for m in objects(batch, "add", "map")}
    assert "elem" not in maps["to_guest4"] and "elem" not in maps["to_guest6"]
    assert nft.check_scope(batch)


def test_names_are_injective() -> None:
    ids = ["a-b", "a_b", "a_2db", "a.b", "a b", "A-b", "é", "_c3_a9", "x" * 10, "550e8400-e29b-41d4-a716-446655440000"]
    names = [ident(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(n.replace("_", "").isalnum() and n.isascii() for n in names)
    groups = {i: Group(i, (Rule(group=i, port_start=1, port_end=1),)) for i in ids}
    guests = [Guest(f"g{n}", (f"10.0.1.{n}",), i) for n, i in enumerate(ids, start=1)]
    batch = render(HostFirewall(guests=tuple(guests), groups=groups, members={}))
    set_names = [s["name"] for s in objects(batch, "add", "set")]
    chain_names = [c["name"] for c in objects(batch, "add", "chain")]
    assert len(set_names) == len(set(set_names)) == 2 * len(ids)
    assert len(chain_names) == len(set(chain_names)) == len(ids) + 3  # + no_group, forward, output
    with pytest.raises(RenderError) as info:
        chain_name("x" * 300)
    assert info.value.field == "group.id"


def test_bridge_ports_check_mac_and_addresses() -> None:
    batch = render(fw(Guest("g1", ("10.0.0.2", "fd00::2"), "web", interface="vnet0", mac="52:54:00:AA:00:02"), Guest("g2", ("10.0.0.3",), "web")))
    maps = {m["name"]: m for m in objects(batch, "add", "map", "bridge")}
    assert maps["guest_ports"]["elem"] == [["vnet0", {"goto": {"target": "port_g1"}}]]  # g2: port unknown
    rules = rules_of(batch, "port_g1", "bridge")
    assert rules[0] == [{"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": "52:54:00:aa:00:02"}}, {"drop": None}]
    assert rules[1][:2] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}}, "right": {"set": ["10.0.0.2"]}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ether"}}, "right": "52:54:00:aa:00:02"}},
    ]
    assert rules[2] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": ["10.0.0.2"]}}}, {"accept": None}]
    assert "fd00::2" in rules[4][0]["match"]["right"]["set"]
    assert rules[-1][0] == {"drop": None}
    chains = {c["name"]: c for c in objects(batch, "add", "chain", "bridge")}
    assert chains["from_guests"]["hook"] == "prerouting"


@pytest.mark.parametrize(("rule", "field"), [
    (Rule(port_start=70000, port_end=70000), "rules[0].portStart"),
    (Rule(port_start=10, port_end=5), "rules[0].portEnd"),
    (Rule(protocol="gre"), "rules[0].protocol"),
    (Rule(protocol="icmp", port_start=1, port_end=1), "rules[0].protocol"),
    (Rule(protocol="icmp", source="2001:db8::/32"), "rules[0].protocol"),
    (Rule(source="10.0.0.0/33"), "rules[0].source"),
    (Rule(action="maybe"), "rules[0].action"),
])
def test_bad_rules_are_refused_naming_the_field(rule: Rule, field: str) -> None:
    with pytest.raises(RenderError) as info:
        render(fw(Guest("g1", ("10.0.0.2",), "web"), groups={"web": Group("web", (rule,))}))
    assert info.value.field == f"groups[web].{field}"


def test_bad_guests_are_refused_naming_the_field() -> None:
    with pytest.raises(RenderError) as info:
        render(fw(Guest("g1", ("10.0.0.2",), "web"), Guest("g2", ("10.0.0.2",), "web")))
    assert info.value.field == "guests[1].addresses[0]" and "g1" in info.value.message
    with pytest.raises(RenderError) as info:
        render(fw(Guest("g1", ("10.0.0.300",), "web")))
    assert info.value.field == "guests[0].addresses[0]"
    with pytest.raises(RenderError) as info:
        render(fw(Guest("g1", ("10.0.0.2",), "web", interface="t"), Guest("g2", ("10.0.0.3",), "web", interface="t")))
    assert info.value.field == "guests[1].interface"


@pytest.mark.parametrize("batch", [
    {"nftables": [{"flush": {"ruleset": None}}]},
    {"nftables": [{"delete": {"table": {"family": "inet", "name": "filter"}}}]},
    {"nftables": [{"add": {"chain": {"family": "ip", "table": "snooze", "name": "x"}}}]},
    {"nftables": [{"list": {"ruleset": None}}]},
    {"nftables": [{"add": {"rule": {"family": "inet", "table": "snooze2", "chain": "x", "expr": []}}}]},
    {"rules": []},
])
def test_the_boundary_refuses_anything_outside_its_tables(batch: dict[str, Any]) -> None:
    with pytest.raises(nft.NftError):
        nft.run_batch(batch, netns="never-used")  # refused before any nft runs


def test_removal_names_only_its_tables() -> None:
    cmds = nft.check_scope(removal())
    assert [next(iter(c)) for c in cmds] == ["add", "delete", "add", "delete"]
