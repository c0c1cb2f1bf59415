"""What an uploaded file is, asked of ``qemu-img`` without letting it open anything else.

An upload is hostile input. ``qemu-img info`` left to probe a file's format would open what the
file names: a VMDK descriptor's extents, a qcow2's backing file or external data file — the
known attack being a backing path such as ``/etc/passwd`` or ``../other-image``, which a VM
booting from the image would then read. So the format is never probed by ``qemu-img``:

* qcow2 is recognised here by its magic (``QFI\\xfb``) and its header is read here first:
  a backing file, an external data file (incompatible feature bit 2, or its header
  extension), encryption, a dirty or corrupt flag are
  refused before ``qemu-img`` sees the file; then ``qemu-img info -f qcow2`` (which must agree:
  no backing file, no data file) and ``qemu-img check -f qcow2`` (which must find no
  corruption; leaked clusters are harmless and accepted), and the image's end as ``check``
  computes it must lie within the file's last cluster (a truncated qcow2 is refused);
* a file that starts like another image format (VMDK, VHDX, QED, LUKS …) is refused: stored
  as raw, anything that probed it later would open what it names;
* anything else is raw, accepted only when the client says so (``?format=raw``): every byte
  string is a valid raw disk, so guessing would store a text file or an HTML error page as a
  disk. ``qemu-img info -f raw`` gives its size.

Each ``qemu-img`` runs with a wall-clock timeout and CPU and memory limits.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QCOW2_MAGIC = b"QFI\xfb"
FORMATS = ("qcow2", "raw")
#: Limits of every qemu-img run: seconds of wall clock, seconds of CPU, bytes of address space.
QEMU_IMG_TIMEOUT = 300.0
QEMU_IMG_CPU_SECONDS = 240
QEMU_IMG_MEMORY = 2 * 1024**3
#: qcow2 incompatible feature bits: 0 dirty, 1 corrupt, 2 external data file, 3 compression
#: type, 4 extended L2. Dirty and corrupt are refused too (an image must be clean to share).
QCOW2_INCOMPATIBLE_REFUSED = {0: "is dirty (not closed cleanly)", 1: "is marked corrupt", 2: "has an external data file"}
QCOW2_INCOMPATIBLE_KNOWN = 0b11111
#: qcow2 header extension "External data file name".
QCOW2_EXT_DATA_FILE = 0x44415441


#: The first bytes of the image formats qemu (and libvirt's pool refresh) would probe a file
#: as: a "raw" upload that starts so is refused, or anything probing it later (a tool without
#: ``-f``, libvirt listing the pool) would take it for that format and open what it names
#: (a VMDK descriptor's extents, say).
OTHER_FORMATS = (
    (b"QFI\xfb", "qcow2"), (b"QED\x00", "qed"), (b"KDMV", "vmdk"), (b"COWD", "vmdk"), (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"), (b"conectix", "vpc"), (b"LUKS\xba\xbe", "luks"), (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"), (b"<<< Oracle VM VirtualBox Disk Image >>>", "vdi"),
    (b"<<< Sun xVM VirtualBox Disk Image >>>", "vdi"), (b"<<< Sun VirtualBox Disk Image >>>", "vdi"),
    (b"<<< innotek VirtualBox Disk Image >>>", "vdi"), (b"Bochs Virtual HD Image", "bochs"),
    (b"#!/bin/sh\n#V2.0 Format", "cloop"),
)


class InvalidImage(Exception):
    """The file is not an image the repository stores; the message says why."""


class QemuImgError(Exception):
    """qemu-img could not be run (missing, timed out): the repository cannot check uploads."""


@dataclass(frozen=True)
class ImageFacts:
    format: str
    capacity: int  # virtual size, bytes
    backing: str | None = None


def sniff(path: Path) -> str:
    """``qcow2`` when the file starts with qcow2's magic, the name of another image format
    when it starts with that one's, else ``raw``."""
    with path.open("rb") as f:
        head = f.read(64)
    for magic, name in OTHER_FORMATS:
        if head.startswith(magic):
            return name
    return "raw"


def check_qcow2_header(path: Path) -> None:
    """Refuse (InvalidImage) a qcow2 whose header names another file or is encrypted, before
    any qemu-img opens it."""
    with path.open("rb") as f:
        head = f.read(4096)
    if len(head) < 72:
        raise InvalidImage("a qcow2 header is 72 bytes at least: the file is truncated")
    version, backing_offset, backing_size, cluster_bits, _virtual, crypt = struct.unpack(">IQIIQI", head[4:36])
    if version not in (2, 3):
        raise InvalidImage(f"qcow2 version {version} is not supported (2 or 3)")
    if backing_offset or backing_size:
        raise InvalidImage("the image has a backing file: an image must stand alone (a backing path reads files outside the repository)")
    if crypt:
        raise InvalidImage("the image is encrypted: not supported")
    if not 9 <= cluster_bits <= 21:
        raise InvalidImage(f"qcow2 cluster_bits {cluster_bits} is out of range")
    if version == 3:
        if len(head) < 104:
            raise InvalidImage("a qcow2 version 3 header is 104 bytes at least: the file is truncated")
        (incompatible,) = struct.unpack(">Q", head[72:80])
        for bit, what in QCOW2_INCOMPATIBLE_REFUSED.items():
            if incompatible & (1 << bit):
                raise InvalidImage(f"the image {what}")
        if incompatible & ~QCOW2_INCOMPATIBLE_KNOWN:
            raise InvalidImage(f"the image uses unknown incompatible qcow2 features ({incompatible:#x})")
        (header_length,) = struct.unpack(">I", head[100:104])
        offset = header_length
    else:
        offset = 72
    # Header extensions (end marker 0): an external data file name is refused wherever it is.
    while offset + 8 <= len(head):
        kind, length = struct.unpack(">II", head[offset : offset + 8])
        if kind == 0:
            break
        if kind == QCOW2_EXT_DATA_FILE:
            raise InvalidImage("the image names an external data file: an image must stand alone")
        offset += 8 + ((length + 7) & ~7)


def _command(args: tuple[str, ...]) -> list[str]:
    """qemu-img under util-linux's ``prlimit`` when there is one (a ``preexec_fn`` setting the
    limits is unsafe in a process with threads, as the bootstrap is)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return ["qemu-img", *args]
    return [prlimit, f"--cpu={QEMU_IMG_CPU_SECONDS}", f"--as={QEMU_IMG_MEMORY}", "--", "qemu-img", *args]


async def qemu_img(*args: str, timeout: float = QEMU_IMG_TIMEOUT) -> tuple[int, str, str]:
    """Run ``qemu-img ARGS`` under the limits: (exit status, stdout, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *_command(args), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise QemuImgError(f"cannot run qemu-img: {exc.strerror or exc} (install Debian's qemu-utils)") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise InvalidImage(f"qemu-img {args[0]} took more than {timeout:.0f}s on this file") from None
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:300]


def _read_checks(path: Path, declared: str | None) -> tuple[str, int]:
    """The checks that only read the file: (its format, its size), or InvalidImage."""
    found = sniff(path)
    if found not in FORMATS:
        raise InvalidImage(f"the file is a {found} image: only qcow2 and raw are stored (convert it: qemu-img convert -O qcow2)")
    if declared is not None and declared != found:
        if declared == "raw":
            raise InvalidImage("the file is a qcow2 image but was uploaded as format=raw: upload it as qcow2")
        raise InvalidImage(f"the file is not a qcow2 image (it does not start with qcow2's magic) but was uploaded as format={declared}")
    if found == "raw" and declared is None:
        raise InvalidImage("the file is not a qcow2 image; a raw disk is accepted only when named so: upload it with ?format=raw")
    size = path.stat().st_size
    if size == 0:
        raise InvalidImage("the file is empty")
    if found == "qcow2":
        check_qcow2_header(path)
    return found, size


async def inspect(path: Path, declared: str | None) -> ImageFacts:
    """What ``path`` is (qcow2 or raw), checked as the module says; InvalidImage if refused.
    ``declared``: the format the client named (None: qcow2 is expected)."""
    found, size = await asyncio.to_thread(_read_checks, path, declared)
    status, out, err = await qemu_img("info", "--output=json", "-f", found, str(path))
    if status != 0:
        raise InvalidImage(f"qemu-img info refused it: {_first_line(err)}")
    try:
        info: dict[str, Any] = json.loads(out)
        capacity = int(info["virtual-size"])
        fmt = str(info["format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise QemuImgError(f"qemu-img info gave an answer this version cannot read: {exc}") from exc
    if fmt != found:
        raise InvalidImage(f"qemu-img reads it as {fmt}, not {found}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidImage("the image has a backing file: an image must stand alone")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise InvalidImage("the image names an external data file: an image must stand alone")
    if specific.get("encrypt") or info.get("encrypted"):
        raise InvalidImage("the image is encrypted: not supported")
    if specific.get("corrupt"):
        raise InvalidImage("the image is marked corrupt")
    if found == "qcow2":
        status, out, err = await qemu_img("check", "--output=json", "-f", "qcow2", str(path))
        # 0: clean; 3: only leaked clusters (space lost, no data harmed); 1: not checked; 2: corrupt.
        report: dict[str, Any] = {}
        try:
            report = json.loads(out) if out.strip() else {}
        except ValueError:
            report = {}
        if status not in (0, 3):
            detail = f"{report.get('corruptions', '?')} corruptions" if status == 2 else _first_line(err)
            raise InvalidImage(f"qemu-img check failed ({detail}): the image is truncated or corrupt")
        # A qcow2 may end inside its last cluster (a table written in part); a cluster or more
        # missing is a truncated file (qemu-img check's own tolerance).
        end, cluster = report.get("image-end-offset"), info.get("cluster-size")
        if isinstance(end, int) and isinstance(cluster, int) and end - size >= cluster:
            raise InvalidImage(f"the image's data ends at byte {end} but the file has {size}: it is truncated")
    return ImageFacts(format=found, capacity=capacity)
