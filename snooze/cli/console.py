"""``snooze console VM``: attach to a guest's serial console.

The VM's local controller is found through the API (the VM's location), and that local
controller's hypervisor through its description (``hypervisorSettings.remoteUri``, which the
local QEMU cluster sets to its host's ``qemu+unix:///system?socket=…``). Where that URI is
usable from here (a Unix socket that exists on this machine), ``virsh -c URI console VM`` is
exec'd with the terminal; otherwise — or with ``--print``, or without a terminal — the command
to run on the VM's host is printed instead. A VM on libvirt's test driver has no console: that
is said, with exit code 1.

``virsh console`` detaches on ``Ctrl-]``. The guest image ``snooze-tiny`` has a shell there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

from snooze.cli.errors import CliError, reports_errors
from snooze.cli.output import HelpFormatter
from snooze.cli.target import add_target_options, client

__all__ = ["console_command", "register"]


def console_command(uri: str, vm_id: str) -> list[str]:
    """The ``virsh`` command line that attaches to ``vm_id``'s serial console on ``uri``."""
    return ["virsh", "-c", uri, "console", vm_id]


def _local_socket(uri: str) -> bool:
    """True if ``uri`` reaches a libvirtd through a Unix socket that exists on this machine."""
    parts = urlsplit(uri)
    if "+unix" not in parts.scheme:
        return False
    sockets = parse_qs(parts.query).get("socket") or []
    return bool(sockets) and os.path.exists(sockets[0])


def _find(lcs: list[dict[str, Any]], lc_id: str) -> dict[str, Any]:
    for lc in lcs:
        if lc.get("id") == lc_id:
            return lc
    raise CliError(f"local controller {lc_id} is not in the hierarchy (is it up?)")


def cmd_console(args: argparse.Namespace) -> int:
    with client(args) as api:
        vm = api.get_virtual_machine_meta_data(args.id)
        location = vm.get("virtualMachineLocation") or {}
        lc_id = location.get("localControllerId")
        if not lc_id:
            raise CliError(f"{args.id} runs nowhere (status {vm.get('status')}): no console")
        lc = _find(api.list_local_controllers(), lc_id)
    settings = lc.get("hypervisorSettings") or {}
    if settings.get("testDriver"):
        raise CliError(f"{args.id} runs on {lc_id}, on libvirt's test driver: it has no console "
                       "(start a cluster of real guests with ./scripts/run --hypervisor qemu)")
    uri = str(settings.get("remoteUri") or "qemu:///system")
    command = console_command(uri, args.id)
    usable = _local_socket(uri) and shutil.which("virsh") is not None
    if args.print or not usable or not sys.stdin.isatty():
        where = "" if _local_socket(uri) else f" on {lc_id}'s host ({lc.get('hostname') or 'its address'})"
        print(f"{args.id} runs on {lc_id}; its serial console{where}, Ctrl-] to leave:")
        print("  " + shlex.join(command))
        return 0
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 0  # not reached


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``console`` to the ``snooze`` command's subparsers."""
    p = subparsers.add_parser("console", formatter_class=HelpFormatter, help="attach to a VM's serial console",
                              description="Attach to a VM's serial console with virsh (Ctrl-] leaves), or print the "
                                          "command to run on its host when it cannot be reached from here.")
    add_target_options(p, top_level=False)
    p.add_argument("id", metavar="VM", help="the virtual machine's id")
    p.add_argument("--print", action="store_true", help="only print the virsh command (default: run it when possible)")
    p.set_defaults(func=reports_errors(cmd_console))
