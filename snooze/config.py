"""Configuration: grouped dataclasses, one TOML file per process.

Every option has a default and a one-line meaning (``doc``); ``example_config(role)`` renders
them as the commented files in ``configs/``, so the documentation cannot drift from the code.
Unknown sections or keys, and values of the wrong type, are configuration errors at start-up.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import socket
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the option."""


def opt(default: Any, doc: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class NodeSettings:
    id: str = opt("", "Stable identifier of this process; empty derives one from hostname and port, so a restart keeps it.")
    listen_address: str = opt("127.0.0.1", "Address the control (HTTP, TCP) and heartbeat (UDP) ports bind to.")
    advertise_address: str = opt("", "Address peers use to reach this process; empty = listen_address.")
    port: int = opt(0, "Control and heartbeat port; 0 = the role's default (bootstrap 5000, group managers 5001, local controllers 5010).")
    hostname: str = opt("", "Host name reported to peers; empty = this machine's.")
    http_header_timeout: float = opt(10.0, "Seconds a new HTTP connection has to deliver its first request's line and headers; then it is closed.")
    http_body_timeout: float = opt(30.0, "Seconds a client has to send a request's whole body; then it gets 408 and the connection is closed.")
    http_idle_timeout: float = opt(60.0, "Seconds an idle keep-alive HTTP connection (or one trickling its next request's headers) is kept; keep it above 15 (the RPC client's reuse time).")
    http_max_connections_per_client: int = opt(256, "Open HTTP connections one client address may hold; more are answered 429 and closed. 0 = no limit. All processes of a local cluster share 127.0.0.1.")


@dataclass
class ClusterSettings:
    name: str = opt("snooze", "Cluster name; zeroconf discovery only finds clusters of the same name.")
    key: str = opt("snooze-insecure-development-key", "Shared secret for the HMAC on every internal message. Change it in production.")
    zookeeper: str = opt("127.0.0.1:2181", "ZooKeeper connect string (host:port[,host:port]); empty = discover it with zeroconf.")
    zk_root: str = opt("/snooze", "ZooKeeper path under which this cluster keeps its state.")
    session_timeout: float = opt(10.0, "ZooKeeper session timeout in seconds (the server clamps it to 2..20 tickTime).")
    discovery: str = opt("static", "'static' uses the zookeeper option; 'zeroconf' also advertises/browses the cluster on zeroconf_interfaces.")
    zeroconf_interfaces: list[str] = opt(["127.0.0.1"], "Interfaces zeroconf may use. Never all interfaces by default.")
    replay_window: float = opt(30.0, "Seconds an internal message stays valid: receivers refuse one whose timestamp is further than this from their clock, or whose nonce they already accepted within it (replays). The cluster's clocks must agree within it.")


@dataclass
class HeartbeatSettings:
    interval: float = opt(3.0, "Seconds between heartbeats (original: 3 s).")
    timeout: float = opt(10.0, "Seconds without a heartbeat before a peer is declared dead (original: 10 s).")
    multicast_group: str = opt("", "UDP multicast group for heartbeats (the original's LAN way); empty = unicast to known peers.")
    multicast_ttl: int = opt(1, "Multicast TTL when multicast_group is set.")


@dataclass
class MonitoringSettings:
    interval: float = opt(3.0, "Seconds between a local controller's monitoring reports to its group manager.")
    history: int = opt(10, "Monitoring samples kept per host and per VM (bounded memory).")
    summary_interval: float = opt(3.0, "Seconds between a group manager's summaries to the group leader.")


@dataclass
class GroupManagerSettings:
    assignment_policy: str = opt("round-robin", "How the leader assigns local controllers to group managers: 'round-robin' or 'balanced' (fewest LCs).")
    dispatch_policy: str = opt("first-fit", "How the leader dispatches VMs to group managers (a placement policy name).")
    placement_policy: str = opt("round-robin", "How a group manager places VMs on its local controllers (a placement policy name).")
    virtual_machine_subnet: str = opt("192.168.122.0/24", "Subnet VM addresses are allocated from (network, gateway .1 and broadcast excluded).")
    energy_management: bool = opt(False, "Power idle local controllers down and wake them when placement needs them (original: energyManagement.enabled).")
    idle_time: float = opt(120.0, "Seconds a local controller must host no VM before it is powered down (original: 120 s).")
    reserved_nodes: int = opt(1, "Local controllers of this group manager always kept on (original: numberOfReservedNodes).")
    power_saving_action: str = opt("SHUTDOWN", "SHUTDOWN, SUSPEND_TO_RAM, SUSPEND_TO_DISK or SUSPEND_TO_BOTH.")
    wakeup_time: float = opt(300.0, "Seconds to wait for a woken local controller to re-join before trying another host.")
    relocation_interval: float = opt(0.0, "Seconds between relocation runs (overloaded hosts shed VMs, underloaded ones are emptied); 0 = never.")
    consolidation_interval: float = opt(0.0, "Seconds between consolidation runs (VMs packed onto fewer hosts); 0 = never.")
    consolidation_policy: str = opt("cost-aware", "Consolidation policy: 'cost-aware' or 'sercon' (the original's).")
    estimator: str = opt("average", "How a host's demand is estimated from its monitoring history: 'average', 'ewma' or 'static'.")
    estimator_window: int = opt(10, "How many of the latest monitoring samples the estimator reads (at most [monitoring] history).")
    cpu_thresholds: list[float] = opt([0.0, 1.0, 1.0], "CPU utilisation [MIN, MID, MAX] (original: 0, 1, 1): underloaded below MIN, a host accepts VMs up to MID, overloaded above MAX.")
    memory_thresholds: list[float] = opt([0.0, 1.0, 1.0], "Memory utilisation [MIN, MID, MAX] (original: 0, 1, 1).")
    network_thresholds: list[float] = opt([0.0, 1.0, 1.0], "Network utilisation [MIN, MID, MAX] for rx and tx (original: 0, 1, 1).")
    task_retention: float = opt(3600.0, "Seconds a finished submission (its getVirtualClusterResponse) and a failed VM's record are kept in ZooKeeper before the leader forgets them (at least 1; swept every tenth of it, 1-60 s).")
    transaction_bytes: int = opt(900000, "Largest ZooKeeper transaction the leader writes (keep it under the server's jute.maxbuffer, 1 MiB by default); a bigger submission is recorded as an intent record, then chunks of half this size.")
    restart_lost_vms: bool = opt(False, "When a local controller (re)joins without VMs its records place there (host restarted, domains lost), start them again from their stored spec instead of marking them ERROR (VIRTUAL_MACHINE_LOST).")


@dataclass
class LocalControllerSettings:
    hypervisor_uri: str = opt("qemu:///system", "libvirt URI of this host's hypervisor; test:///PATH/host.xml for libvirt's test driver.")
    network_capacity: list[float] = opt([131072.0, 131072.0], "[rx, tx] network capacity in KiB/s reported in totalCapacity.")
    hypervisor_driver: str = opt("qemu", "hypervisorSettings.driver reported to peers (used for migration URIs).")
    hypervisor_transport: str = opt("tcp", "hypervisorSettings.transport (migration URI transport).")
    hypervisor_port: int = opt(16509, "hypervisorSettings.port (libvirtd port peers migrate to).")
    migration_method: str = opt("live", "hypervisorSettings.migration.method: live, nonshared-incremental or nonshared-full.")
    migration_timeout: float = opt(60.0, "hypervisorSettings.migration.timeout in seconds; then the VM is paused to converge.")
    migration_auto_converge: bool = opt(False, "Let QEMU throttle the guest's CPUs so a busy VM's migration converges (as Nova's live_migration_permit_auto_converge).")
    migration_post_copy: bool = opt(False, "At the timeout, switch to post-copy instead of pausing the VM (as Nova's live_migration_permit_post_copy).")
    remote_uri: str = opt("", "libvirt URI peers use to reach this hypervisor when migrating to it; empty = DRIVER+TRANSPORT://ADVERTISE_ADDRESS:PORT/system.")
    migration_uri: str = opt("", "Where the migration data stream connects (VIR_MIGRATE_PARAM_URI), e.g. tcp://10.0.0.5; empty = libvirt's choice.")
    wakeup_driver: str = opt("NONE", "wakeupSettings.driver: IPMI, WOL, COMMAND, TEST or NONE.")
    wakeup_options: str = opt("", "wakeupSettings.options, e.g. '-I lanplus -H BMC_IP -U user -P password' for IPMI.")
    power_test_mode: bool = opt(False, "For local clusters: a power-saving order stops this process instead of running a host command.")
    power_commands: dict[str, list[str]] = opt({}, "Commands per power-saving state, e.g. {SUSPEND_TO_RAM = ['pm-suspend']}; defaults: shutdown -h now, systemctl suspend/hibernate/hybrid-sleep.")


@dataclass
class TemplateSettings:
    image_directory: str = opt("/var/lib/snooze/images", "The image store: imageId names a file in it, and every disk, kernel, initrd and loader path of a libVirtTemplate must lie inside it (relative paths are taken inside it; '..' and, on the host, symlinks are resolved first).")
    domain_types: list[str] = opt(["kvm", "qemu", "test"], "Domain types (<domain type=...>) a libVirtTemplate may ask for; 'test' is libvirt's test driver, which runs nothing.")
    devices: list[str] = opt(["disk", "controller", "interface", "serial", "console", "channel", "input", "graphics", "video", "sound", "memballoon", "rng", "watchdog"], "Device kinds a libVirtTemplate's <devices> may hold (each with its own allow-list of attributes). hostdev, filesystem, smartcard, redirdev, tpm, shmem and the like are never allowed.")
    emulators: list[str] = opt(["/usr/bin/kvm", "/usr/bin/qemu-kvm", "/usr/bin/qemu-system-x86_64", "/usr/libexec/qemu-kvm"], "Binaries a libVirtTemplate's <emulator> may name; any other (e.g. /bin/sh) is refused. Without <emulator> libvirt uses the host's default.")
    bridges: list[str] = opt(["virbr0"], "Host bridges an <interface type='bridge'> may join.")
    networks: list[str] = opt(["default"], "libvirt networks an <interface type='network'> may join.")
    block_devices: list[str] = opt([], "Directories of host block devices (e.g. /dev/vg-guests) a <disk type='block'> may use; empty = no block disks.")
    network_disks: bool = opt(False, "Allow <disk type='network'> (rbd, iscsi, nbd...): the client then chooses hosts the hypervisor connects to.")
    firmware_directories: list[str] = opt([], "Directories besides the image store an <os><loader> or <nvram template=...> may come from, e.g. /usr/share/OVMF.")


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    groupmanager: GroupManagerSettings = field(default_factory=GroupManagerSettings)
    localcontroller: LocalControllerSettings = field(default_factory=LocalControllerSettings)
    templates: TemplateSettings = field(default_factory=TemplateSettings)

    def node_id(self, role: str) -> str:
        if self.node.id:
            return self.node.id
        seed = f"{role}:{self.hostname()}:{self.node.port}"
        return str(uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4))

    def hostname(self) -> str:
        return self.node.hostname or socket.gethostname()

    def advertise_address(self) -> str:
        return self.node.advertise_address or self.node.listen_address


ROLE_SECTIONS = {
    "bootstrap": ("node", "cluster", "heartbeat"),
    "groupmanager": ("node", "cluster", "heartbeat", "monitoring", "groupmanager", "templates"),
    "localcontroller": ("node", "cluster", "heartbeat", "monitoring", "localcontroller", "templates"),
}
DEFAULT_PORTS = {"bootstrap": 5000, "groupmanager": 5001, "localcontroller": 5010}


def _coerce(section: str, key: str, value: Any, typ: Any) -> Any:
    where = f"[{section}] {key}"
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = get_origin(typ) or typ  # list[str] -> list: elements are checked where they are used
    expected = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}[base.__name__]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {base.__name__}, got {value!r}")
    return value


def from_dict(data: dict[str, Any]) -> Settings:
    settings = Settings()
    for section, values in data.items():
        if not hasattr(settings, section):
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        group = getattr(settings, section)
        hints = get_type_hints(type(group))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"[{section}] unknown option {key!r}")
            setattr(group, key, _coerce(section, key, value, hints[key]))
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    if s.heartbeat.interval <= 0 or s.heartbeat.timeout <= s.heartbeat.interval:
        raise ConfigError("[heartbeat] need 0 < interval < timeout")
    if s.cluster.session_timeout <= 0:
        raise ConfigError("[cluster] session_timeout must be > 0")
    if s.cluster.discovery not in ("static", "zeroconf"):
        raise ConfigError("[cluster] discovery must be 'static' or 'zeroconf'")
    if not s.cluster.zookeeper and s.cluster.discovery != "zeroconf":
        raise ConfigError("[cluster] zookeeper is empty: set it or use discovery = 'zeroconf'")
    if not 0 <= s.node.port < 65536:
        raise ConfigError("[node] port must be in 0..65535")
    if s.groupmanager.assignment_policy not in ("round-robin", "balanced"):
        raise ConfigError("[groupmanager] assignment_policy must be 'round-robin' or 'balanced'")
    for name in ("cpu_thresholds", "memory_thresholds", "network_thresholds"):
        t = getattr(s.groupmanager, name)
        if len(t) != 3 or not all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in t) or not t[0] <= t[1] <= t[2]:
            raise ConfigError(f"[groupmanager] {name} must be [MIN, MID, MAX] with 0 <= MIN <= MID <= MAX <= 1")
    if s.groupmanager.power_saving_action not in ("SHUTDOWN", "SUSPEND_TO_RAM", "SUSPEND_TO_DISK", "SUSPEND_TO_BOTH"):
        raise ConfigError("[groupmanager] power_saving_action must be SHUTDOWN, SUSPEND_TO_RAM, SUSPEND_TO_DISK or SUSPEND_TO_BOTH")
    if s.groupmanager.idle_time < 0 or s.groupmanager.reserved_nodes < 0 or s.groupmanager.wakeup_time <= 0:
        raise ConfigError("[groupmanager] idle_time and reserved_nodes must be >= 0, wakeup_time > 0")
    if len(s.localcontroller.network_capacity) != 2:
        raise ConfigError("[localcontroller] network_capacity must be [rx, tx]")
    # The template policy's own rules (a late import: snooze.domainxml imports this module).
    from snooze.domainxml import check_settings

    check_settings(s.templates)


def load(path: str | Path | None, role: str, overrides: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        data.setdefault(section, {})[key] = value
    settings = from_dict(data)
    if settings.node.port == 0:
        settings.node.port = DEFAULT_PORTS[role]
    return settings


def to_dict(settings: Settings, role: str) -> dict[str, Any]:
    return {s: dataclasses.asdict(getattr(settings, s)) for s in ROLE_SECTIONS[role]}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def render_toml(settings: Settings, role: str, *, comments: bool = True) -> str:
    lines: list[str] = []
    for section in ROLE_SECTIONS[role]:
        group = getattr(settings, section)
        lines.append(f"[{section}]")
        for f in dataclasses.fields(group):
            if comments:
                lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(group, f.name))}")
        lines.append("")
    return "\n".join(lines)


def example_config(role: str) -> str:
    header = (
        f"# Example configuration of a Snooze {role}: every option, with its default and meaning.\n"
        f"# Start with: snooze-{role} --config THIS_FILE\n\n"
    )
    return header + render_toml(Settings(), role)
