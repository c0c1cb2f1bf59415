"""The Nuage tables a host's Open vSwitch database needs for the VRS backend
(``localcontroller.vrs``):
``Nuage_VM_Table`` (one row per entity: a VM) and ``Nuage_Port_Table`` (one row per port), with
Nuage's column names. ``extend(schema)`` adds them to the packaged ``vswitch.ovsschema``; a
deployment converts its database once (``ovsdb-client convert``, docs/networking.md), the local
cluster creates each host's database with them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

__all__ = ["PORT_TABLE", "VM_TABLE", "extend", "write_extended"]

VM_TABLE = "Nuage_VM_Table"
PORT_TABLE = "Nuage_Port_Table"

_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}
_MAP = {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
_SET = {"type": {"key": "string", "min": 0, "max": "unlimited"}}

TABLES: dict[str, Any] = {
    VM_TABLE: {
        "columns": {
            "vm_uuid": _STRING, "vm_name": _STRING, "type": _INTEGER, "event": _INTEGER, "event_type": _INTEGER,
            "state": _INTEGER, "reason": _INTEGER, "domain": _INTEGER, "nuage_user": _STRING,
            "nuage_enterprise": _STRING, "metadata": _MAP, "ports": _SET, "dirty": _INTEGER,
        },
        "indexes": [["vm_uuid"]],
        "isRoot": True,
    },
    PORT_TABLE: {
        "columns": {
            "name": _STRING, "mac": _STRING, "bridge": _STRING, "ip_addr": _STRING, "subnet_mask": _STRING,
            "gateway": _STRING, "vm_domain": _INTEGER, "nuage_domain": _STRING, "nuage_network": _STRING,
            "nuage_network_type": _STRING, "nuage_zone": _STRING, "evpn_id": _INTEGER, "vrf_id": _INTEGER,
            "metadata": _MAP,
        },
        "indexes": [["name"]],
        "isRoot": True,
    },
}


def extend(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (the Open_vSwitch database's) with the Nuage tables (kept if it has them)."""
    out = copy.deepcopy(schema)
    out.pop("cksum", None)  # it no longer matches
    for name, table in TABLES.items():
        out["tables"].setdefault(name, copy.deepcopy(table))
    return out


def write_extended(source: Path, dest: Path) -> Path:
    dest.write_text(json.dumps(extend(json.loads(source.read_text())), indent=1))
    return dest
