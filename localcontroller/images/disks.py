"""A VM's own files on its local controller: its qcow2 overlay, its config drive, its record.

In ``instance_directory``, per VM named ``VM``: ``VM.qcow2`` (a qcow2 overlay whose backing
file is the cached image: ``qemu-img create -f qcow2 -b CACHED -F FORMAT``, no copy),
``VM-cidata.img`` (the NoCloud config drive, ``localcontroller.images.configdrive``) and
``VM.json`` (what they were made from: the image, its cached path, the time, and whether the
VM is still arriving by migration). The records say which cached images are in use, so the
cache never evicts them, even after a restart of the local controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcontroller.hypervisor.errors import HypervisorError

log = logging.getLogger(__name__)

__all__ = ["DiskError", "Instance", "InstanceFiles", "create_overlay", "guest_network", "virtual_size"]


class DiskError(HypervisorError):
    """qemu-img or the config drive failed (HYPERVISOR_ERROR)."""


@dataclass(frozen=True)
class Instance:
    """The paths of one VM's files."""

    vm_id: str
    overlay: Path
    cidata: Path
    record: Path

    def paths(self) -> tuple[Path, Path, Path]:
        return self.overlay, self.cidata, self.record


async def _run(*argv: str, timeout: float = 60.0) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise DiskError(f"{argv[0]} {argv[1]} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        raise DiskError(f"{' '.join(argv[:2])} failed: {err.decode(errors='replace').strip()[-400:]}")
    return out.decode(errors="replace")


async def create_overlay(backing: Path, fmt: str, overlay: Path, size: int | None = None) -> None:
    """``overlay``: a new qcow2 on ``backing`` (of format ``fmt``), of ``size`` bytes if given
    (else the backing file's size)."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", fmt, str(overlay)]
    if size is not None:
        argv.append(str(int(size)))
    await _run(*argv)


async def virtual_size(path: Path) -> int:
    info = json.loads(await _run("qemu-img", "info", "-U", "--output=json", str(path)))
    return int(info["virtual-size"])


def guest_network(mac: str | None, ip: str | None, subnet: str | None) -> tuple[str, str, int, str | None] | None:
    """(mac, address, prefix, gateway) of a VM from its order (``mac``, ``ip``, ``subnet``: the
    gateway is the subnet's first address), or None when the order does not say."""
    if not mac or not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
        net = ipaddress.ip_network(subnet, strict=False) if subnet else ipaddress.ip_network(f"{ip}/24", strict=False)
    except ValueError:
        return None
    if address not in net:
        return None
    gateway = next(iter(net.hosts()), None)
    return mac, str(address), net.prefixlen, str(gateway) if gateway is not None and gateway != address else None


class InstanceFiles:
    """The files of the VMs of one local controller."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def of(self, vm_id: str) -> Instance:
        d = self.directory
        return Instance(vm_id, d / f"{vm_id}.qcow2", d / f"{vm_id}-cidata.img", d / f"{vm_id}.json")

    def write_record(self, vm_id: str, **fields: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = self.of(vm_id).record
        tmp = record.with_name(f".{record.name}.tmp")
        tmp.write_text(json.dumps({"vmId": vm_id, "at": time.time(), **fields}))
        tmp.replace(record)

    def read_record(self, vm_id: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.of(vm_id).record.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every VM that has files here, by name (a VM with an overlay but no readable record
        too: its record is then empty)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.directory.is_dir():
            return out
        for p in self.directory.iterdir():
            if p.name.startswith("."):
                continue
            if p.suffix == ".json":
                out[p.stem] = self.read_record(p.stem) or {}
            elif p.suffix == ".qcow2":
                out.setdefault(p.stem, {})
        return out

    def backing_files(self) -> set[str]:
        """The cached images the VMs here use."""
        return {str(r["backing"]) for r in self.records().values() if r.get("backing")}

    def exists(self, vm_id: str) -> bool:
        inst = self.of(vm_id)
        return inst.overlay.exists() or inst.record.exists()

    def remove(self, vm_id: str) -> list[Path]:
        removed = []
        for p in self.of(vm_id).paths():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        if removed:
            log.info("removed the files of %s: %s", vm_id, ", ".join(p.name for p in removed))
        return removed
