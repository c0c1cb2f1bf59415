"""``snooze-tiny``: a small bootable guest disk built from Debian packages only.

The disk (qcow2, about 10 MB) is a FAT "superfloppy" (a FAT file system over the whole disk, no
partition table) made bootable by syslinux; it holds the kernel of Debian's
``linux-image-amd64`` (``/boot/vmlinuz-VERSION``), an initramfs and ``syslinux.cfg``. The
initramfs is the whole guest: ``busybox-static``, the kernel modules it needs from
``/lib/modules/VERSION`` (virtio PCI, block and net, vfat and its code pages, with their
dependencies from ``modules.dep``) and an ``/init`` script that

- loads the modules, mounts ``/proc``, ``/sys`` and ``devtmpfs``;
- finds the NoCloud config drive: any ``/dev/vd*`` that mounts as vfat and holds ``meta-data``
  (``localcontroller.images.configdrive`` writes it);
- reads ``local-hostname`` from ``meta-data`` and the MAC, address/prefix and default route
  from ``network-config`` with ``sed`` (the fixed layout configdrive writes), brings up the
  NIC whose MAC matches (DHCP with ``udhcpc`` on the first NIC when there is no
  network-config);
- writes its name followed by a newline to ``/www/index.html`` and runs ``busybox httpd`` on
  port 80, so ``GET http://ADDRESS/`` answers the name;
- prints ``snooze-tiny: ready NAME ADDRESS`` on the console (``console=ttyS0``) and keeps a
  shell on it.

Nothing is mounted or run as a guest to build it: the initramfs is a ``newc`` cpio archive
written here (device nodes included, no root needed), the FAT volume is made with
``mkfs.vfat -C``, ``syslinux --install`` (the mtools installer) writes the boot sector and
``ldlinux.sys`` into the file, ``mcopy`` copies the files in, and ``qemu-img convert`` makes the
qcow2. Packages: linux-image-amd64 busybox-static syslinux syslinux-common mtools dosfstools
qemu-utils (``scripts/install-qemu.sh``).

Default output: ``/var/cache/snooze/guest/snooze-tiny-RECIPE.qcow2`` (``SNOOZE_GUEST_IMAGE``
overrides), RECIPE a digest of what makes it, so that checkouts of different versions on one
machine each keep their own image instead of rebuilding a shared one in turn. Beside it
``….qcow2.json`` records what it was built from; ``ensure_image`` builds when the image is
missing or was built by another recipe (the init script changed).
Command line: ``python -m snooze.dev.guestimage [--output PATH] [--force]``
(``scripts/build-guest-image``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_DIR",
    "IMAGE_NAME",
    "GuestImageError",
    "READY_PREFIX",
    "build_image",
    "ensure_image",
    "find_kernel",
    "image_path",
    "main",
]

IMAGE_NAME = "snooze-tiny"
DEFAULT_DIR = Path("/var/cache/snooze/guest")
ENV_PATH = "SNOOZE_GUEST_IMAGE"
READY_PREFIX = "snooze-tiny: ready"
"""The console line the guest prints when it serves HTTP: ``snooze-tiny: ready NAME ADDRESS``."""

BUSYBOX = Path("/bin/busybox")
# virtio for Snooze's domains; e1000 and 8139cp too, the NICs QEMU and libvirt give a guest
# whose domain names no model (small, and loaded in no time when there is no such device).
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "e1000", "8139cp", "vfat", "nls_cp437", "nls_ascii",
           "nls_utf8"]
PACKAGES = "linux-image-amd64 busybox-static syslinux syslinux-common mtools dosfstools qemu-utils"
KERNEL_ARGS = "console=ttyS0 quiet panic=10"
_TIMEOUT = 120.0

# The guest's /init. It runs as PID 1 from the initramfs; the sed expressions read the fixed
# layout of localcontroller.images.configdrive (tests/unit/test_configdrive.py runs the same).
INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /cidata /www
mount -t devpts devpts /dev/pts
say() { echo "snooze-tiny: $*" > /dev/console; }
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null || say "cannot load $m"; done < /lib/modules/order
ip link set lo up

# The config drive: a vfat /dev/vd* holding meta-data (the boot disk is vfat too, without it).
drive=""
tries=0
while [ -z "$drive" ] && [ "$tries" -lt 100 ]; do
    for d in /dev/vd*; do
        [ -b "$d" ] || continue
        if mount -t vfat -o ro "$d" /cidata 2>/dev/null; then
            if [ -f /cidata/meta-data ]; then drive="$d"; break; fi
            umount /cidata
        fi
    done
    [ -n "$drive" ] || { tries=$((tries + 1)); sleep 0.1; }
done

name=""
mac=""
cidr=""
via=""
if [ -n "$drive" ]; then
    name=$(sed -n 's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' /cidata/meta-data | head -n 1)
    if [ -f /cidata/network-config ]; then
        nc=/cidata/network-config
        mac=$(sed -n 's/^ *macaddress: *"\{0,1\}\([0-9a-fA-F:]*\)"\{0,1\} *$/\1/p' $nc | head -n 1)
        cidr=$(sed -n 's/^ *- *"\{0,1\}\([0-9a-fA-F.:]*\/[0-9]*\)"\{0,1\} *$/\1/p' $nc | head -n 1)
        via=$(sed -n 's/^ *via: *"\{0,1\}\([0-9a-fA-F.:]*\)"\{0,1\} *$/\1/p' $nc | head -n 1)
        sed -n '/^ *nameservers:/,$ s/^ *- *"\{0,1\}\([0-9a-fA-F.:]*\)"\{0,1\} *$/nameserver \1/p' $nc \
            > /etc/resolv.conf
    fi
else
    say "no config drive found"
fi
[ -n "$name" ] || name=snooze-tiny
hostname "$name"
mac=$(echo "$mac" | tr 'A-F' 'a-f')

# The NIC: the one whose MAC the config names, else the first one (with DHCP).
dev=""
tries=0
while [ -z "$dev" ] && [ "$tries" -lt 50 ]; do
    first=""
    for n in /sys/class/net/*; do
        i=${n##*/}
        [ "$i" = lo ] && continue
        [ -n "$first" ] || first=$i
        if [ -n "$mac" ] && [ "$(cat "$n/address")" = "$mac" ]; then dev=$i; fi
    done
    [ -z "$mac" ] && dev=$first
    [ -n "$dev" ] || { tries=$((tries + 1)); sleep 0.1; }
done
address=""
if [ -z "$dev" ]; then
    say "no network interface${mac:+ with MAC $mac}"
elif [ -n "$cidr" ]; then
    ip link set "$dev" up
    ip addr add "$cidr" dev "$dev"
    [ -n "$via" ] && ip route add default via "$via" dev "$dev"
    address=${cidr%/*}
else
    ip link set "$dev" up
    udhcpc -i "$dev" -n -q -t 5 -s /etc/udhcpc.script >/dev/null 2>&1
    address=$(ip -4 -o addr show dev "$dev" | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1)
fi

echo "$name" > /www/index.html
httpd -p 80 -h /www
say "ready $name ${address:-none}"

# A shell on the console, for ever (PID 1 must never exit).
while true; do
    setsid cttyhack sh -l
    sleep 1
done
"""

# udhcpc's hook: configure the lease it got (only when no network-config is given).
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do ip route add default via "$r" dev "$interface"; break; done
        ;;
esac
exit 0
"""

SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT snooze
PROMPT 0
TIMEOUT 0
LABEL snooze
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND {KERNEL_ARGS}
"""

RECIPE_VERSION = "1"

# Two CGI programs of the guest's web server, so that a test sends one guest to another and
# reads the outcome (guest to guest across hosts, issue 13): /cgi-bin/fetch?ADDRESS answers
# what http://ADDRESS/ answered this guest, /cgi-bin/ping?ADDRESS "reached" or "unreachable".
# Only a dotted IPv4 address is taken.
CGI_FETCH = r"""#!/bin/sh
echo "Content-Type: text/plain"
echo ""
a="$QUERY_STRING"
case "$a" in ""|*[!0-9.]*) echo "bad address"; exit 0;; esac
timeout 5 wget -q -O - "http://$a/" 2>/dev/null || echo "no answer from $a"
"""
CGI_PING = r"""#!/bin/sh
echo "Content-Type: text/plain"
echo ""
a="$QUERY_STRING"
case "$a" in ""|*[!0-9.]*) echo "bad address"; exit 0;; esac
if ping -c 1 -W 2 "$a" >/dev/null 2>&1; then echo "reached $a"; else echo "unreachable $a"; fi
"""
# /cgi-bin/pinger?ADDRESS: pings ADDRESS every 10 ms for 15 s and answers ping's lines (one per
# reply, with its seq=N): the caller finds the longest time without a reply (a migration's gap).
CGI_PINGER = r"""#!/bin/sh
echo "Content-Type: text/plain"
echo ""
a="$QUERY_STRING"
case "$a" in ""|*[!0-9.]*) echo "bad address"; exit 0;; esac
ping -i 0.01 -w 15 "$a" 2>&1
"""


class GuestImageError(RuntimeError):
    """The image cannot be built: a package missing, a tool failing."""


def image_path() -> Path:
    """Where the image is: ``$SNOOZE_GUEST_IMAGE`` when set, else ``default_path()``."""
    value = os.environ.get(ENV_PATH, "").strip()
    return Path(value) if value else default_path()


def default_path() -> Path:
    """``DEFAULT_DIR/snooze-tiny-RECIPE.qcow2``: this version's image, beside other versions'."""
    return DEFAULT_DIR / f"{IMAGE_NAME}-{recipe()}.qcow2"


def recipe() -> str:
    """A digest of what makes the image, the kernel aside: a change rebuilds it."""
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, INIT, UDHCPC_SCRIPT, SYSLINUX_CFG, " ".join(MODULES), CGI_FETCH, CGI_PING, CGI_PINGER):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


# --- the kernel and its modules ---------------------------------------------------------------

def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", version)]


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> tuple[Path, Path]:
    """The newest kernel that has both ``/boot/vmlinuz-VERSION`` and its modules (with
    ``modules.dep``): (vmlinuz, module directory)."""
    found = []
    for vmlinuz in boot.glob("vmlinuz-*"):
        version = vmlinuz.name[len("vmlinuz-"):]
        if (modules / version / "modules.dep").is_file():
            found.append((version, vmlinuz))
    if not found:
        raise GuestImageError(f"no kernel with modules in {boot} and {modules}: install linux-image-amd64 "
                              f"(scripts/install-qemu.sh)")
    version, vmlinuz = max(found, key=lambda item: _version_key(item[0]))
    return vmlinuz, modules / version


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
    return name.replace("-", "_")


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """(name, file) of the ``wanted`` modules and their dependencies, each after those it
    needs; built-in ones (``modules.builtin``) are skipped."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[_module_name(path)] = (path, [_module_name(d) for d in rest.split()])
    builtin = set()
    with contextlib.suppress(OSError):
        builtin = {_module_name(line) for line in (moddir / "modules.builtin").read_text().split()}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in deps:
            if name in builtin:
                return
            raise GuestImageError(f"kernel module {name} not found in {moddir}/modules.dep")
        path, needs = deps[name]
        for dep in reversed(needs):
            visit(dep)
        order.append((name, moddir / path))

    for name in wanted:
        visit(name)
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise GuestImageError(f"{path} is zstd-compressed and zstd is not installed")
        return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _is_static(path: Path) -> bool:
    """True when the ELF executable has no program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


# --- the initramfs ------------------------------------------------------------------------------

@dataclass
class Cpio:
    """A ``newc`` cpio archive (what the kernel unpacks as initramfs), written in memory."""

    out: io.BytesIO = field(default_factory=io.BytesIO)
    ino: int = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        self.out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        self.out.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        data = self.out.getvalue()
        return data + b"\0" * (-len(data) % 512)


def build_initramfs(moddir: Path, busybox: Path = BUSYBOX) -> bytes:
    """The gzip-compressed initramfs: busybox, its applet links, the modules, /init."""
    if not busybox.is_file():
        raise GuestImageError(f"{busybox} is missing: install busybox-static (scripts/install-qemu.sh)")
    if not _is_static(busybox):
        raise GuestImageError(f"{busybox} is dynamically linked (Debian's busybox package): install busybox-static")
    listing = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=True)
    applets = sorted({a for a in listing.stdout.split() if re.fullmatch(r"[A-Za-z0-9_.\-]+", a)} - {"busybox"})
    for needed in ("sh", "mount", "insmod", "ip", "sed", "httpd", "setsid", "cttyhack", "udhcpc", "hostname", "wget", "ping",
                   "timeout"):
        if needed not in applets:
            raise GuestImageError(f"{busybox} has no {needed} applet")
    archive = Cpio()
    for d in (".", "bin", "dev", "etc", "proc", "sys", "tmp", "run", "www", "www/cgi-bin", "cidata", "lib", "lib/modules",
              "root"):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        archive.symlink(f"bin/{applet}", "busybox")
    names = []
    for name, path in resolve_modules(moddir, MODULES):
        archive.file(f"lib/modules/{name}.ko", _module_bytes(path))
        names.append(name)
    archive.file("lib/modules/order", ("\n".join(names) + "\n").encode())
    archive.file("init", INIT.encode(), 0o755)
    archive.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    archive.file("www/cgi-bin/fetch", CGI_FETCH.encode(), 0o755)
    archive.file("www/cgi-bin/ping", CGI_PING.encode(), 0o755)
    archive.file("www/cgi-bin/pinger", CGI_PINGER.encode(), 0o755)
    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    archive.file("etc/profile", b"export PATH=/bin PS1='\\h# '\n")
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


# --- the disk -----------------------------------------------------------------------------------

def _run(argv: list[str], timeout: float = _TIMEOUT) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=env,
                              check=False)
    except FileNotFoundError:
        raise GuestImageError(f"{argv[0]} is not installed: run scripts/install-qemu.sh ({PACKAGES})") from None
    except subprocess.TimeoutExpired:
        raise GuestImageError(f"{argv[0]} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-600:]
        raise GuestImageError(f"{' '.join(argv[:2])} failed (exit {proc.returncode}): {detail}")


def build_image(output: Path | None = None) -> Path:
    """Build ``snooze-tiny`` at ``output`` (default :func:`image_path`), replacing it
    atomically; returns its path. Raises GuestImageError naming what is missing."""
    output = Path(output) if output is not None else image_path()
    started = time.monotonic()
    vmlinuz, moddir = find_kernel()
    initrd = build_initramfs(moddir)
    kernel = vmlinuz.read_bytes()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{IMAGE_NAME}-", dir=output.parent) as tmp:
        work = Path(tmp)
        files = {"vmlinuz": kernel, "initrd.gz": initrd, "syslinux.cfg": SYSLINUX_CFG.encode()}
        for name, data in files.items():
            (work / name).write_bytes(data)
        payload = sum(len(d) for d in files.values())
        # Room for the files, syslinux's ldlinux.{sys,c32} (~150 KiB) and the FAT itself.
        kib = (payload * 11 // 10) // 1024 + 2048
        raw = work / "disk.raw"
        _run(["mkfs.vfat", "-C", "-n", "SNOOZETINY", "-i", hashlib.sha256(kernel).hexdigest()[:8],
              str(raw), str(kib)])
        _run(["syslinux", "--install", str(raw)])
        for name in files:
            _run(["mcopy", "-o", "-i", str(raw), str(work / name), f"::{name}"])
        qcow2 = work / "disk.qcow2"
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
        qcow2.chmod(0o644)
        seconds = time.monotonic() - started
        meta = {"image": IMAGE_NAME, "recipe": recipe(), "kernel": vmlinuz.name, "built": time.time(),
                "seconds": round(seconds, 2), "bytes": qcow2.stat().st_size, "virtualBytes": kib * 1024,
                "kernelArgs": KERNEL_ARGS}
        os.replace(qcow2, output)
        _meta_path(output).write_text(json.dumps(meta, indent=2) + "\n")
        with contextlib.suppress(OSError):
            _meta_path(output).chmod(0o644)
    return output


def _meta_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def built_by_this_recipe(image: Path) -> bool:
    try:
        meta = json.loads(_meta_path(image).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("recipe") == recipe()


def ensure_image(path: Path | None = None) -> Path:
    """The image's path, built first when it is missing or was built by an older recipe.
    Concurrent callers (processes too) build it once: a lock file beside it."""
    path = Path(path) if path is not None else image_path()
    if path.is_file() and built_by_this_recipe(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file() and built_by_this_recipe(path):
            return path
        return build_image(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-guest-image", description=(
        f"Build the {IMAGE_NAME} guest disk (qcow2) from Debian packages: {PACKAGES}."))
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where to write it (default ${ENV_PATH} or {DEFAULT_DIR}/{IMAGE_NAME}-RECIPE.qcow2)")
    parser.add_argument("--force", action="store_true", help="build even when an up-to-date image exists")
    parser.add_argument("--print-path", action="store_true", help="only print where the image is (or would be)")
    args = parser.parse_args(argv)
    path = args.output if args.output is not None else image_path()
    if args.print_path:
        print(path)
        return 0
    started = time.monotonic()
    try:
        if args.force:
            built = build_image(path)
        else:
            fresh = path.is_file() and built_by_this_recipe(path)
            built = ensure_image(path)
            if fresh:
                print(f"build-guest-image: {built} is up to date")
                return 0
    except (GuestImageError, OSError, subprocess.SubprocessError) as exc:
        print(f"build-guest-image: {exc}", file=sys.stderr)
        return 1
    print(f"build-guest-image: built {built} ({built.stat().st_size // 1024} KiB) "
          f"in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
