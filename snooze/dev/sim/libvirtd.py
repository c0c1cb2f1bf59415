"""Private libvirtd daemons that stand in for separate hypervisor hosts on one machine.

Live migration needs two libvirt daemons that believe they are different hosts. Each daemon
started here runs in its own private mount namespace, where its own state directory is
bind-mounted over ``/run``, ``/etc/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt`` and
``/var/log/libvirt``; it has its own ``host_uuid``, its own Unix socket and its own range of
migration ports, and QEMU runs as root with no cgroups, no security driver and no virtlogd.
Nothing listens on TCP except the QEMU migration streams, which are bound to 127.0.0.1 by the
caller (see ``localcontroller.hypervisor.migration``).

With ``fabric=True`` (or ``networks`` made by the caller) each host also lives in its own
network namespace (``snooze.dev.netns``): the daemon is started with ``ip netns exec NS``, so a
guest's tap device is born in that namespace, and the hosts are joined by a bridge in a fabric
namespace, so migration streams go to each host's fabric address (``migration_uri``
``tcp://ADDRESS``). With ``vm_gateway`` (e.g. ``192.168.122.1/24``) every host namespace gets a
bridge ``br-vm`` holding that address: guests plugged into it are reached with
``ip netns exec NS …`` from their host's namespace only (equal subnets in separate namespaces
never meet). ``private_dirs`` adds directories each host sees as its own (e.g. ``/var/lib/snooze``,
so local controllers entering the host's mount namespace keep their caches and overlays at the
same paths on every host, as separate machines would).

A machine with ``libvirt-daemon`` but not ``libvirt-daemon-system`` has none of the ``/var``
directories above (and ``/etc/libvirt`` comes only with ``libvirt-clients``). Where a mount
point is missing, the namespace first covers its nearest existing parent with an overlay whose
writable layer is in the host's state directory and already holds the missing directory, so
the bind mount has somewhere to go and nothing is ever created outside the state directory.

Needs root, ``unshare``, overlayfs in the kernel (only where a mount point is missing) and
the packages that ``scripts/install-qemu.sh`` installs.

Run ``python -m snooze.dev.sim.libvirtd --state-dir DIR --count 2`` to keep a cluster up by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import escape

import libvirt

from snooze.dev import netns as _netns

__all__ = [
    "DEFAULT_BASE_MIGRATION_PORT",
    "HostNetwork",
    "LibvirtdCluster",
    "LibvirtdError",
    "LibvirtdHost",
    "VM_BRIDGE",
    "MIGRATION_PORTS_PER_HOST",
    "QemuNotInstalled",
    "kvm_usable",
    "missing_components",
    "default_capabilities_cache",
    "stop_recorded",
    "tiny_domain_xml",
]

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU = "/usr/bin/qemu-system-x86_64"
QEMU_DRIVER = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so"

# Above the kernel's default ephemeral range would collide with outgoing connections; this is
# inside it but well away from libvirt's own default (49152-49215), which a system libvirtd uses.
DEFAULT_BASE_MIGRATION_PORT = 49152 + 1024
MIGRATION_PORTS_PER_HOST = 16

# Directories the daemon sees as its own: (path inside the namespace, sub-directory of the
# host's state directory). /var/run is a symlink to /run on Debian.
_PRIVATE_DIRS = (
    ("/run", "run"),
    ("/etc/libvirt", "etc/libvirt"),
    ("/var/lib/libvirt", "var/lib/libvirt"),
    ("/var/cache/libvirt", "var/cache/libvirt"),
    ("/var/log/libvirt", "var/log/libvirt"),
)

# A fresh daemon probes every QEMU binary (about 7 s each on two CPUs) before it answers; the
# result is cached here, keyed by libvirt on the binaries' ctime, libvirt's and the kernel's
# versions, so seeding it from an earlier run is safe.
_CAPABILITIES_SUBDIR = "var/cache/libvirt/qemu/capabilities"

# Linux's sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107

_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12

# Debian's qemu driver resolves its compiled-in default user before it reads qemu.conf, so
# the user must exist even though qemu.conf says root. libvirt-daemon-system would create it
# (and pull in polkit, firewalld or iptables, and init scripts); instead the namespace gets a
# copy of passwd/group that has it.
_QEMU_USER = "libvirt-qemu"
_QEMU_GROUPS = ("libvirt-qemu", "kvm")

#: The bridge guests are plugged into in each host's network namespace (with ``vm_gateway``).
VM_BRIDGE = "br-vm"


class LibvirtdError(RuntimeError):
    """A private libvirtd could not be started or stopped."""


class QemuNotInstalled(LibvirtdError):
    """libvirtd, QEMU or unshare is missing: run scripts/install-qemu.sh."""


@dataclass(frozen=True)
class LibvirtdHost:
    """One running private daemon, as a client sees it."""

    name: str
    uri: str
    """``qemu+unix:///system?socket=…``: libvirt refuses ``localhost`` URIs as the same host."""
    pid: int
    state_dir: Path
    migration_uri: str
    """What to pass as ``VIR_MIGRATE_PARAM_URI`` when migrating *to* this host; without a port,
    so the daemon picks one from its own range."""
    host_uuid: str
    migration_ports: range
    netns: str | None = None
    """The network namespace the daemon (and so every guest's tap) lives in, if any."""
    address: str = "127.0.0.1"
    """Its address on the fabric (where migration streams to it go), or 127.0.0.1."""

    @property
    def log_file(self) -> Path:
        return self.state_dir / "var/log/libvirt/libvirtd.log"

    def enter_argv(self) -> list[str]:
        """Prefix that runs a command inside this host: its mount namespace (its private
        /run, /var/lib/libvirt, … and ``private_dirs``) and its network namespace, if any."""
        argv = ["nsenter", f"--target={self.pid}", "--mount"]
        if self.netns:
            argv.append("--net")
        return [*argv, "--"]


@dataclass(frozen=True)
class HostNetwork:
    """A network namespace a host is started in (made by the caller) and its fabric address."""

    netns: str
    address: str


def missing_components() -> list[str]:
    """What is missing on this machine to run private libvirtd hosts (empty when all is there)."""
    missing = [path for path in (LIBVIRTD, QEMU, QEMU_DRIVER) if not os.access(path, os.R_OK)]
    missing += [name for name in ("unshare", "mount") if shutil.which(name) is None]
    return missing


@dataclass(frozen=True)
class _Overlay:
    """An overlay inside the namespace over ``parent`` (an existing directory), whose upper
    layer ``<state>/<layer>/upper`` holds the ``children`` that are missing on this machine."""

    parent: str
    layer: str
    children: tuple[str, ...]


def _overlays(inside_paths: list[str]) -> list[_Overlay]:
    """The overlays that give every missing mount point in ``inside_paths`` a directory.

    Missing paths under the same nearest existing parent share one overlay; a mount point is
    never created on the machine itself.
    """
    by_parent: dict[str, list[str]] = {}
    for inside in inside_paths:
        path = Path(inside)
        if path.is_dir():
            continue
        if path.exists() or path.is_symlink():
            raise LibvirtdError(f"{inside} exists but is not a directory: cannot mount over it")
        parent = path.parent
        while not parent.is_dir():
            if parent.exists() or parent.is_symlink():
                raise LibvirtdError(f"{parent} exists but is not a directory")
            parent = parent.parent
        if parent == Path("/"):
            raise LibvirtdError(f"{inside}: refusing to cover / with an overlay")
        by_parent.setdefault(str(parent), []).append(str(path.relative_to(parent)))
    parents = sorted(by_parent, key=lambda p: (p.count("/"), p))
    for index, outer in enumerate(parents):
        for inner in parents[index + 1:]:
            if Path(outer) in Path(inner).parents:
                # The inner overlay would need the outer one mounted first; no such case today.
                raise LibvirtdError(f"nested overlays {outer} and {inner} are not supported")
    return [
        _Overlay(parent_dir, f"overlay/{index}", tuple(by_parent[parent_dir]))
        for index, parent_dir in enumerate(parents)
    ]


def kvm_usable() -> bool:
    """True when /dev/kvm can be opened and speaks the stable KVM API."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == _KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def tiny_domain_xml(name: str, memory_kib: int = 32768, kvm: bool | None = None) -> str:
    """A diskless, NIC-less x86 guest that idles in SeaBIOS ("no bootable device").

    It starts in well under a second and migrates quickly, because almost all of its memory is
    zero pages. ``kvm=None`` uses KVM when /dev/kvm works and TCG (``type='qemu'``) otherwise.
    """
    if kvm is None:
        kvm = kvm_usable()
    domain_type = "kvm" if kvm else "qemu"
    return f"""<domain type='{domain_type}'>
  <name>{escape(name)}</name>
  <memory unit='KiB'>{int(memory_kib)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _libvirtd_conf(host_uuid: str) -> str:
    # No TCP or TLS listener: clients (and peer-to-peer migration) use the Unix socket.
    return f"""listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
host_uuid = "{host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


def _qemu_conf(ports: range) -> str:
    # migration_address / migration_host cannot be 127.0.0.1 ("must not be the address of the
    # local machine"): the loopback listen address comes with each migration instead.
    return f"""user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
vnc_listen = "127.0.0.1"
spice_listen = "127.0.0.1"
migration_port_min = {ports.start}
migration_port_max = {ports.stop - 1}
"""


# Run by `unshare --mount --propagation private`, so none of these mounts is seen outside;
# they vanish with the namespace when its last process exits. `exec` keeps the PID.
# Steps, in order: `overlay PARENT LAYER` (lower = PARENT itself, upper and work dirs in the
# state dir), then `bind INSIDE SUB` (the state dir's SUB over INSIDE), then `--` COMMAND.
_NAMESPACE_SCRIPT = """set -eu
state=$1; shift
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    case $1 in
    overlay)
        mount -t overlay overlay \\
            -o "lowerdir=$2,upperdir=$state/$3/upper,workdir=$state/$3/work" "$2"
        shift 3 ;;
    bind)
        mount --bind "$state/$3" "$2"
        shift 3 ;;
    *)
        echo "namespace: unknown step $1" >&2
        exit 2 ;;
    esac
done
shift
exec "$@"
"""

# Characters mount(8) would read as separators in overlay options.
_OVERLAY_UNSAFE = frozenset(",:\\")


def _nss_files(directory: Path) -> list[tuple[str, str]]:
    """passwd/group copies with the qemu driver's default user, when the system lacks it."""
    import grp
    import pwd

    mounts: list[tuple[str, str]] = []
    try:
        pwd.getpwnam(_QEMU_USER)
    except KeyError:
        text = Path("/etc/passwd").read_text()
        if not text.endswith("\n"):
            text += "\n"
        text += f"{_QEMU_USER}:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
        (directory / "passwd").write_text(text)
        mounts.append(("/etc/passwd", "nss/passwd"))
    missing_groups = []
    for gid, group in enumerate(_QEMU_GROUPS, start=64055):
        try:
            grp.getgrnam(group)
        except KeyError:
            missing_groups.append(f"{group}:x:{gid}:\n")
    if missing_groups:
        text = Path("/etc/group").read_text()
        if not text.endswith("\n"):
            text += "\n"
        (directory / "group").write_text(text + "".join(missing_groups))
        mounts.append(("/etc/group", "nss/group"))
    return mounts


def default_capabilities_cache() -> Path:
    """Where probed QEMU capabilities are kept between runs (``$XDG_CACHE_HOME/snooze/…``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snooze" / "libvirt-qemu-capabilities"


def _copy_xml_files(source: Path, target: Path) -> None:
    """Best-effort copy of capability files; libvirt re-probes any that are stale."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.xml"):
            shutil.copyfile(path, target / path.name)
    except OSError:
        pass


def _mount_namespace(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pids_in_namespace(namespace: tuple[int, int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mount_namespace(int(entry)) == namespace:
            pids.append(int(entry))
    return pids


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class _Daemon:
    """Book-keeping for one daemon this process started."""

    def __init__(self, host: LibvirtdHost, process: subprocess.Popen[bytes]) -> None:
        self.host = host
        self.process = process
        self.namespace: tuple[int, int] | None = None


class LibvirtdCluster:
    """N private libvirtd hosts on this machine; a context manager that starts and stops them.

    ``stop()`` destroys the domains still running, stops the daemons it started and kills any
    process left in their mount namespaces (QEMU daemonises away from libvirtd, so it is not a
    child), then removes the hosts' state unless ``keep_files``.
    """

    def __init__(
        self,
        state_dir: Path,
        count: int = 2,
        base_migration_port: int = DEFAULT_BASE_MIGRATION_PORT,
        *,
        keep_files: bool = False,
        capabilities_cache: Path | None = None,
        fabric: bool = False,
        networks: Sequence[HostNetwork] | None = None,
        vm_gateway: str | None = None,
        private_dirs: Sequence[str] = (),
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        if fabric and networks is not None:
            raise ValueError("fabric (namespaces made here) or networks (made by the caller), not both")
        if networks is not None and len(networks) != count:
            raise ValueError(f"{len(networks)} networks for {count} hosts")
        if vm_gateway is not None and not (fabric or networks):
            raise ValueError("vm_gateway needs the hosts in network namespaces (fabric or networks)")
        for inside in private_dirs:
            if not inside.startswith("/") or inside in ("/", "/usr", "/etc", "/tmp", "/proc", "/dev", "/sys"):
                raise ValueError(f"private dir {inside!r} must be an absolute path that is no system directory")
        last_port = base_migration_port + count * MIGRATION_PORTS_PER_HOST - 1
        if base_migration_port < 1024 or last_port > 65535:
            raise ValueError(f"migration ports {base_migration_port}-{last_port} out of range")
        self.state_dir = Path(state_dir).absolute()
        self.count = count
        self.base_migration_port = base_migration_port
        self.keep_files = keep_files
        self.capabilities_cache = (
            default_capabilities_cache() if capabilities_cache is None else capabilities_cache
        )
        self.vm_gateway = vm_gateway
        self.private_dirs = tuple(private_dirs)
        self.networks = list(networks) if networks is not None else None
        self.fabric: _netns.Fabric | None = (
            _netns.Fabric.for_state_dir(self.state_dir) if fabric else None
        )
        self._daemons: list[_Daemon] = []

    @property
    def hosts(self) -> list[LibvirtdHost]:
        return [daemon.host for daemon in self._daemons]

    def __enter__(self) -> LibvirtdCluster:
        if not self._daemons:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> list[LibvirtdHost]:
        """Start every daemon; return once each answers ``libvirt.open(uri)`` with its host UUID."""
        if self._daemons:
            raise LibvirtdError("cluster already started")
        missing = missing_components()
        if missing:
            raise QemuNotInstalled(
                "cannot start private libvirtd hosts, missing: "
                + ", ".join(missing)
                + " (run scripts/install-qemu.sh as root)"
            )
        if os.geteuid() != 0:
            raise LibvirtdError("private libvirtd hosts need root (mount namespaces)")
        overlays = self._check_state_dir()
        deadline = time.monotonic() + timeout
        try:
            networks = self._make_networks()
            # One after the other: the first fills the capabilities cache the others start from.
            for index in range(1, self.count + 1):
                daemon = self._launch(index, overlays, networks[index - 1] if networks else None)
                self._daemons.append(daemon)
                self._wait_ready(daemon, deadline)
        except BaseException:
            self.stop()
            raise
        return self.hosts

    def stop(self) -> None:
        """Stop what start() started, in reverse order; safe to call twice or after a failure."""
        errors = []
        while self._daemons:
            daemon = self._daemons.pop()
            try:
                self._stop_daemon(daemon)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{daemon.host.name}: {exc}")
            if not self.keep_files:
                shutil.rmtree(daemon.host.state_dir, ignore_errors=True)
        if self.fabric is not None:
            try:
                self.fabric.delete()
            except _netns.NetnsError as exc:
                errors.append(f"namespaces: {exc}")
        if errors:
            raise LibvirtdError("; ".join(errors))

    def records(self) -> list[dict[str, object]]:
        """What ``stop_recorded`` needs to stop these hosts from another process (JSON-ready):
        a daemon is recognised by its mount namespace, which only it and its QEMUs entered."""
        out: list[dict[str, object]] = []
        for daemon in self._daemons:
            host = daemon.host
            out.append({
                "name": host.name, "pid": host.pid, "uri": host.uri, "stateDir": str(host.state_dir),
                "netns": host.netns, "address": host.address, "migrationUri": host.migration_uri,
                "mountNamespace": list(daemon.namespace) if daemon.namespace else None,
            })
        return out

    def _make_networks(self) -> list[HostNetwork] | None:
        """The hosts' namespaces: made here with ``fabric``; each given ``br-vm`` with
        ``vm_gateway``. Nothing is made in the root namespace."""
        networks = self.networks
        try:
            if self.fabric is not None:
                self.fabric.create()
                networks = []
                for index in range(1, self.count + 1):
                    made = self.fabric.add_host(f"host{index}")
                    networks.append(HostNetwork(made.netns, made.address))
            if networks and self.vm_gateway:
                for network in networks:
                    _netns.add_bridge(network.netns, VM_BRIDGE, self.vm_gateway)
        except _netns.NetnsError as exc:
            raise LibvirtdError(str(exc)) from exc
        return networks

    def _check_state_dir(self) -> list[_Overlay]:
        """Check the state dir suits the mounts; return the overlays the mounts need."""
        private = self._private_dirs()
        overlays = _overlays([inside for inside, _ in private])
        resolved = self.state_dir.resolve()
        covered = [inside for inside, _ in private] + [o.parent for o in overlays]
        for inside in covered:
            hidden = Path(inside).resolve()
            if resolved == hidden or hidden in resolved.parents:
                # Each daemon would not see the others' sockets under its own private mounts.
                raise LibvirtdError(f"state dir {resolved} must not be under {hidden}")
        if overlays and _OVERLAY_UNSAFE & set(str(self.state_dir)):
            raise LibvirtdError(
                f"state dir {self.state_dir} contains one of {''.join(sorted(_OVERLAY_UNSAFE))},"
                " which overlay mount options cannot carry"
            )
        longest = self.state_dir / f"host{self.count}" / "run/libvirt/libvirt-sock"
        if len(str(longest).encode()) > _MAX_SOCKET_PATH:
            raise LibvirtdError(
                f"socket path {longest} is longer than {_MAX_SOCKET_PATH} bytes: "
                "use a shorter state dir (for example under /tmp)"
            )
        return overlays

    def _private_dirs(self) -> list[tuple[str, str]]:
        extra = [(inside, "private" + inside) for inside in self.private_dirs]
        return [*_PRIVATE_DIRS, *extra]

    def _launch(self, index: int, overlays: list[_Overlay], network: HostNetwork | None = None) -> _Daemon:
        name = f"host{index}"
        host_dir = self.state_dir / name
        if host_dir.exists():
            shutil.rmtree(host_dir)
        private = self._private_dirs()
        for _, sub in private:
            (host_dir / sub).mkdir(parents=True, exist_ok=True)
        # /var/lock is /run/lock on Debian: the daemon locks a guest's pty there for a console
        # (virsh console), and the private /run starts empty.
        (host_dir / "run/lock").mkdir(mode=0o1777)
        (host_dir / "nss").mkdir()
        _copy_xml_files(self.capabilities_cache, host_dir / _CAPABILITIES_SUBDIR)
        ports_start = self.base_migration_port + (index - 1) * MIGRATION_PORTS_PER_HOST
        ports = range(ports_start, ports_start + MIGRATION_PORTS_PER_HOST)
        host_uuid = str(uuid.uuid4())
        (host_dir / "etc/libvirt/libvirtd.conf").write_text(_libvirtd_conf(host_uuid))
        (host_dir / "etc/libvirt/qemu.conf").write_text(_qemu_conf(ports))
        for overlay in overlays:
            for child in overlay.children:
                (host_dir / overlay.layer / "upper" / child).mkdir(parents=True)
            (host_dir / overlay.layer / "work").mkdir()
        mounts = private + _nss_files(host_dir / "nss")
        argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c"]
        if network is not None:
            # ip execs unshare (same PID) in a mount namespace whose /sys shows the namespace's
            # own devices, which libvirt reads when it plugs a tap into br-vm.
            argv = ["ip", "netns", "exec", network.netns, *argv]
        argv += [_NAMESPACE_SCRIPT, "sh", str(host_dir)]
        for overlay in overlays:
            argv += ["overlay", overlay.parent, overlay.layer]
        for inside, sub in mounts:
            argv += ["bind", inside, sub]
        argv += ["--", LIBVIRTD, "-f", "/etc/libvirt/libvirtd.conf"]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
            "HOME": str(host_dir),
        }
        with open(host_dir / "libvirtd.stdout", "wb") as output:
            # Own session: a Ctrl-C at the terminal reaches us, and we stop the daemons in order.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        socket = host_dir / "run/libvirt/libvirt-sock"
        host = LibvirtdHost(
            name=name,
            uri=f"qemu+unix:///system?socket={socket}",
            pid=process.pid,
            state_dir=host_dir,
            migration_uri=f"tcp://{network.address}" if network else "tcp://127.0.0.1",
            host_uuid=host_uuid,
            migration_ports=ports,
            netns=network.netns if network else None,
            address=network.address if network else "127.0.0.1",
        )
        return _Daemon(host, process)

    def _wait_ready(self, daemon: _Daemon, deadline: float) -> None:
        host = daemon.host
        socket = host.state_dir / "run/libvirt/libvirt-sock"
        while not socket.exists():
            if daemon.process.poll() is not None:
                raise LibvirtdError(
                    f"{host.name}: libvirtd exited with {daemon.process.returncode}:\n"
                    + _log_tail(host.log_file)
                    + "\n"
                    + _log_tail(host.state_dir / "libvirtd.stdout")
                )
            if time.monotonic() > deadline:
                raise LibvirtdError(f"{host.name}: no socket at {socket} in time")
            time.sleep(0.02)
        while True:
            try:
                # The daemon queues clients until its drivers are initialised; but between
                # binding its socket (which makes the file) and listening on it, a connection is
                # refused: that is retried until the deadline, a loaded machine stretching it.
                conn = libvirt.open(host.uri)
                try:
                    reported = conn.getCapabilities()
                finally:
                    conn.close()
                break
            except libvirt.libvirtError as exc:
                refused = "Connection refused" in str(exc)
                if not refused or daemon.process.poll() is not None or time.monotonic() > deadline:
                    raise LibvirtdError(
                        f"{host.name}: libvirtd does not answer: {exc}\n" + _log_tail(host.log_file)
                    ) from exc
                time.sleep(0.05)
        if host.host_uuid not in reported:
            raise LibvirtdError(f"{host.name}: the daemon at {host.uri} is not the one started")
        namespace = _mount_namespace(daemon.process.pid)
        if namespace is None or namespace == _mount_namespace(os.getpid()):
            raise LibvirtdError(f"{host.name}: libvirtd is not in a private mount namespace")
        daemon.namespace = namespace
        _copy_xml_files(host.state_dir / _CAPABILITIES_SUBDIR, self.capabilities_cache)

    def _stop_daemon(self, daemon: _Daemon) -> None:
        if daemon.process.poll() is None and daemon.namespace is not None:
            _destroy_all_domains(daemon.host.uri)
        if daemon.process.poll() is None:
            daemon.process.terminate()
            try:
                daemon.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(timeout=10)
        if daemon.namespace is None:
            return
        # Anything left in the namespace (a QEMU the daemon did not get to destroy) was started
        # by that daemon: nothing else can be in a namespace only it and its children entered.
        leftovers = _pids_in_namespace(daemon.namespace)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while leftovers and time.monotonic() < deadline:
            leftovers = [pid for pid in leftovers if _mount_namespace(pid) == daemon.namespace]
            time.sleep(0.02)
        if leftovers:
            raise LibvirtdError(f"processes {leftovers} of {daemon.host.name} did not exit")


def stop_recorded(records: Sequence[dict[str, object]], timeout: float = 10.0) -> int:
    """Stop hosts recorded by ``LibvirtdCluster.records`` (in another process, maybe); returns
    how many daemons were running. Their domains are destroyed, the daemon is terminated, and
    whatever is left in its mount namespace is killed. A PID whose mount namespace is not the
    recorded one (reused, or the host already gone) is never signalled."""
    stopped = 0
    for record in reversed(records):
        recorded = record.get("mountNamespace")
        pid = record.get("pid")
        if not isinstance(recorded, list) or len(recorded) != 2 or not isinstance(pid, int):
            continue
        namespace = (int(recorded[0]), int(recorded[1]))
        if _mount_namespace(pid) == namespace:
            stopped += 1
            if isinstance(record.get("uri"), str):
                _destroy_all_domains(str(record["uri"]))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _mount_namespace(pid) == namespace and _alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
        leftovers = _pids_in_namespace(namespace) if namespace != _mount_namespace(os.getpid()) else []
        for left in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while leftovers and time.monotonic() < deadline:
            for left in leftovers:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(left, os.WNOHANG)
            leftovers = [p for p in leftovers if _mount_namespace(p) == namespace and _alive(p)]
            time.sleep(0.05)
    return stopped


def _alive(pid: int) -> bool:
    """Exists and is no zombie (init here may never reap an orphan)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[-1].startswith("Z")


def _destroy_all_domains(uri: str) -> None:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
    except libvirt.libvirtError:
        pass
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


@contextlib.contextmanager
def _interrupted_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, even where SIGINT was inherited as ignored
    (a background job of a non-interactive shell)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m snooze.dev.sim.libvirtd",
        description="Run private libvirtd hosts on this machine until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--base-migration-port", type=int, default=DEFAULT_BASE_MIGRATION_PORT)
    parser.add_argument("--keep-files", action="store_true", help="keep logs and state on exit")
    args = parser.parse_args(argv)
    cluster = LibvirtdCluster(
        args.state_dir, args.count, args.base_migration_port, keep_files=args.keep_files
    )
    with _interrupted_by_signals():
        try:
            started = time.monotonic()
            hosts = cluster.start()
            print(f"started {len(hosts)} hosts in {time.monotonic() - started:.2f} s", flush=True)
            for host in hosts:
                print(
                    f"{host.name} pid={host.pid} uri={host.uri} "
                    f"migration_uri={host.migration_uri} "
                    f"ports={host.migration_ports.start}-{host.migration_ports.stop - 1}",
                    flush=True,
                )
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass
        except LibvirtdError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
