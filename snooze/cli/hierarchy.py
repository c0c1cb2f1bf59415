"""The ``snooze`` verbs on the hierarchy: ``hierarchy`` (the tree of group leader, group managers and
local controllers) and ``hosts`` (the local controllers, one per line)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from snooze.cli.errors import reports_errors
from snooze.cli.output import memory, table
from snooze.cli.target import add_target_options, client

__all__ = ["format_hierarchy", "register"]


def format_hierarchy(h: dict[str, Any]) -> str:
    """The answer of ``?getCompleteHierarchy`` as a tree (the one ``./scripts/run`` prints)."""
    gl = h.get("groupLeaderDescription") or {}
    addr = gl.get("listenSettings", {}).get("controlDataAddress", {})
    lines = [f"group leader {gl.get('id')}  {addr.get('address')}:{addr.get('port')}  epoch {gl.get('epoch')}"]
    gms = h.get("groupManagerDescriptions", [])
    for i, gm in enumerate(gms):
        last_gm = i == len(gms) - 1
        a = gm.get("listenSettings", {}).get("controlDataAddress", {})
        lcs = gm.get("localControllers", [])
        lines.append(f"{'└─' if last_gm else '├─'} group manager {gm.get('id')}  {a.get('address')}:{a.get('port')}  {len(lcs)} local controllers")
        for j, lc in enumerate(lcs):
            c = lc.get("controlDataAddress", {})
            cap = lc.get("totalCapacity", [0, 0, 0, 0])
            vms = lc.get("assignedVirtualMachines", [])
            lines.append(
                f"{'   ' if last_gm else '│  '}{'└─' if j == len(lcs) - 1 else '├─'} {lc.get('id')}  {c.get('address')}:{c.get('port')}"
                f"  {lc.get('status')}  {cap[0]:g} vcpus  {memory(cap[1])}  {len(vms)} VMs"
            )
    return "\n".join(lines)


def cmd_hierarchy(args: argparse.Namespace) -> int:
    with client(args) as api:
        h = api.get_complete_hierarchy()
    print(json.dumps(h, indent=2) if args.json else format_hierarchy(h))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    with client(args) as api:
        lcs = api.get_local_controller_list()
    if args.json:
        print(json.dumps({"localControllers": lcs}, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "ADDRESS", "STATUS", "VCPUS", "MEMORY", "VMS", "GROUP MANAGER")]
    for lc in lcs:
        a = lc["controlDataAddress"]
        rows.append((lc["id"], f"{a['address']}:{a['port']}", lc["status"], f"{lc['totalCapacity'][0]:g}",
                     memory(lc["totalCapacity"][1]), str(len(lc.get("assignedVirtualMachines", []))),
                     str(lc.get("groupManagerId"))))
    print(table(rows))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hierarchy`` and ``hosts`` to the ``snooze`` command's subparsers."""
    h = subparsers.add_parser("hierarchy", help="show the group leader, group managers and local controllers")
    add_target_options(h, top_level=False)
    h.add_argument("--json", action="store_true", help="print the answer as JSON")
    h.set_defaults(func=reports_errors(cmd_hierarchy))
    hosts = subparsers.add_parser("hosts", help="list local controllers")
    add_target_options(hosts, top_level=False)
    hosts.add_argument("--json", action="store_true", help="print the answer as JSON")
    hosts.set_defaults(func=reports_errors(cmd_hosts))
