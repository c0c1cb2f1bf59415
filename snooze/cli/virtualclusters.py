"""The original snoozeclient's verbs: named virtual-cluster definitions kept in a local file,
started, followed and stopped as a whole, and the hierarchy dumped as GraphML.

- ``define NAME`` / ``undefine NAME``: create or delete a definition;
- ``add NAME [--count N --vcpus … | --template FILE]`` / ``remove NAME VM``: its VM templates;
- ``list``: the definitions; ``start NAME``: submit one as a virtual cluster and follow it to a table;
- ``info NAME|VM``: each VM of a cluster (or one VM) as the cluster sees it now;
- ``suspend`` … ``destroy NAME|VM`` (in ``snooze.cli.vms``): a whole cluster, or one VM;
- ``dump [--output FILE]``: the hierarchy as GraphML, as the original's ``dump``.

The definitions live in one JSON file: ``--definitions FILE``, else ``$SNOOZE_CLUSTERS_FILE``,
else ``$XDG_CONFIG_HOME/snooze/virtual-clusters.json`` (``~/.config/…``). It is rewritten
atomically, readable by its owner only. A started cluster remembers its task id and the VMs it
started, which is how ``suspend NAME`` knows what to suspend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from snooze.cli.errors import CliError, reports_errors
from snooze.cli.output import HelpFormatter, table
from snooze.cli.target import add_target_options, client
from snooze.client import SnoozeClientError
from snooze.codes import ErrorCode
from snooze.ids import InvalidId, check_id

__all__ = ["Definitions", "definitions_path", "hierarchy_graphml", "register"]

GRAPHML_NS = "http://graphml.graphdrawing.org/xmlns"


def definitions_path(args: argparse.Namespace) -> Path:
    given = getattr(args, "definitions", None) or os.environ.get("SNOOZE_CLUSTERS_FILE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snooze" / "virtual-clusters.json"


def _name(value: str, what: str = "cluster name") -> str:
    try:
        return check_id(value, what)
    except InvalidId as exc:
        raise CliError(str(exc), ErrorCode.INVALID_ID) from exc


class Definitions:
    """The local file of named virtual clusters: ``{"virtualClusters": {NAME: {"templates",
    "taskId", "vms"}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clusters: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
                clusters = data["virtualClusters"]
                if not isinstance(clusters, dict):
                    raise TypeError("virtualClusters is not an object")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CliError(f"cannot read the virtual-cluster definitions in {path}: {exc}",
                               ErrorCode.BAD_REQUEST) from exc
            self.clusters = clusters

    def get(self, name: str) -> dict[str, Any]:
        if name not in self.clusters:
            raise CliError(f"no virtual cluster {name!r} is defined in {self.path} (snooze define {name})",
                           ErrorCode.NOT_FOUND)
        return self.clusters[name]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"virtualClusters": self.clusters}, f, indent=2)
        tmp.replace(self.path)

    def members(self, name: str) -> list[str]:
        """The VMs of a cluster: those it started, else the names of its templates."""
        vc = self.get(name)
        return list(vc.get("vms") or [str(t.get("name")) for t in vc.get("templates", [])])


def cluster_or_vm(args: argparse.Namespace, target: str) -> tuple[str | None, list[str]]:
    """(cluster name, its VMs) when ``target`` names a defined cluster, else (None, [target])."""
    if getattr(args, "vm", False):
        return None, [target]
    defs = Definitions(definitions_path(args))
    if target in defs.clusters:
        return target, defs.members(target)
    return None, [target]


# -- handlers ---------------------------------------------------------------------------------


def cmd_define(args: argparse.Namespace) -> int:
    defs = Definitions(definitions_path(args))
    name = _name(args.name)
    if name in defs.clusters:
        raise CliError(f"virtual cluster {name!r} is already defined", ErrorCode.BAD_REQUEST)
    defs.clusters[name] = {"templates": [], "taskId": None, "vms": []}
    defs.save()
    print(f"defined virtual cluster {name}")
    return 0


def cmd_undefine(args: argparse.Namespace) -> int:
    defs = Definitions(definitions_path(args))
    defs.get(args.name)
    del defs.clusters[args.name]
    defs.save()
    print(f"undefined virtual cluster {args.name}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from snooze.cli.vms import templates_from_args

    defs = Definitions(definitions_path(args))
    vc = defs.get(args.cluster)
    if not args.name and not args.template:
        args.name = f"{args.cluster}-{len(vc['templates']) + 1}" if args.count == 1 else args.cluster
    new = templates_from_args(args)
    if args.count > 1 and not args.template and args.name == args.cluster:
        # PREFIX-1, -2 … continue after the templates already there.
        first = len(vc["templates"]) + 1
        for i, t in enumerate(new):
            t["name"] = f"{args.cluster}-{first + i}"
    have = {str(t.get("name")) for t in vc["templates"]}
    clash = [str(t.get("name")) for t in new if t.get("name") in have]
    if clash:
        raise CliError(f"virtual cluster {args.cluster} already has {', '.join(clash)}", ErrorCode.BAD_TEMPLATE)
    vc["templates"].extend(new)
    defs.save()
    print(f"added {', '.join(str(t.get('name') or '(from XML)') for t in new)} to {args.cluster}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    defs = Definitions(definitions_path(args))
    vc = defs.get(args.cluster)
    kept = [t for t in vc["templates"] if t.get("name") != args.vm]
    if len(kept) == len(vc["templates"]):
        raise CliError(f"virtual cluster {args.cluster} has no VM {args.vm!r}", ErrorCode.NOT_FOUND)
    vc["templates"] = kept
    defs.save()
    print(f"removed {args.vm} from {args.cluster}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    defs = Definitions(definitions_path(args))
    if args.json:
        print(json.dumps({"virtualClusters": defs.clusters}, indent=2))
        return 0
    if not defs.clusters:
        print(f"no virtual clusters defined (in {defs.path})")
        return 0
    rows: list[tuple[str, ...]] = [("NAME", "VMS", "TASK", "STARTED VMS")]
    for name, vc in sorted(defs.clusters.items()):
        rows.append((name, str(len(vc.get("templates", []))), str(vc.get("taskId") or "-"),
                     ", ".join(vc.get("vms") or []) or "-"))
    print(table(rows))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from snooze.cli.vms import ProgressPrinter, report_response

    defs = Definitions(definitions_path(args))
    vc = defs.get(args.name)
    if not vc["templates"]:
        raise CliError(f"virtual cluster {args.name} has no VM (snooze add {args.name} …)", ErrorCode.BAD_TEMPLATE)
    with client(args) as api:
        task_id = api.start_virtual_cluster(vc["templates"])
        vc["taskId"], vc["vms"] = task_id, []
        defs.save()  # the task is recorded even if following it is interrupted
        print(f"started virtual cluster {args.name}: task {task_id}", file=sys.stderr, flush=True)
        response = api.wait_for_virtual_cluster(task_id, timeout=args.timeout,
                                                progress=ProgressPrinter(sys.stderr, len(vc["templates"])))
    vc["vms"] = [str(vm.get("virtualMachineId")) for vm in response.get("virtualMachineMetaData") or []]
    defs.save()
    return report_response(response, task_id, as_json=args.json)


def cmd_info(args: argparse.Namespace) -> int:
    from snooze.cli.vms import vm_details, vm_table

    name, members = cluster_or_vm(args, args.target)
    found: list[Any] = []
    with client(args) as api:
        for vm_id in members:
            try:
                found.append(api.get_virtual_machine_meta_data(vm_id))
            except SnoozeClientError as exc:
                if exc.status != 404 or name is None:
                    raise
                found.append({"virtualMachineId": vm_id, "status": "NOT RUNNING"})
    if args.json:
        print(json.dumps(found if name else found[0], indent=2))
    elif name is None:
        print(vm_details(found[0]))
    else:
        print(f"virtual cluster {name}")
        print(vm_table(found))
    return 0


def hierarchy_graphml(h: dict[str, Any]) -> str:
    """The hierarchy (``?getCompleteHierarchy``) as GraphML: one node per group leader, group
    manager, local controller and VM, edges from each to what it manages."""
    ET.register_namespace("", GRAPHML_NS)
    root = ET.Element(f"{{{GRAPHML_NS}}}graphml")
    for key in ("type", "address", "status"):
        ET.SubElement(root, f"{{{GRAPHML_NS}}}key", id=key, attrib={"for": "node", "attr.name": key, "attr.type": "string"})
    graph = ET.SubElement(root, f"{{{GRAPHML_NS}}}graph", id="snooze", edgedefault="directed")

    def node(node_id: str, kind: str, address: Any = None, status: Any = None) -> str:
        el = ET.SubElement(graph, f"{{{GRAPHML_NS}}}node", id=node_id)
        for key, value in (("type", kind), ("address", address), ("status", status)):
            if value:
                ET.SubElement(el, f"{{{GRAPHML_NS}}}data", key=key).text = str(value)
        return node_id

    def edge(source: str, target: str) -> None:
        ET.SubElement(graph, f"{{{GRAPHML_NS}}}edge", source=source, target=target)

    def where(address: Any) -> str | None:
        return f"{address.get('address')}:{address.get('port')}" if isinstance(address, dict) else None

    gl = h.get("groupLeaderDescription") or {}
    top = node(f"gl:{gl.get('id')}", "GroupLeader", where(gl.get("listenSettings", {}).get("controlDataAddress")))
    for gm in h.get("groupManagerDescriptions", []):
        g = node(f"gm:{gm.get('id')}", "GroupManager", where(gm.get("listenSettings", {}).get("controlDataAddress")))
        edge(top, g)
        for lc in gm.get("localControllers", []):
            lc_node = node(f"lc:{lc.get('id')}", "LocalController", where(lc.get("controlDataAddress")), lc.get("status"))
            edge(g, lc_node)
            meta = lc.get("virtualMachineMetaData") or {}
            for vm in sorted(set(lc.get("assignedVirtualMachines", [])) | set(meta)):
                edge(lc_node, node(f"vm:{vm}", "VirtualMachine", status=(meta.get(vm) or {}).get("status")))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def cmd_dump(args: argparse.Namespace) -> int:
    with client(args) as api:
        text = hierarchy_graphml(api.get_complete_hierarchy())
    if args.output:
        Path(args.output).write_text(text)
        print(f"hierarchy written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from snooze.cli.vms import add_template_arguments

    def verb(name: str, help: str, *, remote: bool = False) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                                  formatter_class=HelpFormatter)
        p.add_argument("--definitions", metavar="FILE",
                       help="the virtual-cluster definitions file (default: $SNOOZE_CLUSTERS_FILE, else "
                            "$XDG_CONFIG_HOME/snooze/virtual-clusters.json)")
        if remote:
            add_target_options(p, top_level=False)
        return p

    d = verb("define", "define a named virtual cluster (kept in a local file)")
    d.add_argument("name", metavar="NAME")
    d.set_defaults(func=reports_errors(cmd_define))

    u = verb("undefine", "delete a virtual cluster's definition (its running VMs are left alone)")
    u.add_argument("name", metavar="NAME")
    u.set_defaults(func=reports_errors(cmd_undefine))

    a = verb("add", "add VM templates to a defined virtual cluster")
    a.add_argument("cluster", metavar="NAME")
    add_template_arguments(a, default_name="NAME-<n>")
    a.set_defaults(func=reports_errors(cmd_add))

    r = verb("remove", "remove a VM template from a defined virtual cluster")
    r.add_argument("cluster", metavar="NAME")
    r.add_argument("vm", metavar="VM")
    r.set_defaults(func=reports_errors(cmd_remove))

    ls = verb("list", "list the defined virtual clusters")
    ls.add_argument("--json", action="store_true", help="print the definitions as JSON")
    ls.set_defaults(func=reports_errors(cmd_list))

    s = verb("start", "start a defined virtual cluster and follow it until its VMs run", remote=True)
    s.add_argument("name", metavar="NAME")
    s.add_argument("--timeout", type=float, default=300.0, help="give up waiting after this many seconds")
    s.add_argument("--json", action="store_true", help="print the virtual cluster response as JSON")
    s.set_defaults(func=reports_errors(cmd_start))

    i = verb("info", "show each VM of a virtual cluster, or one VM", remote=True)
    i.add_argument("target", metavar="NAME|VM")
    i.add_argument("--vm", action="store_true", help="TARGET is a VM id even if a cluster has that name")
    i.add_argument("--json", action="store_true", help="print the answer as JSON")
    i.set_defaults(func=reports_errors(cmd_info))

    g = verb("dump", "write the hierarchy as GraphML (group leader, group managers, local controllers, VMs)",
             remote=True)
    g.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    g.set_defaults(func=reports_errors(cmd_dump))
