"""The gate between a client's domain XML and libvirt: parse it safely, check it against the
operator's policy, and rebuild it from what the policy allows.

A ``libVirtTemplate`` comes from anyone who can reach the bootstrap, and libvirt runs what it
says with the hypervisor's privileges: a ``<disk>`` on ``/etc/shadow`` or ``/dev/sda``, a
``<hostdev>``, an ``<emulator>/bin/sh</emulator>``, ``<qemu:commandline>`` would all hand the
host over. So the text is never passed through:

- it is parsed with ``defusedxml`` with DTDs forbidden, so external entities (XXE) and entity
  expansion (billion laughs) are refused before anything is read;
- a fresh tree is built by walking ``_schema``: an allow-list of elements, attributes and the
  values each may take. What the host chooses at run time (device aliases, a domain's ``id``,
  graphics listen addresses and ports, tap device names) is left out silently; anything else
  the list does not name is refused, and the refusal names the element
  (``<devices/disk[2]/source> file '/etc/shadow' is outside the image store``);
- paths (disks, kernel, initrd, loader) must lie inside the image store, resolved textually
  (``..``) everywhere and also through symlinks on the host itself (``on_host``); relative
  paths are taken inside the store.

The group leader runs it on every submission (``snooze.virtualcluster``) and stores the rebuilt
XML; each local controller runs it again before defining a domain, because an order or a
migrated domain may carry XML that never went through a leader. What is allowed is set by the
operator in ``[templates]`` (``snooze.config.TemplateSettings``).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import defusedxml
import defusedxml.ElementTree as DET

from snooze.config import ConfigError, TemplateSettings
from snooze.ids import ID_RULE, is_valid_id

__all__ = [
    "ALLOWED_DEVICE_KINDS",
    "MAX_MEMORY_KIB",
    "MAX_VCPUS",
    "MAX_XML_CHARS",
    "NEVER_ALLOWED",
    "DomainPolicy",
    "PolicyViolation",
    "RebuiltDomain",
    "check_settings",
    "parse_xml",
    "rebuild_domain",
]

MAX_XML_CHARS = 256 * 1024
MAX_VCPUS = 1024
MAX_MEMORY_KIB = 16 * 1024**3  # 16 TiB
MIN_MEMORY_KIB = 1024
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"

# KiB per unit, as libvirt reads them (case-insensitive).
_MEMORY_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
                 "mb": 1e6 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1e9 / 1024, "t": 1024**3, "tib": 1024**3,
                 "tb": 1e12 / 1024}

# Device kinds an operator may allow in [templates] devices (each has its own allow-list below).
ALLOWED_DEVICE_KINDS = ("disk", "controller", "interface", "serial", "console", "channel", "input", "graphics",
                        "video", "sound", "memballoon", "rng", "watchdog")

# Elements refused whatever the operator allows, with the reason users are told.
NEVER_ALLOWED = {
    "hostdev": "host devices are never passed to a guest",
    "filesystem": "host directories are never shared with a guest",
    "seclabel": "security labels are the host's, a template may not override them",
    "smartcard": "host smartcards are never passed to a guest",
    "redirdev": "USB redirection opens host channels",
    "tpm": "host TPMs are never passed to a guest",
    "shmem": "host shared memory is never mapped into a guest",
    "parallel": "parallel ports are not allowed",
    "hub": "USB hubs are not allowed",
    "lease": "lock-manager leases name host paths",
    "nvram": "nvram devices are not allowed",
    "panic": "panic devices are not allowed",
    "vsock": "host vsock channels are not allowed",
    "iommu": "IOMMU devices are not allowed",
    "memory": "memory hot-plug devices are not allowed",
    "audio": "host audio back ends are not allowed",
    "crypto": "host crypto back ends are not allowed",
    "script": "interface scripts would run on the host",
    "backend": "host back-end paths are not allowed",
    "log": "chardev log files would be written on the host",
    "memoryBacking": "memory backing (host hugepages, files) is the operator's choice",
    "cputune": "CPU tuning and pinning are the operator's choice",
    "numatune": "NUMA tuning is the operator's choice",
    "blkiotune": "block I/O tuning is the operator's choice",
    "memtune": "memory tuning is the operator's choice",
    "resource": "resource partitions are the operator's choice",
    "sysinfo": "SMBIOS host information is not allowed",
    "smbios": "SMBIOS host information is not allowed",
    "idmap": "id maps are not allowed",
    "keywrap": "key wrapping is not allowed",
    "launchSecurity": "launch security is the operator's choice",
    "maxMemory": "memory hot-plug is not allowed",
    "iothreads": "I/O threads are the operator's choice",
    "auth": "disk credentials are not allowed",
    "encryption": "disk encryption secrets are not allowed",
    "config": "host configuration files are not allowed",
    "initarg": "container init is not allowed",
    "init": "container init is not allowed",
}


class PolicyViolation(ValueError):
    """A domain XML the policy refuses (or that does not parse); ``element`` names where."""

    def __init__(self, message: str, element: str = "domain") -> None:
        super().__init__(message)
        self.element = element


@dataclass(frozen=True)
class DomainPolicy:
    """What a template may contain: ``[templates]`` (``snooze.config.TemplateSettings``), whose
    defaults ``DomainPolicy.default()`` gives."""

    image_directory: str
    domain_types: frozenset[str]
    devices: frozenset[str]
    emulators: frozenset[str]
    bridges: frozenset[str]
    networks: frozenset[str]
    block_devices: tuple[str, ...] = ()
    network_disks: bool = False
    firmware_directories: tuple[str, ...] = ()
    #: The bridge of generated domains (``[templates] default_bridge``); "" = none.
    default_bridge: str = ""

    @classmethod
    def from_settings(cls, s: TemplateSettings) -> DomainPolicy:
        check_settings(s)
        return cls(
            image_directory=s.image_directory, domain_types=frozenset(s.domain_types), devices=frozenset(s.devices),
            emulators=frozenset(s.emulators), bridges=frozenset(s.bridges), networks=frozenset(s.networks),
            block_devices=tuple(s.block_devices), network_disks=bool(s.network_disks),
            firmware_directories=tuple(s.firmware_directories), default_bridge=s.default_bridge,
        )

    @classmethod
    def default(cls) -> DomainPolicy:
        return cls.from_settings(TemplateSettings())


def check_settings(s: TemplateSettings) -> None:
    """ConfigError naming the option when ``[templates]`` cannot make a safe policy."""
    if not isinstance(s.image_directory, str) or not s.image_directory.startswith("/"):
        raise ConfigError("[templates] image_directory must be an absolute path")
    for name in ("domain_types", "devices", "emulators", "bridges", "networks", "block_devices", "firmware_directories"):
        if not all(isinstance(x, str) and x for x in getattr(s, name)):
            raise ConfigError(f"[templates] {name} must be a list of non-empty strings")
    for kind in s.devices:
        if kind in NEVER_ALLOWED:
            raise ConfigError(f"[templates] devices: {kind!r} is never allowed ({NEVER_ALLOWED[kind]})")
        if kind not in ALLOWED_DEVICE_KINDS:
            raise ConfigError(f"[templates] devices: unknown device kind {kind!r} (known: {', '.join(ALLOWED_DEVICE_KINDS)})")
    for name in ("emulators", "block_devices", "firmware_directories"):
        for path in getattr(s, name):
            if not path.startswith("/") or posixpath.normpath(path) in ("/", "//"):
                raise ConfigError(f"[templates] {name}: {path!r} must be an absolute path other than /")
    if s.default_bridge and s.default_bridge not in s.bridges:
        raise ConfigError(
            f"[templates] default_bridge = {s.default_bridge!r} is not one of [templates] bridges "
            f"({', '.join(s.bridges) or 'none'}): set it to the bridge generated VMs join, or \"\" for none")


@dataclass(frozen=True)
class RebuiltDomain:
    """The rebuilt domain: its XML text, and what placement needs from it."""

    xml: str
    name: str
    vcpus: int
    memory_kib: int
    root: ET.Element = field(compare=False, repr=False)


# -- parsing ----------------------------------------------------------------------------------
def parse_xml(text: Any) -> ET.Element:
    """The root of ``text`` parsed safely; PolicyViolation for anything else (no DTD at all, so
    no external entity is fetched and no entity is expanded)."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyViolation("expected domain XML text")
    if len(text) > MAX_XML_CHARS:
        raise PolicyViolation(f"domain XML is longer than {MAX_XML_CHARS} characters")
    try:
        data = text.strip().encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PolicyViolation("domain XML is not valid Unicode (lone surrogate)") from exc
    try:
        root: ET.Element = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden as exc:
        raise PolicyViolation("a DOCTYPE (and so any entity, external or expanding) is not allowed in domain XML") from exc
    except defusedxml.EntitiesForbidden as exc:
        raise PolicyViolation("entity declarations are not allowed in domain XML") from exc
    except defusedxml.ExternalReferenceForbidden as exc:
        raise PolicyViolation("external references are not allowed in domain XML") from exc
    except ET.ParseError as exc:
        raise PolicyViolation(f"domain XML does not parse: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise PolicyViolation(f"domain XML does not parse: {exc}") from exc
    return root


# -- value checks -----------------------------------------------------------------------------
class _Refused(Exception):
    """A value the schema refuses; the walker adds where."""


Check = Callable[[str], str]


def _show(value: str) -> str:
    shown = ascii(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _enum(*values: str) -> Check:
    allowed = frozenset(values)

    def check(v: str) -> str:
        if v not in allowed:
            raise _Refused(f"{_show(v)} is not one of {', '.join(sorted(allowed))}")
        return v

    return check


def _regex(pattern: str, what: str) -> Check:
    rx = re.compile(pattern)

    def check(v: str) -> str:
        if rx.fullmatch(v) is None:
            raise _Refused(f"{_show(v)} is not {what}")
        return v

    return check


def _uint(maximum: int = 2**32 - 1) -> Check:
    def check(v: str) -> str:
        s = v.strip()
        # ASCII digits only: int() would also take '1_000', '١٢' and ' +1'.
        if re.fullmatch(r"[0-9]{1,20}", s) is None or int(s) > maximum:
            raise _Refused(f"{_show(v)} is not a whole number between 0 and {maximum}")
        return str(int(s))

    return check


def _text(maximum: int) -> Check:
    def check(v: str) -> str:
        if len(v) > maximum or any(ord(c) < 32 and c not in "\t\n" for c in v):
            raise _Refused(f"text longer than {maximum} characters or with control characters")
        return v

    return check


NAME = _regex(r"[A-Za-z0-9_.:+-]{1,64}", "a name (letters, digits, '_', '.', ':', '+', '-')")
NUM = _regex(r"0x[0-9a-fA-F]{1,8}|[0-9]{1,10}(\.[0-9]{1,4})?", "a decimal or hexadecimal number")
YESNO = _enum("yes", "no")
ONOFF = _enum("on", "off")
UINT = _uint()


def _name_check(v: str) -> str:
    if not is_valid_id(v.strip()):
        raise _Refused(f"{_show(v)} is not a valid name ({ID_RULE})")
    return v.strip()


# -- the schema -------------------------------------------------------------------------------
@dataclass(frozen=True)
class El:
    """What one element may hold. ``drop``: attributes and children the host chooses at run
    time, left out silently. ``hook``: a rule across attributes, run on (original, rebuilt)
    before the children are copied."""

    attrs: Mapping[str, Check] = field(default_factory=dict)
    children: Mapping[str, El] = field(default_factory=dict)
    text: Check | None = None
    many: bool = False
    drop: frozenset[str] = frozenset()
    hook: Callable[[ET.Element, ET.Element], None] | None = None


_ADDRESS = El(attrs={k: _regex(r"[0-9a-fA-Fx.]{1,16}", "an address number") for k in (
    "domain", "bus", "slot", "function", "controller", "target", "unit", "port", "iobase", "irq", "reg", "cssid",
    "ssid", "devno")} | {"type": _enum("pci", "drive", "virtio-serial", "ccid", "usb", "isa", "virtio-mmio", "ccw",
                                        "spapr-vio", "unassigned"), "multifunction": ONOFF})


def _device(attrs: Mapping[str, Check] | None = None, children: Mapping[str, El] | None = None, *,
            drop: frozenset[str] = frozenset(), hook: Callable[[ET.Element, ET.Element], None] | None = None) -> El:
    """A device: repeatable, may have an address, and its alias is the host's."""
    return El(attrs=dict(attrs or {}), children={"address": _ADDRESS, **(children or {})}, many=True,
              drop=drop | {"alias"}, hook=hook)


class _Paths:
    """Path checks for one policy: inside the image store (or the given extra roots)."""

    def __init__(self, policy: DomainPolicy, on_host: bool) -> None:
        self.policy = policy
        self.on_host = on_host

    def inside(self, roots: tuple[str, ...], what: str) -> Check:
        def check(v: str) -> str:
            path = v.strip()
            if not path or any(ord(c) < 32 or c == "\x7f" for c in path):
                raise _Refused(f"{_show(v)} is not a usable path")
            store = self.policy.image_directory
            if not path.startswith("/"):
                rel = posixpath.normpath(path)
                if rel == ".." or rel.startswith("../") or rel == ".":
                    raise _Refused(f"{_show(v)} leaves the image store ({store})")
                if not self.on_host:
                    # The local controller resolves it in its own store.
                    return rel
                path = posixpath.join(store, rel)
            full = "/" + posixpath.normpath(path).lstrip("/")
            for root in (store, *roots):
                base = "/" + posixpath.normpath(root).lstrip("/")
                if self.on_host:
                    # Symlinks inside the store must not lead out of it.
                    resolved, base_resolved = os.path.realpath(full), os.path.realpath(base)
                else:
                    resolved, base_resolved = full, base
                if resolved.startswith(base_resolved.rstrip("/") + "/"):
                    # On the host, the resolved path: a symlink changed after this check
                    # cannot redirect the hypervisor.
                    return resolved
            places = ", ".join((store, *roots))
            raise _Refused(f"{_show(v)} is outside the {what} ({places})")

        return check


def _refuse_unless(allowed: bool, message: str) -> None:
    if not allowed:
        raise _Refused(message)


def _schema(policy: DomainPolicy, on_host: bool, test_driver: bool) -> El:
    paths = _Paths(policy, on_host)
    in_store = paths.inside((), "image store")
    firmware = paths.inside(policy.firmware_directories, "image store or firmware directories")
    block_dev = paths.inside(policy.block_devices, "allowed block devices") if policy.block_devices else None

    def block_dev_check(v: str) -> str:
        if block_dev is None:
            raise _Refused("block devices are not allowed ([templates] block_devices is empty)")
        out = block_dev(v)
        if out.startswith(policy.image_directory.rstrip("/") + "/"):
            raise _Refused(f"{_show(v)} is in the image store: use a disk of type 'file'")
        return out

    def disk_hook(src: ET.Element, new: ET.Element) -> None:
        kind = src.get("type", "file")
        source = src.find("source")
        if kind == "file":
            if source is not None and (source.get("dev") or source.get("protocol") or source.find("host") is not None):
                raise _Refused("a disk of type 'file' names its image with <source file=...> only")
        elif kind == "block":
            _refuse_unless(bool(policy.block_devices), "disks of type 'block' are not allowed ([templates] block_devices is empty)")
            if source is not None and (source.get("file") or source.get("protocol")):
                raise _Refused("a disk of type 'block' names its device with <source dev=...> only")
        elif kind == "network":
            _refuse_unless(policy.network_disks, "disks of type 'network' are not allowed ([templates] network_disks = false)")
            if source is not None and (source.get("file") or source.get("dev")):
                raise _Refused("a disk of type 'network' names its image with <source protocol=... name=...> only")
        else:
            raise _Refused(f"disk type {_show(kind)} is not allowed (file"
                           + (", block" if policy.block_devices else "") + (", network" if policy.network_disks else "") + ")")

    def source_host_check(v: str) -> str:
        _refuse_unless(policy.network_disks, "network disk hosts are not allowed")
        return _regex(r"[A-Za-z0-9.:-]{1,253}", "a host name or address")(v)

    disk = _device(
        {"type": _enum("file", "block", "network"), "device": _enum("disk", "cdrom", "floppy")},
        {
            "driver": El(attrs={"name": _enum("qemu"), "type": _enum("raw", "qcow2"),
                                "cache": _enum("default", "none", "writethrough", "writeback", "directsync", "unsafe"),
                                "io": _enum("threads", "native", "io_uring"), "discard": _enum("ignore", "unmap"),
                                "detect_zeroes": _enum("off", "on", "unmap"),
                                "error_policy": _enum("stop", "report", "ignore", "enospace"),
                                "rerror_policy": _enum("stop", "report", "ignore"), "copy_on_read": ONOFF,
                                "queues": UINT}),
            "source": El(attrs={"file": in_store, "dev": block_dev_check,
                                "protocol": _enum("rbd", "iscsi", "nbd", "http", "https", "ftp", "ftps", "sheepdog",
                                                  "gluster"),
                                "name": _regex(r"[A-Za-z0-9_./:=-]{1,255}", "a volume name"),
                                "startupPolicy": _enum("mandatory", "requisite", "optional"), "index": UINT},
                         children={"host": El(attrs={"name": source_host_check, "port": _uint(65535),
                                                     "transport": _enum("tcp", "tls", "rdma")}, many=True)}),
            "target": El(attrs={"dev": _regex(r"(hd|sd|vd|xvd|fd)[a-z]{1,3}", "a guest disk name (vda, sdb, hdc...)"),
                                "bus": _enum("ide", "scsi", "virtio", "usb", "sata", "fdc", "sd"),
                                "tray": _enum("open", "closed"), "removable": ONOFF, "rotation_rate": UINT}),
            # An empty <backingStore/> says "no backing chain": keeping it stops probing.
            "backingStore": El(),
            "readonly": El(),
            "serial": El(text=_regex(r"[A-Za-z0-9_ .+-]{0,36}", "a disk serial")),
            "boot": El(attrs={"order": UINT}),
            "blockio": El(attrs={"logical_block_size": UINT, "physical_block_size": UINT}),
        },
        hook=disk_hook,
    )

    def interface_hook(src: ET.Element, new: ET.Element) -> None:
        kind = src.get("type")
        reasons = {
            "ethernet": "type 'ethernet' lets a template use host tap devices and scripts",
            "direct": "type 'direct' attaches to a host network card",
            "hostdev": "host devices are never passed to a guest",
            "user": "type 'user' lets the guest reach the host's own services",
            "vhostuser": "type 'vhostuser' names host sockets",
            "vdpa": "type 'vdpa' names host devices",
        }
        if kind in reasons:
            raise _Refused(reasons[kind])
        source = src.find("source")
        if kind == "bridge":
            bridge = source.get("bridge") if source is not None else None
            if bridge not in policy.bridges:
                raise _Refused(f"bridge {_show(str(bridge))} is not one of the allowed bridges "
                               f"({', '.join(sorted(policy.bridges)) or 'none'})")
            if source is not None and set(source.attrib) - {"bridge"}:
                raise _Refused("a bridge interface's <source> names the bridge only")
        elif kind == "network":
            network = source.get("network") if source is not None else None
            if network not in policy.networks:
                raise _Refused(f"network {_show(str(network))} is not one of the allowed networks "
                               f"({', '.join(sorted(policy.networks)) or 'none'})")
            if source is not None and set(source.attrib) - {"network", "portgroup"}:
                raise _Refused("a network interface's <source> names the network (and portgroup) only")
        else:
            raise _Refused(f"interface type {_show(str(kind))} is not allowed (bridge, network)")

    interface = _device(
        {"type": _enum("bridge", "network", "ethernet", "direct", "hostdev", "user", "vhostuser", "vdpa")},
        {
            "mac": El(attrs={"address": _regex(r"([0-9a-fA-F]{1,2}:){5}[0-9a-fA-F]{1,2}", "a MAC address")}),
            "source": El(attrs={"bridge": NAME, "network": NAME, "portgroup": NAME}),
            "model": El(attrs={"type": NAME}),
            "driver": El(attrs={"name": _enum("vhost", "qemu"), "queues": UINT}),
            "link": El(attrs={"state": _enum("up", "down")}),
            "mtu": El(attrs={"size": UINT}),
            "boot": El(attrs={"order": UINT}),
            "rom": El(attrs={"bar": ONOFF, "enabled": YESNO}),
            "bandwidth": El(children={d: El(attrs={k: UINT for k in ("average", "peak", "burst", "floor")})
                                      for d in ("inbound", "outbound")}),
        },
        # The tap device's name is the host's to choose.
        drop=frozenset({"target"}),
        hook=interface_hook,
    )

    def chardev(kind: str) -> El:
        types = ("pty", "null", "vc", "spicevmc") + (("unix",) if kind == "channel" else ())

        def hook(src: ET.Element, new: ET.Element) -> None:
            t = src.get("type", "pty")
            if t not in types:
                raise _Refused(f"{kind} type {_show(t)} is not allowed ({', '.join(types)}): it would open host files, "
                               "devices or sockets")

        target_attrs: dict[str, Check] = {"port": UINT}
        if kind == "channel":
            target_attrs = {"type": _enum("virtio"), "name": _regex(r"[A-Za-z0-9_.-]{1,64}", "a channel name")}
        elif kind == "console":
            target_attrs |= {"type": _enum("serial", "virtio")}
        else:
            target_attrs |= {"type": _enum("isa-serial", "usb-serial", "pci-serial")}
        children: dict[str, El] = {"target": El(attrs=target_attrs, children={"model": El(attrs={"name": NAME})})}
        return _device({"type": _enum(*types, "file", "dev", "pipe", "tcp", "udp", "unix", "stdio", "spiceport",
                                      "nmdm", "qemu-vdagent", "dbus")}, children, hook=hook)

    def graphics_hook(src: ET.Element, new: ET.Element) -> None:
        # Where and on which port a console listens is the host's choice (qemu.conf).
        new.set("autoport", "yes")

    devices: dict[str, El] = {
        "disk": disk,
        "interface": interface,
        "serial": chardev("serial"),
        "console": chardev("console"),
        "channel": chardev("channel"),
        "controller": _device(
            {"type": _enum("ide", "fdc", "scsi", "sata", "usb", "virtio-serial", "pci"), "index": UINT, "model": NAME,
             "ports": UINT, "vectors": UINT},
            {"driver": El(attrs={"queues": UINT, "cmd_per_lun": UINT, "max_sectors": UINT, "ioeventfd": ONOFF}),
             "model": El(attrs={"name": NAME}),
             "target": El(attrs={"chassisNr": UINT, "chassis": UINT, "port": NUM, "busNr": UINT, "index": UINT,
                                 "hotplug": ONOFF}),
             "master": El(attrs={"startport": UINT})}),
        "input": _device({"type": _enum("tablet", "mouse", "keyboard"), "bus": _enum("usb", "ps2", "virtio")}),
        "graphics": _device({"type": _enum("vnc", "spice"), "keymap": _regex(r"[A-Za-z-]{1,16}", "a keymap"),
                             "passwd": _text(64)},
                            drop=frozenset({"port", "tlsPort", "websocket", "listen", "autoport"}), hook=graphics_hook),
        "video": _device({}, {"model": El(attrs={"type": _enum("vga", "cirrus", "vmvga", "qxl", "virtio", "bochs", "ramfb",
                                                               "none"),
                                                 **{k: UINT for k in ("vram", "ram", "vgamem", "vram64", "heads")},
                                                 "primary": YESNO})}),
        "sound": _device({"model": _enum("ich6", "ich7", "ich9", "ac97", "es1370", "sb16", "pcspk", "usb")},
                         {"codec": El(attrs={"type": _enum("duplex", "micro", "output")}, many=True)}),
        "memballoon": _device({"model": _enum("virtio", "virtio-transitional", "virtio-non-transitional", "none"),
                               "autodeflate": ONOFF, "freePageReporting": ONOFF},
                              {"stats": El(attrs={"period": UINT})}),
        "rng": _device({"model": _enum("virtio", "virtio-transitional", "virtio-non-transitional")},
                       {"rate": El(attrs={"bytes": UINT, "period": UINT}),
                        "backend": El(attrs={"model": _enum("random", "builtin")},
                                      text=_enum("/dev/random", "/dev/urandom"))}),
        "watchdog": _device({"model": _enum("i6300esb", "ib700", "diag288", "itco"),
                             "action": _enum("reset", "shutdown", "poweroff", "pause", "none", "inject-nmi")}),
    }

    def emulator_check(v: str) -> str:
        if v.strip() not in policy.emulators:
            raise _Refused(f"{_show(v)} is not one of the allowed emulators ({', '.join(sorted(policy.emulators)) or 'none'})")
        return v.strip()

    allowed_devices: dict[str, El] = {k: v for k, v in devices.items() if k in policy.devices}
    allowed_devices["emulator"] = El(text=emulator_check)

    memory = El(attrs={"unit": _regex(r"[A-Za-z]{1,5}", "a unit")}, text=_uint(2**53))
    domain_types = set(policy.domain_types) | ({"test"} if test_driver else set())
    on_event = El(text=_enum("destroy", "restart", "preserve", "rename-restart"))
    return El(
        attrs={"type": _enum(*sorted(domain_types))},
        drop=frozenset({"id"}),
        children={
            "name": El(text=_name_check),
            "uuid": El(text=_regex(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
                                   "a UUID")),
            "title": El(text=_text(256)),
            "description": El(text=_text(4096)),
            "memory": memory,
            "currentMemory": memory,
            "vcpu": El(attrs={"placement": _enum("static", "auto"), "current": _uint(MAX_VCPUS)}, text=_uint(MAX_VCPUS)),
            "os": El(attrs={"firmware": _enum("bios", "efi")}, children={
                "type": El(attrs={"arch": _regex(r"[a-z0-9_]{1,16}", "an architecture"),
                                  "machine": _regex(r"[A-Za-z0-9_.-]{1,64}", "a machine type")},
                           text=_regex(r"[a-z]{1,16}", "an OS type")),
                "boot": El(attrs={"dev": _enum("hd", "cdrom", "network", "fd")}, many=True),
                "bootmenu": El(attrs={"enable": YESNO, "timeout": UINT}),
                "bios": El(attrs={"useserial": YESNO, "rebootTimeout": _regex(r"-?[0-9]{1,6}", "a number")}),
                "kernel": El(text=in_store),
                "initrd": El(text=in_store),
                "cmdline": El(text=_text(4096)),
                "loader": El(attrs={"readonly": YESNO, "type": _enum("rom", "pflash"), "secure": YESNO}, text=firmware),
                "nvram": El(attrs={"template": firmware}, text=in_store),
            }),
            "features": El(children={
                **{k: El() for k in ("acpi", "pae", "privnet", "viridian")},
                "apic": El(attrs={"eoi": ONOFF}),
                **{k: El(attrs={"state": ONOFF}) for k in ("hap", "pmu", "vmport", "smm")},
                "kvm": El(children={"hidden": El(attrs={"state": ONOFF})}),
                "ioapic": El(attrs={"driver": _enum("kvm", "qemu")}),
            }),
            "cpu": El(attrs={"mode": _enum("custom", "host-model", "host-passthrough", "maximum"),
                             "match": _enum("minimum", "exact", "strict"), "check": _enum("none", "partial", "full"),
                             "migratable": ONOFF},
                      children={
                          "model": El(attrs={"fallback": _enum("allow", "forbid")}, text=NAME),
                          "vendor": El(text=NAME),
                          "topology": El(attrs={k: _uint(MAX_VCPUS) for k in ("sockets", "dies", "cores", "threads")}),
                          "feature": El(attrs={"policy": _enum("force", "require", "optional", "disable", "forbid"),
                                               "name": NAME}, many=True),
                          "cache": El(attrs={"level": UINT, "mode": _enum("emulate", "passthrough", "disable")}),
                      }),
            "clock": El(attrs={"offset": _enum("utc", "localtime", "variable"),
                               "adjustment": _regex(r"-?[0-9]{1,12}|reset", "a number of seconds"),
                               "basis": _enum("utc", "localtime")},
                        children={"timer": El(attrs={
                            "name": _enum("platform", "hpet", "kvmclock", "pit", "rtc", "tsc", "hypervclock"),
                            "present": YESNO, "tickpolicy": _enum("delay", "catchup", "merge", "discard"),
                            "track": _enum("boot", "guest", "wall", "realtime"), "frequency": UINT,
                            "mode": _enum("auto", "native", "emulate", "paravirt", "smpsafe")}, many=True)}),
            "on_poweroff": on_event,
            "on_reboot": on_event,
            "on_crash": on_event,
            "pm": El(children={k: El(attrs={"enabled": YESNO}) for k in ("suspend-to-mem", "suspend-to-disk")}),
            "devices": El(children=allowed_devices),
        },
    )


_cached_schema = functools.lru_cache(maxsize=16)(_schema)


# -- the walk ---------------------------------------------------------------------------------
def _tag(tag: str) -> str:
    """An element's name as users write it (qemu:commandline, not {URI}commandline)."""
    return "qemu:" + tag[len(QEMU_NS):] if tag.startswith(QEMU_NS) else tag


def _refusal_reason(tag: str, parent_path: str, policy: DomainPolicy) -> str:
    if tag.startswith(QEMU_NS):
        return "QEMU pass-through (the qemu: namespace, e.g. qemu:commandline) is never allowed"
    if tag.startswith("{"):
        return "elements from other XML namespaces are not allowed"
    if tag in NEVER_ALLOWED:
        return NEVER_ALLOWED[tag]
    if parent_path == "devices" and tag in ALLOWED_DEVICE_KINDS:
        return f"<{tag}> devices are not allowed here ([templates] devices = {sorted(policy.devices)})"
    return "is not allowed by the template policy"


def _copy(src: ET.Element, rule: El, path: str, policy: DomainPolicy) -> ET.Element:
    new = ET.Element(src.tag)
    for attr, value in src.attrib.items():
        if attr.startswith("{"):
            raise PolicyViolation(f"<{path}> attribute {_show(attr)}: attributes from other XML namespaces are not allowed", path)
        if attr in rule.drop:
            continue
        check = rule.attrs.get(attr)
        if check is None:
            raise PolicyViolation(f"<{path}> attribute {attr!r} is not allowed by the template policy", path)
        try:
            new.set(attr, check(value))
        except _Refused as exc:
            raise PolicyViolation(f"<{path}> {attr}: {exc}", path) from None
    text = (src.text or "").strip()
    if rule.text is not None and text:
        try:
            new.text = rule.text(text)
        except _Refused as exc:
            raise PolicyViolation(f"<{path}>: {exc}", path) from None
    # Rules across attributes first: a refused type is named before its children.
    if rule.hook is not None:
        try:
            rule.hook(src, new)
        except _Refused as exc:
            raise PolicyViolation(f"<{path}>: {exc}", path) from None
    seen: dict[str, int] = {}
    for child in src:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions are not kept
        tag = child.tag
        seen[tag] = seen.get(tag, 0) + 1
        child_path = f"{path}/{_tag(tag)}" if path != "domain" else _tag(tag)
        child_path += f"[{seen[tag]}]" if seen[tag] > 1 else ""
        if tag in rule.drop:
            continue
        child_rule = rule.children.get(tag)
        if child_rule is None:
            raise PolicyViolation(f"<{child_path}> {_refusal_reason(tag, path, policy)}", child_path)
        if seen[tag] > 1 and not child_rule.many:
            raise PolicyViolation(f"<{child_path}>: only one <{tag}> is allowed here", child_path)
        new.append(_copy(child, child_rule, child_path, policy))
    return new


def _memory_kib(elem: ET.Element, path: str) -> int:
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS:
        raise PolicyViolation(f"<{path}> unit: unknown memory unit {_show(elem.get('unit') or '')}", path)
    value = int(elem.text or "0") * _MEMORY_UNITS[unit]
    if not MIN_MEMORY_KIB <= value <= MAX_MEMORY_KIB:
        raise PolicyViolation(f"<{path}>: must be between {MIN_MEMORY_KIB} KiB and {MAX_MEMORY_KIB} KiB", path)
    return int(value)


def rebuild_domain(text: str, policy: DomainPolicy | None = None, *, on_host: bool = False,
                   test_driver: bool = False) -> RebuiltDomain:
    """The domain XML rebuilt from what ``policy`` allows, or PolicyViolation naming the element.

    ``on_host``: run by a local controller, which resolves relative paths in its image store
    and follows symlinks; ``test_driver``: the host is libvirt's test driver (type 'test')."""
    policy = policy or DomainPolicy.default()
    root = parse_xml(text)
    if root.tag != "domain":
        raise PolicyViolation(f"the root element must be <domain>, got <{_show(root.tag)}>")
    new = _copy(root, _cached_schema(policy, on_host, test_driver), "domain", policy)
    name = new.findtext("name")
    if not name:
        raise PolicyViolation("<name> is missing", "name")
    mem = new.find("memory")
    if mem is None:
        raise PolicyViolation("<memory> is missing", "memory")
    memory = _memory_kib(mem, "memory")
    current = new.find("currentMemory")
    if current is not None and _memory_kib(current, "currentMemory") > memory:
        raise PolicyViolation("<currentMemory>: must not exceed <memory>", "currentMemory")
    vcpu = new.find("vcpu")
    vcpus = int(vcpu.text or "0") if vcpu is not None else 1
    if not 1 <= vcpus <= MAX_VCPUS:
        raise PolicyViolation(f"<vcpu>: must be between 1 and {MAX_VCPUS}", "vcpu")
    if vcpu is not None and int(vcpu.get("current", vcpus)) > vcpus:
        raise PolicyViolation("<vcpu> current: must not exceed <vcpu>", "vcpu")
    return RebuiltDomain(ET.tostring(new, encoding="unicode"), name, vcpus, memory, new)
