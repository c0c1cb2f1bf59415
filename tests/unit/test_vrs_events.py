"""Nuage VRS's events (localcontroller.vrs.events): one enum per category, so that only pairs
libvirt can send exist; the entity's state after each; and the port row's resolved address."""

from __future__ import annotations

import uuid

import pytest

from localcontroller.vrs.backend import Entity, entity_row, port_row
from localcontroller.vrs.events import Event as VrsEvent
from localcontroller.vrs.events import (
    EventCategory,
    InvalidEvent,
    ResumedDetail,
    StartedDetail,
    State,
    StoppedDetail,
    after,
)
from snooze.vif import objects as o


def test_libvirts_numbers_read_as_events() -> None:
    assert str(VrsEvent.of(2, 0)) == "Started/Booted"
    assert str(VrsEvent.of(2, 1)) == "Started/Migrated"
    assert str(VrsEvent.of(5, 3)) == "Stopped/Migrated"
    assert str(VrsEvent.of(5, 1)) == "Stopped/Destroyed"


@pytest.mark.parametrize(("category", "detail", "why"), [
    (2, 9, "STARTED has no detail 9"),
    (9, 0, "no event category 9"),
    (6, 5, "SHUTDOWN has no detail 5"),
])
def test_a_pair_that_does_not_exist_is_refused(category: int, detail: int, why: str) -> None:
    with pytest.raises(InvalidEvent, match=why):
        VrsEvent.of(category, detail)


def test_an_impossible_pair_cannot_even_be_made() -> None:
    # Stopped's "destroyed" (1) is Started's "migrated" (1) by number: the enums keep them apart.
    with pytest.raises(InvalidEvent, match="STARTED/DESTROYED is not an event"):
        VrsEvent(EventCategory.STARTED, StoppedDetail.DESTROYED)


@pytest.mark.parametrize(("event", "state", "reason"), [
    (VrsEvent(EventCategory.STARTED, StartedDetail.BOOTED), State.RUNNING, 1),
    (VrsEvent(EventCategory.STARTED, StartedDetail.MIGRATED), State.RUNNING, 2),
    (VrsEvent(EventCategory.RESUMED, ResumedDetail.UNPAUSED), State.RUNNING, 5),
    (VrsEvent(EventCategory.STOPPED, StoppedDetail.MIGRATED), State.SHUTOFF, 4),
    (VrsEvent(EventCategory.STOPPED, StoppedDetail.DESTROYED), State.SHUTOFF, 2),
])
def test_state_after_an_event(event: VrsEvent, state: State, reason: int) -> None:
    assert after(event) == (state, reason)


def test_rows_name_the_vif_and_its_resolved_address() -> None:
    vif = o.VIFOpenVSwitch(id=str(uuid.UUID(int=1)), address="52:54:00:00:00:09", plugin="ovs", vif_name="tap1",
                           bridge_name="br-tenant", network=o.Network(id="net", subnets=[
                               o.Subnet(cidr="10.9.0.0/16", gateway="10.9.0.1", ips=["10.9.3.4"])]))
    row = port_row(vif)
    assert (row["name"], row["mac"], row["bridge"], row["ip_addr"], row["subnet_mask"], row["gateway"]) == (
        "tap1", "52:54:00:00:00:09", "br-tenant", "10.9.3.4", "255.255.0.0", "10.9.0.1")
    entity = entity_row(Entity(o.InstanceInfo(uuid=str(uuid.UUID(int=2)), name="vm"), vif,
                               VrsEvent(EventCategory.STARTED, StartedDetail.MIGRATED)))
    assert (entity["event"], entity["event_type"], entity["state"], entity["reason"], entity["ports"]) == (2, 1, 1, 2, ["tap1"])
