"""Nuage VRS's tables kept by a host (the SDK's CreatePort / AddEntity / PostEntityEvent /
RemoveEntity, on the host's OVSDB through ovsdbapp): one ``Nuage_Port_Table`` row per plugged
port, one ``Nuage_VM_Table`` row per VM, ports before the entity, as the SDK requires.

Unlike the original SDK: every write is idempotent (a row that exists is updated, a row that is
gone is not an error to delete), the bridge is the VIF's (configuration, never a constant), an
event is a checked (category, detail) pair (``localcontroller.vrs.events``), and ``audit``
makes the tables equal to what the host runs (after ``ovsdb-server`` restarted, or a domain went
behind Snooze's back). Blocking: the local controller calls it from a thread.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from localcontroller.vif.ovsdb import Ovsdb
from localcontroller.vrs.events import EntityType, Event, after
from snooze.vif.objects import InstanceInfo, VIFBase
from snooze.vif.vrs_schema import PORT_TABLE, VM_TABLE

__all__ = ["Entity", "VrsBackend", "port_row"]

#: ``vm_domain``/``domain``: the platform (the SDK's KVM).
PLATFORM_KVM = 0


@dataclass(frozen=True)
class Entity:
    """A VM this host runs with its plugged port, as the tables should show it."""

    instance: InstanceInfo
    vif: VIFBase
    event: Event


def port_row(vif: VIFBase) -> dict[str, Any]:
    """The port's row; its address, mask and gateway resolved from Snooze's allocation (the VIF's
    subnet and address)."""
    name = str(getattr(vif, "vif_name", ""))
    row: dict[str, Any] = {"name": name, "mac": vif.address or "", "bridge": str(getattr(vif, "bridge_name", "")),
                           "vm_domain": PLATFORM_KVM, "ip_addr": "", "subnet_mask": "", "gateway": "",
                           "nuage_network": vif.network.id if vif.network else "",
                           "metadata": {"vif-id": vif.id, "plugin": vif.plugin}}
    subnets = vif.network.subnets if vif.network else []
    if subnets:
        subnet = subnets[0]
        net = ipaddress.ip_network(subnet.cidr)
        row["subnet_mask"] = str(net.netmask) if net.version == 4 else str(net.prefixlen)
        row["ip_addr"] = subnet.ips[0] if subnet.ips else ""
        row["gateway"] = subnet.gateway or ""
    return row


def entity_row(entity: Entity) -> dict[str, Any]:
    state, reason = after(entity.event)
    return {"vm_uuid": entity.instance.uuid, "vm_name": entity.instance.name, "type": int(EntityType.VM),
            "event": int(entity.event.category), "event_type": int(entity.event.detail), "state": int(state),
            "reason": int(reason), "domain": PLATFORM_KVM, "ports": [port_row(entity.vif)["name"]],
            "metadata": {"vif-id": entity.vif.id}, "dirty": 0}


def _same(row: dict[str, Any], want: dict[str, Any]) -> bool:
    return all((set(row.get(k) or []) == set(v)) if isinstance(v, list) else row.get(k) == v for k, v in want.items())


class VrsBackend:
    def __init__(self, db: Ovsdb) -> None:
        self.db = db

    def _upsert(self, table: str, key: str, want: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> bool:
        """The row of ``table`` whose ``key`` column is ``want[key]`` made equal to ``want``;
        True if anything was written."""
        found = [r for r in (rows if rows is not None else self.db.rows(table)) if r.get(key) == want[key]]
        if found and _same(found[0], want) and len(found) == 1:
            return False

        def build(api: Any, txn: Any) -> None:
            for extra in found[1:]:
                txn.add(api.db_destroy(table, extra["_uuid"]))
            if found:
                txn.add(api.db_set(table, found[0]["_uuid"], *want.items()))
            else:
                txn.add(api.db_create(table, **want))

        self.db.transact(f"write {table} {want[key]}", build)
        return True

    def started(self, entity: Entity) -> None:
        """The port, then the entity with its event (Started/Booted, Started/Migrated …)."""
        self._upsert(PORT_TABLE, "name", port_row(entity.vif))
        self._upsert(VM_TABLE, "vm_uuid", entity_row(entity))

    def post_event(self, entity: Entity) -> None:
        """The entity's event and state; the rows are made if they are missing."""
        self.started(entity)

    def removed(self, vm_uuid: str, ports: list[str]) -> None:
        """The entity and its ports gone (a row already gone is no error)."""
        vms = [r for r in self.db.rows(VM_TABLE) if r.get("vm_uuid") == vm_uuid]
        names = set(ports) | {p for r in vms for p in (r.get("ports") or [])}
        doomed = [(VM_TABLE, r["_uuid"]) for r in vms] + [
            (PORT_TABLE, r["_uuid"]) for r in self.db.rows(PORT_TABLE) if r.get("name") in names]
        if not doomed:
            return

        def build(api: Any, txn: Any) -> None:
            for table, row_uuid in doomed:
                txn.add(api.db_destroy(table, row_uuid))

        self.db.transact(f"remove {vm_uuid}", build)

    def audit(self, running: list[Entity]) -> tuple[list[str], list[str]]:
        """The tables made equal to ``running``: (VM UUIDs whose rows were added or repaired,
        those removed)."""
        vm_rows, port_rows = self.db.rows(VM_TABLE), self.db.rows(PORT_TABLE)
        want = {e.instance.uuid: e for e in running}
        added = []
        for entity in running:
            wrote = self._upsert(PORT_TABLE, "name", port_row(entity.vif), port_rows)
            have = [r for r in vm_rows if r.get("vm_uuid") == entity.instance.uuid]
            # A row that exists keeps its last event; one that is missing is made with ``entity.event``.
            target = entity_row(entity)
            if have:
                for k in ("event", "event_type", "state", "reason"):
                    target[k] = have[0].get(k, target[k])
            if self._upsert(VM_TABLE, "vm_uuid", target, vm_rows) or wrote:
                added.append(entity.instance.uuid)
        removed = sorted({str(r.get("vm_uuid")) for r in vm_rows if r.get("vm_uuid") not in want})
        for vm_uuid in removed:
            self.removed(vm_uuid, [])
        # Ports no running VM has (their entity gone, or never made).
        kept = {port_row(e.vif)["name"] for e in running}
        stale = [r["_uuid"] for r in self.db.rows(PORT_TABLE) if r.get("name") not in kept]
        if stale:
            def build(api: Any, txn: Any) -> None:
                for row_uuid in stale:
                    txn.add(api.db_destroy(PORT_TABLE, row_uuid))

            self.db.transact("remove stale ports", build)
        return added, removed
