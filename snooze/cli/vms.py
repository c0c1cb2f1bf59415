"""The ``snooze`` verbs on virtual machines: submit, vms, vm, suspend/resume/shutdown/reboot/destroy, resize, migrate.

``register(subparsers)`` adds them to the ``snooze`` parser; each handler talks to the
bootstrap through ``SyncSnoozeClient`` and returns an exit code. Progress goes to stderr and
results to stdout, so ``snooze submit … > vms.txt`` keeps the table.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from typing import IO, Any

from snooze.cli.errors import CliError, Handler, reports_errors
from snooze.cli.output import HelpFormatter, capacity, memory, table
from snooze.cli.target import add_target_options, client
from snooze.client.errors import REFUSED
from snooze.client.templates import (
    DEFAULT_NETWORK_DEMAND,
    libvirt_template_file,
    sized_template,
)
from snooze.client.types import FAILED_STATUSES, Progress, VirtualMachineMetaDataJson
from snooze.codes import ErrorCode, TaskState, VMStatus

__all__ = ["ProgressPrinter", "add_template_arguments", "register", "report_response", "templates_from_args", "vm_details",
           "vm_table"]

DEFAULT_MEMORY_KIB = 256 * 1024
NO_IMAGE = "-"  # only to satisfy sized_template; removed from the template sent


# -- formatting -----------------------------------------------------------------------------


def _vms(n: int) -> str:
    return f"{n} VM" if n == 1 else f"{n} VMs"


def _vm_id(vm: VirtualMachineMetaDataJson) -> str:
    return str(vm.get("virtualMachineId") or vm.get("virtualMachineLocation", {}).get("virtualMachineId") or "?")


def vm_table(vms: Sequence[VirtualMachineMetaDataJson]) -> str:
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "LOCAL CONTROLLER", "GROUP MANAGER", "IP", "VCPUS", "MEMORY")]
    for vm in vms:
        loc = vm.get("virtualMachineLocation") or {}
        req = vm.get("requestedCapacity") or []
        rows.append((_vm_id(vm), str(vm.get("status") or "-"), str(loc.get("localControllerId") or "-"),
                     str(loc.get("groupManagerId") or "-"), str(vm.get("ipAddress") or "-"),
                     f"{req[0]:g}" if len(req) == 4 else "-", memory(req[1]) if len(req) == 4 else "-"))
    return table(rows)


def vm_details(vm: VirtualMachineMetaDataJson) -> str:
    loc = vm.get("virtualMachineLocation") or {}
    lc_addr = loc.get("localControllerControlDataAddress") or {}
    gm_addr = loc.get("groupManagerControlDataAddress") or {}
    lines = [
        ("id", _vm_id(vm)),
        ("status", str(vm.get("status") or "-")),
        ("error", str(vm.get("errorCode") or "-") + (f"  {vm['message']}" if vm.get("message") else "")),
        ("local controller", f"{loc.get('localControllerId') or '-'}"
                             + (f"  {lc_addr.get('address')}:{lc_addr.get('port')}" if lc_addr else "")),
        ("group manager", f"{loc.get('groupManagerId') or '-'}"
                          + (f"  {gm_addr.get('address')}:{gm_addr.get('port')}" if gm_addr else "")),
        ("ip address", str(vm.get("ipAddress") or "-")),
        ("mac address", str(vm.get("macAddress") or "-")),
        ("requested", capacity(vm.get("requestedCapacity"))),
        ("used", capacity(vm.get("usedCapacity"))),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in lines)


class ProgressPrinter:
    """Follows a virtual cluster on ``stream``: a redrawn bar on a terminal, else a line per change."""

    SPIN = "|/-\\"

    def __init__(self, stream: IO[str], total: int, tty: bool | None = None) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty() if tty is None else tty

    def __call__(self, p: Progress) -> None:
        if p.state == TaskState.PENDING:
            if self.tty:
                self._draw(f"{self.SPIN[p.polls % len(self.SPIN)]} placing {_vms(self.total)}", 0, p.elapsed)
            elif p.changed:
                self._line(f"task {p.task_id}: waiting for the group leader to place {_vms(self.total)}")
            return
        counts: dict[str, int] = {}
        for status in p.statuses.values():
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no VMs"
        if self.tty:
            self._draw(summary, counts.get(VMStatus.RUNNING, 0), p.elapsed)
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._line(f"task {p.task_id}: done in {p.elapsed:.1f}s: {summary}")

    def _draw(self, text: str, done: int, elapsed: float) -> None:
        width = 20
        filled = width * done // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}  {text}  {elapsed:.1f}s\033[K")
        self.stream.flush()

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


# -- handlers ---------------------------------------------------------------------------------


def templates_from_args(args: argparse.Namespace) -> list[Any]:
    """The templates ``add_template_arguments``' options describe."""
    if args.count < 1:
        raise CliError(f"--count must be >= 1, got {args.count}", ErrorCode.BAD_TEMPLATE)
    templates: list[Any] = [libvirt_template_file(path, rx=args.rx, tx=args.tx) for path in args.template or []]
    sized = args.vcpus is not None or args.memory is not None or args.memory_mib is not None or args.image
    if sized or not templates:
        memory = args.memory if args.memory is not None else (
            args.memory_mib * 1024 if args.memory_mib is not None else DEFAULT_MEMORY_KIB)
        # Without --name, a fresh prefix: VM names must not collide with earlier submissions.
        prefix = args.name or f"vm-{secrets.token_hex(3)}"
        for i in range(args.count):
            template = sized_template(vcpus=args.vcpus or 1, memory=memory, image_id=args.image or NO_IMAGE,
                                      name=prefix if args.count == 1 else f"{prefix}-{i + 1}", rx=args.rx, tx=args.tx)
            if not args.image:
                # The API's imageId is optional: without one the VM has no disk (see --help).
                del template["imageId"]
            templates.append(template)
    return templates


def cmd_submit(args: argparse.Namespace) -> int:
    templates = templates_from_args(args)
    with client(args) as api:
        task_id = api.start_virtual_cluster(templates)
        if args.no_wait:
            print(task_id)
            return 0
        print(f"submitted virtual cluster {task_id} ({_vms(len(templates))})", file=sys.stderr, flush=True)
        response = api.wait_for_virtual_cluster(task_id, timeout=args.timeout, poll_interval=args.poll_interval,
                                                   progress=ProgressPrinter(sys.stderr, len(templates)))
    return report_response(response, task_id, as_json=args.json)


def report_response(response: Any, task_id: str, *, as_json: bool) -> int:
    """A virtual cluster's response as a table (or JSON) on stdout, each failed VM on stderr;
    the exit code: 1 if anything failed."""
    vms = list(response.get("virtualMachineMetaData") or [])
    if as_json:
        print(json.dumps(response, indent=2))
    elif vms:
        print(vm_table(vms))
    failed = [vm for vm in vms if str(vm.get("status", "")).upper() in FAILED_STATUSES]
    for vm in failed:
        why = f": {vm['message']}" if vm.get("message") else ""
        print(f"snooze: {vm.get('errorCode') or ErrorCode.VM_FAILED}: virtual machine {_vm_id(vm)} did not start{why}",
              file=sys.stderr)
    if response.get("errorCode") and not failed:
        print(f"snooze: {response['errorCode']}: virtual cluster {task_id} failed", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_vms(args: argparse.Namespace) -> int:
    with client(args) as api:
        vms = api.list_virtual_machines()
    if args.json:
        print(json.dumps({"virtualMachines": vms}, indent=2))
    elif not vms:
        print("no virtual machines")
    else:
        print(vm_table(vms))
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    with client(args) as api:
        vm = api.get_virtual_machine_meta_data(args.id)
    print(json.dumps(vm, indent=2) if args.json else vm_details(vm))
    return 0


# verb → (client method, past tense for the confirmation)
CONTROLS: dict[str, tuple[str, str]] = {
    "suspend": ("suspend_virtual_machine", "suspended"),
    "resume": ("resume_virtual_machine", "resumed"),
    "shutdown": ("shutdown_virtual_machine", "shut down"),
    "reboot": ("reboot_virtual_machine", "rebooted"),
    "destroy": ("destroy_virtual_machine", "destroyed"),
}


def _control_handler(verb: str) -> Handler:
    method, done = CONTROLS[verb]

    def run(args: argparse.Namespace) -> int:
        from snooze.cli.virtualclusters import cluster_or_vm

        name, members = cluster_or_vm(args, args.id)
        refused = []
        with client(args) as api:
            for vm_id in members:
                if bool(getattr(api, method)(vm_id)):
                    print(f"{done} {vm_id}")
                else:
                    refused.append(vm_id)
        if refused:
            raise CliError(f"the cluster refused to {verb} {', '.join(refused)}", REFUSED)
        if name is not None:
            print(f"{done} virtual cluster {name} ({_vms(len(members))})")
        return 0

    run.__name__ = f"cmd_{verb}"
    return run


def cmd_resize(args: argparse.Namespace) -> int:
    memory = args.memory if args.memory is not None else (args.memory_mib * 1024 if args.memory_mib is not None else None)
    if args.vcpus is None and memory is None and args.rx is None and args.tx is None:
        raise CliError("give at least one of --vcpus, --memory/--memory-mib, --rx, --tx", ErrorCode.BAD_CAPACITY)
    with client(args) as api:
        vm = api.resize_virtual_machine(args.id, vcpus=args.vcpus, memory=memory, rx=args.rx, tx=args.tx)
    print(json.dumps(vm, indent=2) if args.json else vm_details(vm))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    with client(args) as api:
        ok = api.migrate_virtual_machine(args.id, args.to)
    if not ok:
        raise CliError(f"the cluster refused to migrate {args.id} to {args.to}", REFUSED)
    print(f"migrated {args.id} to {args.to}")
    return 0


def add_template_arguments(p: argparse.ArgumentParser, *, default_name: str) -> None:
    """The options that describe VM templates (``submit``, ``add``): XML files or sized VMs."""
    p.add_argument("--template", action="append", metavar="FILE",
                   help="libvirt domain XML file (repeatable); without it, --count sized VMs")
    p.add_argument("--vcpus", type=int, help="vcpus per sized VM (default: 1)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory", type=int, metavar="KIB", help=f"memory per sized VM in KiB (default: {DEFAULT_MEMORY_KIB})")
    mem.add_argument("--memory-mib", type=int, metavar="MIB", help="memory per sized VM in MiB")
    p.add_argument("--count", type=int, default=1, help="how many sized VMs")
    p.add_argument("--name", metavar="PREFIX",
                   help=f"VM name, or name prefix with --count: PREFIX-1, PREFIX-2 ... (default: {default_name})")
    p.add_argument("--image", metavar="ID",
                   help="disk image of sized VMs, a file name in each local controller's image directory "
                        "(default: none, a VM without a disk)")
    p.add_argument("--rx", type=float, default=DEFAULT_NETWORK_DEMAND, help="network rx demand per VM, KiB/s")
    p.add_argument("--tx", type=float, default=DEFAULT_NETWORK_DEMAND, help="network tx demand per VM, KiB/s")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the virtual-machine verbs to the ``snooze`` command's subparsers.

    Each verb also takes ``--state-dir`` and ``--url`` after its name (``snooze vms --state-dir X``).
    """

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                                  formatter_class=HelpFormatter)
        add_target_options(p, top_level=False)
        return p

    s = verb("submit", "start a virtual cluster and follow it until its VMs run")
    add_template_arguments(s, default_name="vm-<random>")
    s.add_argument("--no-wait", action="store_true", help="print the task id and return at once")
    s.add_argument("--timeout", type=float, default=300.0, help="give up waiting after this many seconds")
    s.add_argument("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS)
    s.add_argument("--json", action="store_true", help="print the virtual cluster response as JSON")
    s.set_defaults(func=reports_errors(cmd_submit))

    v = verb("vms", "list virtual machines")
    v.add_argument("--json", action="store_true", help="print the answer as JSON")
    v.set_defaults(func=reports_errors(cmd_vms))

    one = verb("vm", "show one virtual machine: status, location, address, usage")
    one.add_argument("id", metavar="ID")
    one.add_argument("--json", action="store_true", help="print the answer as JSON")
    one.set_defaults(func=reports_errors(cmd_vm))

    for name in CONTROLS:
        c = verb(name, f"{name} a virtual machine, or every VM of a defined virtual cluster (snooze define)")
        c.add_argument("id", metavar="VM|NAME")
        c.add_argument("--vm", action="store_true", help="VM|NAME is a VM id even if a virtual cluster has that name")
        c.add_argument("--definitions", metavar="FILE", help="the virtual-cluster definitions file (see snooze define)")
        c.set_defaults(func=reports_errors(_control_handler(name)))

    z = verb("resize", "change a running virtual machine's vcpus and memory live (within its maximums), "
                       "or its network demand")
    z.add_argument("id", metavar="ID")
    z.add_argument("--vcpus", type=int, help="new number of vcpus")
    zmem = z.add_mutually_exclusive_group()
    zmem.add_argument("--memory", type=int, metavar="KIB", help="new memory in KiB")
    zmem.add_argument("--memory-mib", type=int, metavar="MIB", help="new memory in MiB")
    z.add_argument("--rx", type=float, help="new network rx demand, KiB/s")
    z.add_argument("--tx", type=float, help="new network tx demand, KiB/s")
    z.add_argument("--json", action="store_true", help="print the VM's new metadata as JSON")
    z.set_defaults(func=reports_errors(cmd_resize))

    m = verb("migrate", "live-migrate a virtual machine to another local controller")
    m.add_argument("id", metavar="ID")
    m.add_argument("--to", required=True, metavar="LC_ID",
                   help="destination local controller id (`snooze hosts` lists them; not the one the VM is on)")
    m.set_defaults(func=reports_errors(cmd_migrate))
