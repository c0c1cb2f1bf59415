"""The network model's placement filters (issue 12): a VM whose subnet only some hosts serve
lands on those, a full subnet takes nothing, and each rejection names its filter."""

from __future__ import annotations

from dataclasses import replace

import pytest
from placement_builders import FULL, host, vm

from groupmanager.placement import HostView, VMRequest, known_policies, make_placement_policy
from groupmanager.placement.filters import FreeAddress, ServesSubnet, default_filters, explain
from groupmanager.placement.state import Slot, Unit, make_slots, make_units


def one(req: VMRequest, h: HostView) -> tuple[Unit, Slot]:
    units, refused = make_units([req])
    assert not refused
    return units[0], make_slots([h], FULL)[0]


def test_serves_subnet() -> None:
    served = replace(host("h"), subnets=frozenset({"blue1"}))
    other = replace(host("h"), subnets=frozenset())
    unknown = host("h")  # subnets None: nothing restricts it
    for h, ok in ((served, True), (other, False), (unknown, True)):
        u, s = one(vm("a", network="blue1"), h)
        assert ServesSubnet()(u, s) is ok, h
    u, s = one(vm("a"), other)  # a VM with no restricted subnet goes anywhere
    assert ServesSubnet()(u, s)


def test_free_address() -> None:
    full = replace(host("h"), full_subnets=frozenset({"blue1"}))
    u, s = one(vm("a", network="blue1"), full)
    assert not FreeAddress()(u, s)
    u, s = one(vm("a", network="red1"), full)
    assert FreeAddress()(u, s)
    u, s = one(vm("a", network="blue1"), host("h"))
    assert FreeAddress()(u, s)


def test_explain_charges_subnet_and_addresses() -> None:
    hosts = [replace(host("a"), subnets=frozenset()), replace(host("b"), subnets=frozenset()),
             replace(host("c"), subnets=frozenset({"blue1"}), full_subnets=frozenset({"blue1"})),
             host("d", alive=False)]
    units, _ = make_units([vm("x", network="blue1")])
    rej = explain(default_filters(), units[0], make_slots(hosts, FULL))
    assert rej.filtered == {"subnet": 2, "addresses": 1, "alive": 1}, rej


@pytest.mark.parametrize("name", known_policies())
def test_every_policy_places_only_on_hosts_serving_the_subnet(name: str) -> None:
    hosts = [replace(host(h), subnets=frozenset({"blue1"}) if h in ("h2", "h4") else frozenset())
             for h in ("h1", "h2", "h3", "h4")]
    requests = [vm(f"v{i}", network="blue1") for i in range(4)] + [vm("plain"), vm("big", cpu=9, network="blue1")]
    plan = make_placement_policy(name, thresholds=FULL).place(requests, hosts)
    where = {p.vm_id: p.host_id for p in plan.placements}
    assert all(where[f"v{i}"] in ("h2", "h4") for i in range(4)), where
    assert "plain" in where
    big = plan.unplaced["big"]
    assert big.filtered.get("subnet") == 2, big  # h1 and h3; h2 and h4 for capacity
