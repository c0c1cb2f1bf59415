"""The NoCloud config drive a guest reads its name and network from.

A small vfat volume labelled ``cidata`` holding ``meta-data`` (``instance-id``,
``local-hostname``), ``user-data`` and ``network-config`` (cloud-init's network config
version 2: one ethernet matched by MAC address, its address, a default route and name
servers). cloud-init's NoCloud data source finds it by its label; the ``snooze-tiny`` guest
image (``snooze.dev.guestimage``) reads the same files with ``sed``, so their layout is fixed
and simple: one key per line, every string value double-quoted (a valid YAML scalar that needs
no escaping, since the values are checked to need none; quoted so that YAML 1.1 never reads a
MAC of digits as a base-60 number or a name of digits as an integer)::

    version: 2
    ethernets:
      eth0:
        match:
          macaddress: "54:56:c0:a8:7a:06"
        set-name: eth0
        addresses:
          - "192.168.122.6/24"
        routes:
          - to: "0.0.0.0/0"
            via: "192.168.122.1"
        nameservers:
          addresses:
            - "192.168.122.1"

The volume is built without mounting anything (``mkfs.vfat -C`` then ``mcopy`` from mtools),
in a temporary file beside the destination renamed over it when complete, so a reader never
sees half a drive.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LABEL",
    "ConfigDriveError",
    "GuestNetwork",
    "nocloud_files",
    "write_config_drive",
]

LABEL = "cidata"
"""The volume label cloud-init's NoCloud data source (and snooze-tiny) looks for."""

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# A hostname of the characters of a Snooze id (snooze/ids.py: letters, digits, '.', '_', '-',
# starting with a letter or digit; so "vm_1" and "web." are accepted although RFC 1123 would
# refuse them) and at most 64 of them (the kernel's limit on a hostname), and an instance id of
# the same characters and ':': nothing a YAML scalar or sed would need escaped.
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOOL_TIMEOUT = 30.0
# The drive's size: room for the files twice over, never below 1 MiB (mkfs.vfat's FAT12 is
# happy with that), in KiB as mkfs.vfat -C counts blocks.
_MIN_KIB = 1024
_MAX_BYTES = 16 * 1024 * 1024


class ConfigDriveError(Exception):
    """The config drive could not be built (a tool missing or failing, or the files too large)."""


@dataclass(frozen=True)
class GuestNetwork:
    """The one NIC a guest configures: matched by ``mac``, given ``address``/``prefix``, a
    default route through ``gateway`` (none when None) and ``dns`` name servers."""

    mac: str  # "54:56:c0:a8:7a:06" (as libvirt writes it)
    address: str  # "192.168.122.6"
    prefix: int  # 24
    gateway: str | None  # "192.168.122.1"
    dns: tuple[str, ...] = ()


def _check_network(network: GuestNetwork) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The normalised MAC and the address; ValueError naming what is wrong."""
    mac = str(network.mac).strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"network.mac: not a MAC address: {network.mac!r}")
    try:
        address = ipaddress.ip_address(str(network.address).strip())
    except ValueError:
        raise ValueError(f"network.address: not an IP address: {network.address!r}") from None
    if isinstance(network.prefix, bool) or not isinstance(network.prefix, int) \
            or not 0 < network.prefix <= address.max_prefixlen:
        raise ValueError(f"network.prefix: not a prefix length for {address}: {network.prefix!r}")
    for field, value in [("network.gateway", network.gateway), *(("network.dns", d) for d in network.dns)]:
        if value is None:
            continue
        try:
            other = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise ValueError(f"{field}: not an IP address: {value!r}") from None
        if other.version != address.version:
            raise ValueError(f"{field}: {other} is not of the address's family (IPv{address.version})")
    return mac, address


def _q(value: str) -> str:
    """A double-quoted YAML scalar of a value already checked to need no escaping."""
    return f'"{value}"'


def _network_config(network: GuestNetwork) -> str:
    mac, address = _check_network(network)
    default = "0.0.0.0/0" if address.version == 4 else "::/0"
    lines = [
        "version: 2",
        "ethernets:",
        "  eth0:",
        "    match:",
        f"      macaddress: {_q(mac)}",
        "    set-name: eth0",
        "    addresses:",
        f"      - {_q(f'{address}/{network.prefix}')}",
    ]
    if network.gateway is not None:
        gateway = ipaddress.ip_address(str(network.gateway).strip())
        lines += ["    routes:", f"      - to: {_q(default)}", f"        via: {_q(str(gateway))}"]
    if network.dns:
        lines += ["    nameservers:", "      addresses:"]
        lines += [f"        - {_q(str(ipaddress.ip_address(str(d).strip())))}" for d in network.dns]
    return "\n".join(lines) + "\n"


def nocloud_files(*, instance_id: str, hostname: str, network: GuestNetwork | None,
                  user_data: str | None = None) -> dict[str, bytes]:
    """The files of a NoCloud drive: ``meta-data``, ``user-data`` (``user_data`` as given, else
    an empty ``#cloud-config``) and, when ``network`` is given, ``network-config``. Raises
    ValueError naming the field for a hostname, instance id or network that a guest could not
    use (or that would need escaping)."""
    if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
        raise ValueError(f"instance_id: letters, digits and . _ : - only (128 at most): {instance_id!r}")
    if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
        raise ValueError(f"hostname: letters, digits and . _ - only, starting with a letter or digit "
                         f"(64 at most): {hostname!r}")
    files = {
        "meta-data": f"instance-id: {_q(instance_id)}\nlocal-hostname: {_q(hostname)}\n".encode(),
        "user-data": (user_data if user_data is not None else "#cloud-config\n{}\n").encode(),
    }
    if network is not None:
        files["network-config"] = _network_config(network).encode()
    return files


def _run(argv: list[str]) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_TOOL_TIMEOUT,
                              env=env, check=False)
    except FileNotFoundError:
        package = "dosfstools" if argv[0].startswith("mkfs") else "mtools"
        raise ConfigDriveError(f"{argv[0]} is not installed (Debian package {package})") from None
    except subprocess.TimeoutExpired:
        raise ConfigDriveError(f"{argv[0]} did not finish within {_TOOL_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-400:]
        raise ConfigDriveError(f"{argv[0]} failed (exit {proc.returncode}): {detail}")


def write_config_drive(path: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (name → content, as from :func:`nocloud_files`) to a new vfat volume
    labelled ``cidata`` at ``path`` (replaced atomically if it exists). Raises
    ConfigDriveError when a tool is missing or fails, ValueError for a bad file name."""
    path = Path(path)
    for name in files:
        if not _FILE_NAME.match(name):
            raise ValueError(f"files: not a plain file name: {name!r}")
    total = sum(len(content) for content in files.values())
    if total > _MAX_BYTES:
        raise ConfigDriveError(f"the files ({total} bytes) exceed a config drive's {_MAX_BYTES} bytes")
    kib = max(_MIN_KIB, -(-2 * total // 1024) + 256)
    # A volume id from the content: the same files give the same drive, byte for byte.
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + bytes(files[name]) + b"\0")
    volume_id = digest.hexdigest()[:8]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cidata-", dir=path.parent) as tmp:
        image = Path(tmp) / "cidata.img"
        _run(["mkfs.vfat", "-C", "-n", LABEL.upper(), "-i", volume_id, str(image), str(kib)])
        for name in sorted(files):
            source = Path(tmp) / "f"
            source.write_bytes(bytes(files[name]))
            # Fixed timestamps would need faketime; the content and names are what matter.
            _run(["mcopy", "-o", "-i", str(image), str(source), f"::{name}"])
        with contextlib.suppress(OSError):
            image.chmod(0o644)
        os.replace(image, path)
