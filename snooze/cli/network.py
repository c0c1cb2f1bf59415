"""The ``snooze network|subnet|flavor|fwgroup|vlan`` verbs on the network model (the bootstrap's
``/networks``, ``/subnets``, ``/flavors``, ``/fwgroups``, ``/vlans``): ``create``, ``list`` (the
default), ``show``, ``delete``.

``create`` takes flags for the main fields, and/or ``--json FILE`` (``-``: stdin) with the whole
object in Loch Ness's field names; flags given override the file's fields. The server checks
everything (a refusal names the field: ``snooze: INVALID_NETWORK_OBJECT: cidr: ...``); this
module only shapes the request and prints the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snooze.cli.errors import CliError, reports_errors
from snooze.cli.output import HelpFormatter, memory, table
from snooze.cli.target import add_target_options, client
from snooze.codes import ErrorCode

__all__ = ["VERBS", "format_list", "format_object", "parse_rule", "register"]


def _text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def _kib(value: Any) -> str:
    return "-" if not value else memory(value)


def _rate(value: Any) -> str:
    return "unlimited" if not value else f"{value} KiB/s"


def _rule_text(rule: dict[str, Any]) -> str:
    ports = "all ports" if not rule.get("portStart") else (
        str(rule["portStart"]) if rule.get("portStart") == rule.get("portEnd") else f"{rule['portStart']}-{rule['portEnd']}")
    src = f"group {rule['group']}" if rule.get("group") else (rule.get("source") or "anywhere")
    return f"{rule.get('action', 'allow')} {rule.get('protocol', 'tcp')} {ports} from {src}"


@dataclass(frozen=True)
class Kind:
    """One verb group: its API kind, its id field, its table's columns (header, cell)."""

    verb: str
    kind: str
    noun: str
    columns: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...]
    id_field: str = "id"
    extra: tuple[str, ...] = field(default_factory=tuple)


VERBS: dict[str, Kind] = {k.verb: k for k in (
    Kind("network", "networks", "network", (("ID", lambda o: _text(o.get("id"))),
                                            ("METADATA", lambda o: _text(o.get("metadata"))))),
    Kind("subnet", "subnets", "subnet", (
        ("ID", lambda o: _text(o.get("id"))), ("NETWORK", lambda o: _text(o.get("network"))),
        ("CIDR", lambda o: _text(o.get("cidr"))), ("GATEWAY", lambda o: _text(o.get("gateway"))),
        ("START", lambda o: _text(o.get("start"))), ("END", lambda o: _text(o.get("end"))),
        ("DNS", lambda o: _text(o.get("dns"))))),
    Kind("flavor", "flavors", "flavor", (
        ("ID", lambda o: _text(o.get("id"))), ("VCPUS", lambda o: _text(o.get("vcpus"))),
        ("MEMORY", lambda o: _kib(o.get("memory"))), ("DISK", lambda o: _kib(o.get("disk"))),
        ("RX", lambda o: _rate(o.get("rx"))), ("TX", lambda o: _rate(o.get("tx"))),
        ("IMAGE", lambda o: _text(o.get("image"))))),
    Kind("fwgroup", "fwgroups", "firewall group", (
        ("ID", lambda o: _text(o.get("id"))), ("RULES", lambda o: str(len(o.get("rules") or []))),
        ("FIRST RULE", lambda o: _rule_text(o["rules"][0]) if o.get("rules") else "-"))),
    Kind("vlan", "vlans", "VLAN", (("TAG", lambda o: _text(o.get("tag"))),
                                   ("DESCRIPTION", lambda o: _text(o.get("description")))), id_field="tag"),
)}


def format_list(verb: str, objects: list[dict[str, Any]]) -> str:
    """The objects of one verb group as its table (a header only when there are none)."""
    columns = VERBS[verb].columns
    return table([tuple(h for h, _c in columns), *[tuple(cell(o) for _h, cell in columns) for o in objects]])


def format_object(verb: str, obj: dict[str, Any]) -> str:
    """One object: its table row's fields one per line, then a firewall group's rules as a table."""
    rows: list[tuple[str, ...]] = [("FIELD", "VALUE")]
    rows += [(h, cell(obj)) for h, cell in VERBS[verb].columns if h not in ("RULES", "FIRST RULE")]
    if verb != "vlan" and "metadata" in obj and all(h != "METADATA" for h, _c in VERBS[verb].columns):
        rows.append(("METADATA", _text(obj.get("metadata"))))
    out = table(rows)
    if verb == "fwgroup":
        rules: list[tuple[str, ...]] = [("#", "ACTION", "PROTOCOL", "PORTS", "FROM")]
        for i, r in enumerate(obj.get("rules") or []):
            ports = "all" if not r.get("portStart") else f"{r['portStart']}-{r['portEnd']}"
            src = f"group {r['group']}" if r.get("group") else (r.get("source") or "anywhere")
            rules.append((str(i), _text(r.get("action")), _text(r.get("protocol")), ports, src))
        out += "\n\n" + table(rules)
    return out


def parse_rule(spec: str) -> dict[str, Any]:
    """``PROTOCOL,PORTS,FROM[,ACTION]`` as a rule: PORTS ``22``, ``8000-8080`` or empty (all);
    FROM a CIDR, ``@GROUP`` or ``any``; ACTION allow (the default) or deny."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (3, 4):
        raise CliError(f"--rule {spec!r}: expected PROTOCOL,PORTS,FROM[,ACTION] (e.g. tcp,22,@admin)",
                       ErrorCode.BAD_REQUEST)
    protocol, ports, source = parts[:3]
    rule: dict[str, Any] = {"protocol": protocol, "action": parts[3] if len(parts) == 4 else "allow"}
    if ports:
        low, _sep, high = ports.partition("-")
        if not (low.isdigit() and (not high or high.isdigit())):
            raise CliError(f"--rule {spec!r}: ports {ports!r} are not PORT or LOW-HIGH", ErrorCode.BAD_REQUEST)
        rule["portStart"], rule["portEnd"] = int(low), int(high or low)
    if source.startswith("@"):
        rule["group"] = source[1:]
    elif source not in ("", "any"):
        rule["source"] = source
    return rule


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata {pair!r}: expected KEY=VALUE", ErrorCode.BAD_REQUEST)
        out[key] = value
    return out


def _from_file(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--json {name}: {exc.strerror or exc}", ErrorCode.BAD_REQUEST) from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--json {name}: not JSON ({exc})", ErrorCode.BAD_REQUEST) from exc
    if not isinstance(value, dict):
        raise CliError(f"--json {name}: a JSON object is expected, not {type(value).__name__}", ErrorCode.BAD_REQUEST)
    return value


def _object(verb: str, args: argparse.Namespace) -> dict[str, Any]:
    """The object to create: the ``--json`` file's, with the flags given set over it."""
    obj = _from_file(args.json_file)
    k = VERBS[verb]
    if args.id is not None:
        obj[k.id_field] = args.id
    flags: dict[str, Any] = {}
    if verb == "subnet":
        flags = {"network": args.network, "cidr": args.cidr, "gateway": args.gateway, "start": args.start,
                 "end": args.end, "dns": args.dns}
    elif verb == "flavor":
        flags = {"vcpus": args.vcpus, "memory": args.memory, "disk": args.disk, "rx": args.rx, "tx": args.tx,
                 "image": args.image}
    elif verb == "fwgroup":
        flags = {"rules": [parse_rule(r) for r in args.rule] if args.rule else None}
    elif verb == "vlan":
        flags = {"description": args.description}
    if verb != "vlan":
        flags["metadata"] = _metadata(args.metadata)
    obj.update({key: value for key, value in flags.items() if value is not None})
    if verb == "vlan" and isinstance(obj.get("tag"), str) and obj["tag"].isdigit():
        obj["tag"] = int(obj["tag"])
    if k.id_field not in obj:
        raise CliError(f"give the {k.noun}'s {k.id_field} (or a --json file that has it)", ErrorCode.BAD_REQUEST)
    return obj


def _commands(verb: str) -> dict[str, Callable[[argparse.Namespace], int]]:
    k = VERBS[verb]

    def cmd_list(args: argparse.Namespace) -> int:
        with client(args) as api:
            objects = api.list_network_objects(k.kind)
        print(json.dumps({k.kind: objects}, indent=2) if args.json else format_list(verb, objects))
        return 0

    def cmd_show(args: argparse.Namespace) -> int:
        with client(args) as api:
            obj, version = api.get_network_object(k.kind, args.id)
        print(json.dumps(obj, indent=2) if args.json else format_object(verb, obj) + f"\n\nversion {version}")
        return 0

    def cmd_create(args: argparse.Namespace) -> int:
        obj = _object(verb, args)
        with client(args) as api:
            created = api.create_network_object(k.kind, obj)
        print(json.dumps(created, indent=2) if args.print_json else format_object(verb, created))
        return 0

    def cmd_delete(args: argparse.Namespace) -> int:
        with client(args) as api:
            api.delete_network_object(k.kind, args.id)
        print(f"{k.noun} {args.id}: deleted")
        return 0

    return {"list": cmd_list, "show": cmd_show, "create": cmd_create, "delete": cmd_delete}


def _create_flags(verb: str, p: argparse.ArgumentParser) -> None:
    k = VERBS[verb]
    p.add_argument("id", nargs="?", help=f"the {k.noun}'s {k.id_field} (or give it in --json)")
    p.add_argument("--json", dest="json_file", metavar="FILE",
                   help="the whole object as JSON in Loch Ness's field names ('-': stdin); flags override its fields")
    p.add_argument("--print-json", action="store_true", help="print the created object as JSON")
    if verb != "vlan":
        p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a metadata entry (repeatable)")
    if verb == "subnet":
        p.add_argument("--network", help="the network it belongs to")
        p.add_argument("--cidr", help="ADDRESS/PREFIX, IPv4 or IPv6, host bits clear")
        p.add_argument("--gateway", help="the gateway: inside the CIDR, outside the range")
        p.add_argument("--start", help="the first address handed out (default: the CIDR's first host address)")
        p.add_argument("--end", help="the last address handed out (default: the CIDR's last host address)")
        p.add_argument("--dns", action="append", metavar="ADDRESS", help="a DNS server (repeatable)")
    elif verb == "flavor":
        p.add_argument("--vcpus", type=int, help="virtual CPUs")
        p.add_argument("--memory", type=int, metavar="KIB", help="memory in KiB (as Snooze's capacity vector)")
        p.add_argument("--disk", type=int, metavar="KIB", help="disk in KiB")
        p.add_argument("--rx", type=int, metavar="KIBPS", help="receive bandwidth in KiB/s (0: not limited)")
        p.add_argument("--tx", type=int, metavar="KIBPS", help="transmit bandwidth in KiB/s (0: not limited)")
        p.add_argument("--image", help="the image the flavor boots")
    elif verb == "fwgroup":
        p.add_argument("--rule", action="append", metavar="PROTO,PORTS,FROM[,ACTION]",
                       help="a rule, e.g. tcp,22,@admin or tcp,80-81,0.0.0.0/0 or icmp,,any,deny (repeatable)")
    elif verb == "vlan":
        p.add_argument("--description", help="what the VLAN is for")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``network``, ``subnet``, ``flavor``, ``fwgroup`` and ``vlan`` (create, list, show,
    delete) to the ``snooze`` command's subparsers."""
    for verb, k in VERBS.items():
        commands = _commands(verb)
        top = subparsers.add_parser(verb, help=f"create, list, show and delete {k.noun}s of the network model",
                                    formatter_class=HelpFormatter)
        add_target_options(top, top_level=False)
        top.add_argument("--json", action="store_true", help="print the answer as JSON")
        top.set_defaults(func=reports_errors(commands["list"]))
        verbs = top.add_subparsers(dest=f"{verb}_command")
        ls = verbs.add_parser("list", help=f"list the {k.noun}s (the default)")
        show = verbs.add_parser("show", help=f"one {k.noun} and its version")
        show.add_argument("id", help=f"the {k.noun}'s {k.id_field}")
        for p in (ls, show):
            add_target_options(p, top_level=False)
            p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
        ls.set_defaults(func=reports_errors(commands["list"]))
        show.set_defaults(func=reports_errors(commands["show"]))
        create = verbs.add_parser("create", help=f"create a {k.noun}", formatter_class=HelpFormatter)
        add_target_options(create, top_level=False)
        _create_flags(verb, create)
        create.set_defaults(func=reports_errors(commands["create"]))
        rm = verbs.add_parser("delete", help=f"delete a {k.noun} (refused while it is in use: the users are named)")
        add_target_options(rm, top_level=False)
        rm.add_argument("id", help=f"the {k.noun}'s {k.id_field}")
        rm.set_defaults(func=reports_errors(commands["delete"]))
