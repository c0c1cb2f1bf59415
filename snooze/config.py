"""Configuration: grouped dataclasses, one TOML file per process.

Every option has a default and a one-line meaning (``doc``); ``example_config(role)`` renders
them as the commented files in ``configs/``, so the documentation cannot drift from the code.
Unknown sections or keys, and values of the wrong type, are configuration errors at start-up.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
import re
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
    id: str = opt("", "Stable identifier of this process; empty derives one from /etc/machine-id (else the host name), the role and the port, so a restart keeps it and two hosts sharing a host name differ. Two live processes with one id are refused: the second does not start.")
    listen_address: str = opt("127.0.0.1", "Address the control (HTTP, TCP) and heartbeat (UDP) ports bind to (local: what this host accepts on); 0.0.0.0 or :: = every interface. Peers never use it unless it is also the advertised address.")
    advertise_address: str = opt("", "Address (or host name) peers use to reach this process, written into ZooKeeper and every message; empty = listen_address when that is one address, else (0.0.0.0, ::) the address of this host's interface that routes to the first ZooKeeper server. A wildcard is never advertised, nor a loopback address when ZooKeeper is not on loopback.")
    port: int = opt(0, "Control and heartbeat port; 0 = the role's default (bootstrap 5000, group managers 5001, local controllers 5010).")
    hostname: str = opt("", "Host name reported to peers; empty = this machine's.")
    http_header_timeout: float = opt(10.0, "Seconds a new HTTP connection has to deliver its first request's line and headers; then it is closed.")
    http_body_timeout: float = opt(30.0, "Seconds a client has to send a request's whole body; then it gets 408 and the connection is closed.")
    http_idle_timeout: float = opt(60.0, "Seconds an idle keep-alive HTTP connection (or one trickling its next request's headers) is kept; keep it above 15 (the RPC client's reuse time).")
    http_max_connections_per_client: int = opt(256, "Open HTTP connections one client address may hold; more are answered 429 and closed. 0 = no limit. All processes of a local cluster share 127.0.0.1.")
    tls_cert: str = opt("", "PEM certificate (or chain) the HTTP listeners present (the control port, and the bootstrap's EC2 API): set with tls_key, they serve https only, and this process calls its peers over https. Every process of a cluster must agree (docs/deploy.md, TLS); its names must include the advertised address. Empty = plain HTTP.")
    tls_key: str = opt("", "PEM private key of tls_cert, unencrypted, readable by this process only (mode 0600 or 0640); both or neither.")
    tls_ca: str = opt("", "PEM bundle of the certificate authorities the peers' certificates are checked against when TLS is on (with tls_cert); empty = the system's trusted authorities.")


@dataclass
class ClusterSettings:
    name: str = opt("snooze", "Cluster name; zeroconf discovery only finds clusters of the same name.")
    key: str = opt("snooze-insecure-development-key", "Shared secret for the HMAC on every internal message, and the key this process signs with. Change it in production, to a random one (64 hex digits, say): its fingerprint is public.")
    accept_keys: list[str] = opt([], "Other keys whose signatures are accepted too, during a key rotation (docs/deploy.md): the new key before every process signs with it, then the old one until every process does. A running process reads key and accept_keys again on SIGHUP. Empty outside a rotation.")
    key_file: str = opt("", "A file holding the keys instead (key = \"...\" and, during a rotation, accept_keys = [...], in TOML), read at start and on SIGHUP; it replaces key and accept_keys, and SNOOZE_CLUSTER_KEY. Readable by this process only (mode 0600 or 0640). Empty = none.")
    zookeeper: str = opt("127.0.0.1:2181", "ZooKeeper connect string (host:port[,host:port]); empty = discover it with zeroconf.")
    zk_root: str = opt("/snooze", "ZooKeeper path under which this cluster keeps its state.")
    session_timeout: float = opt(10.0, "ZooKeeper session timeout in seconds (the server clamps it to 2..20 tickTime).")
    discovery: str = opt("static", "'static' uses the zookeeper option; 'zeroconf' also advertises/browses the cluster on zeroconf_interfaces.")
    zeroconf_interfaces: list[str] = opt([], "Addresses of the interfaces zeroconf may use; empty = [node] listen_address when it is one address, else 127.0.0.1 (loopback). Never all interfaces.")
    replay_window: float = opt(30.0, "Seconds an internal message stays valid: receivers refuse one whose timestamp is further than this from their clock, or whose nonce they already accepted within it (replays). The cluster's clocks must agree within it.")


@dataclass
class HeartbeatSettings:
    interval: float = opt(3.0, "Seconds between heartbeats (original: 3 s).")
    timeout: float = opt(10.0, "Seconds without a heartbeat before a peer is declared dead (original: 10 s).")
    multicast_group: str = opt("", "UDP multicast group for heartbeats as ADDR:PORT, e.g. \"239.23.1.1:5555\" (the original's LAN way); empty = unicast to known peers.")
    multicast_ttl: int = opt(1, "Multicast TTL when multicast_group is set.")
    multicast_interface: str = opt("", "IPv4 address of this host's interface that multicast heartbeats join and are sent on; empty = the advertised address (never 0.0.0.0).")


@dataclass
class MonitoringSettings:
    interval: float = opt(3.0, "Seconds between a local controller's monitoring reports to its group manager.")
    history: int = opt(10, "Monitoring samples kept per host and per VM (bounded memory).")
    full_report_every: int = opt(10, "A report that did not change since the last one goes as a heartbeat saying so (the group manager takes the last one again), except every Nth and after each join; 1 = every report whole.")
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
    consolidation_policy: str = opt("cost-aware", "Consolidation policy: 'cost-aware', 'repack' (cost-aware, then more hosts emptied by shifting VMs between kept hosts: fewer host-hours, more migrations per saved host-hour) or 'sercon' (the original's).")
    migration_budget: float = opt(0.0, "Migrations consolidation may start per hour and per active local controller (a token bucket holding at most two consolidation intervals' worth, at least one); 0 = no budget.")
    consolidation_headroom: float = opt(0.0, "Room consolidation leaves free on the hosts it keeps, as a multiple of the VMs that arrived since its last run (0 = none: pack as tightly as it can), so that hosts it empties are not woken again by the next submissions.")
    make_room_before_waking: bool = opt(True, "Before waking a sleeping local controller for a VM that fits on no active one, migrate one VM between active hosts if that makes the room (a copy of its memory instead of a host powered on for hours); frozen VMs (migration_cooldown) never move, and migration_budget is spent.")
    consolidation_settle: float = opt(0.0, "Seconds after a woken local controller joined (and while one is waking) during which consolidation empties no host, since the hosts were short of room; 0 = consolidation never waits.")
    migration_cooldown: float = opt(0.0, "Seconds after a VM migrated before consolidation moves it again; 0 = instead, no host that received VMs within two consolidation intervals is emptied.")
    estimator: str = opt("average", "How a host's demand is estimated from its monitoring history: 'average', 'ewma' or 'static'.")
    estimator_window: int = opt(10, "How many of the latest monitoring samples the estimator reads (at most [monitoring] history).")
    cpu_thresholds: list[float] = opt([0.0, 1.0, 1.0], "CPU utilisation [MIN, MID, MAX] (original: 0, 1, 1): underloaded below MIN, a host accepts VMs up to MID, overloaded above MAX.")
    memory_thresholds: list[float] = opt([0.0, 1.0, 1.0], "Memory utilisation [MIN, MID, MAX] (original: 0, 1, 1).")
    network_thresholds: list[float] = opt([0.0, 1.0, 1.0], "Network utilisation [MIN, MID, MAX] for rx and tx (original: 0, 1, 1).")
    task_retention: float = opt(3600.0, "Seconds a finished submission (its getVirtualClusterResponse) and a failed VM's record are kept in ZooKeeper before the leader forgets them (at least 1; swept every tenth of it, 1-60 s).")
    transaction_bytes: int = opt(900000, "Largest ZooKeeper transaction the leader writes (keep it under the server's jute.maxbuffer, 1 MiB by default); a bigger submission is recorded as an intent record, then chunks of half this size.")
    restart_lost_vms: bool = opt(False, "When a local controller (re)joins without VMs its records place there (host restarted, domains lost), start them again from their stored spec instead of marking them ERROR (VIRTUAL_MACHINE_LOST).")
    rebalance_interval: float = opt(30.0, "Seconds between the leader's rebalancing rounds, which keep every group manager within one local controller of the mean by ordering a few to re-join another (docs/energy-handover.md); 0 = never.")
    rebalance_moves: int = opt(2, "Local controllers moved per rebalancing round, at most.")
    rebalance_quiet: float = opt(3.0, "No rebalancing until no group manager has joined or left for this many heartbeat timeouts (not during a failover).")
    vif_plugins: list[str] = opt([], "VIF plugins, in order of preference, to plug the VMs' interfaces with on hosts that report them (os-vif's choice within each host's HostInfo, docs/networking.md); empty = none: a domain's interface is its template's and libvirt plugs it.")
    vif_bridge: str = opt("br-vm", "The bridge plugged VM interfaces join (the VIF's bridge_name).")
    vif_mtu: int = opt(0, "MTU of plugged VM interfaces and of their bridge; 0 = the host's default.")
    vif_uplink: str = opt("", "The host interface the VM bridge reaches the other hosts through (the VIF network's bridge_interface; the plugin puts it on the bridge, or its VLAN sub-interface with a VLAN); empty = none.")
    election_yield: bool = opt(True, "A group manager that wins the election while managing more local controllers than another contender steps aside once, so the one with fewer becomes leader (fewer LCs must move).")


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
    migration_bandwidth: int = opt(0, "hypervisorSettings.migration.bandwidth: cap of the migration stream in MiB/s, pre-copy and post-copy alike (VIR_MIGRATE_PARAM_BANDWIDTH); 0 = libvirt's default.")
    migration_recovery_timeout: float = opt(60.0, "Seconds during which a migration that failed after its switch to post-copy is resumed (VIR_MIGRATE_POSTCOPY_RESUME) before it is reported as MIGRATION_NEEDS_RECOVERY; 0 = a single attempt.")
    remote_uri: str = opt("", "libvirt URI peers use to reach this hypervisor when migrating to it; empty = DRIVER+TRANSPORT://ADVERTISE_ADDRESS:PORT/system.")
    migration_uri: str = opt("", "Where the migration data stream connects (VIR_MIGRATE_PARAM_URI), e.g. tcp://10.0.0.5; empty = libvirt's choice.")
    wakeup_driver: str = opt("NONE", "wakeupSettings.driver: IPMI, WOL, COMMAND, TEST or NONE.")
    wakeup_options: str = opt("", "wakeupSettings.options, e.g. '-I lanplus -H BMC_IP -U user -P password' for IPMI.")
    power_test_mode: bool = opt(False, "For local clusters: a power-saving order stops this process instead of running a host command.")
    power_commands: dict[str, list[str]] = opt({}, "Commands per power-saving state, e.g. {SUSPEND_TO_RAM = ['pm-suspend']}; defaults: shutdown -h now, systemctl suspend/hibernate/hybrid-sleep.")
    image_repository: str = opt("", "URL of the image repository (the bootstrap's /images), e.g. http://127.0.0.1:5000: imageId names an image there, fetched once into image_cache_directory, each VM booting from its own qcow2 overlay; empty = imageId is a file in [templates] image_directory.")
    image_cache_directory: str = opt("/var/lib/snooze/cache", "Where images fetched from image_repository are kept (ID.SHA256PREFIX.FORMAT), the backing files of the VMs' overlays.")
    image_cache_bytes: int = opt(10 * 1024**3, "Bound of image_cache_directory in bytes: least recently used images are removed beyond it, never one a VM here uses.")
    instance_directory: str = opt("/var/lib/snooze/instances", "Per-VM files made here with image_repository: VM.qcow2 (the overlay), VM-cidata.img (the NoCloud config drive), VM.json; removed when the VM is destroyed, stops or leaves.")
    accelerator: str = opt("auto", "Domain type of started VMs: auto (the template's when this host offers it, else qemu), kvm or tcg (= qemu).")
    join_backoff_base: float = opt(0.5, "Seconds: a failed join is retried after a random wait up to this, doubling with each failure (full-jitter exponential backoff), so refused hosts do not come back in step.")
    join_backoff_cap: float = opt(8.0, "Seconds: the largest ceiling of that random wait (a refusal that no retry can cure waits about this).")
    rejoin_spread: float = opt(2.0, "Seconds: a re-join (group manager lost, or ordered to move) first waits a random time up to this, so the hosts of a failed group manager do not all reach the leader at once.")
    firewall: str = opt("auto", "The guests' firewall groups as nftables rules in this host's table inet snooze, kept equal to ZooKeeper (localcontroller.firewall, docs/firewall.md): auto = on where nft can be run and the hypervisor is not libvirt's test driver; on = on, or a start error naming why nft cannot be used; off.")
    vif_plugins: list[str] = opt([], "VIF plugins this host loads (entry point group snooze.vif: linux_bridge, ovs, noop) and reports to its group manager when it joins; a VM whose start order carries a VIF is plugged by them before libvirt starts it and unplugged after it is gone; empty = none.")
    vif_object_versions: dict[str, str] = opt({}, "Pins of the VIF object versions this host reports when it joins (and so receives), object name -> \"MAJOR.MINOR\", as Nova's [upgrade_levels]: during a rolling upgrade, keep upgraded hosts at the version their group managers know, e.g. {VIFPortProfileOpenVSwitch = \"1.0\"}; a pin may not be newer than this version knows.")
    vif_ovsdb: str = opt("unix:/var/run/openvswitch/db.sock", "The ovs VIF plugin's Open vSwitch database (an ovsdbapp connection string: unix:PATH or tcp:ADDR:PORT).")
    vif_datapath_type: str = opt("system", "The ovs VIF plugin's bridges' datapath: system (the kernel's) or netdev (userspace, no kernel module).")
    vrs: bool = opt(False, "Keep Nuage VRS's Nuage_VM_Table and Nuage_Port_Table in this host's OVSDB (vif_ovsdb; its schema extended with them, docs/networking.md) in step with libvirt's lifecycle events of the domains plugged here, with a periodic audit (localcontroller.vrs); needs the ovs VIF plugin.")
    vrs_audit_interval: float = opt(10.0, "Seconds between two audits that make the Nuage tables equal to the domains running here (rows lost with an ovsdb-server restart come back, rows of domains gone are removed).")
    cni_agent_port: int = opt(0, "Port of the CNI agent on 127.0.0.1 that snooze-cni asks for containers' ports (localcontroller.cni, docs/cni.md; Contrail's is 9091); 0 = no agent.")
    cni_network: str = opt("default", "The network a container's port goes in when its CNI configuration names none.")
    cni_allocate: bool = opt(True, "The CNI agent makes a container's guest (its address) on the plugin's first request; false = only guests declared beforehand (POST /guests, type container) are answered, others polled as 404.")
    cni_grace_period: float = opt(30.0, "Seconds after the CNI agent starts during which the ports recorded on this host may be replayed (POST /sync); the container guests of this host not replayed by then are deleted, their addresses released.")
    cni_record_directory: str = opt("/var/lib/snooze/cni", "snooze-cni's per-container records on this host (its recordDir), replayed by the CNI agent at start; empty = only POST /sync replays.")


@dataclass
class TemplateSettings:
    image_directory: str = opt("/var/lib/snooze/images", "The image store: imageId names a file in it, and every disk, kernel, initrd and loader path of a libVirtTemplate must lie inside it (relative paths are taken inside it; '..' and, on the host, symlinks are resolved first).")
    domain_types: list[str] = opt(["kvm", "qemu", "test"], "Domain types (<domain type=...>) a libVirtTemplate may ask for; 'test' is libvirt's test driver, which runs nothing.")
    devices: list[str] = opt(["disk", "controller", "interface", "serial", "console", "channel", "input", "graphics", "video", "sound", "memballoon", "rng", "watchdog"], "Device kinds a libVirtTemplate's <devices> may hold (each with its own allow-list of attributes). hostdev, filesystem, smartcard, redirdev, tpm, shmem and the like are never allowed.")
    emulators: list[str] = opt(["/usr/bin/kvm", "/usr/bin/qemu-kvm", "/usr/bin/qemu-system-x86_64", "/usr/libexec/qemu-kvm"], "Binaries a libVirtTemplate's <emulator> may name; any other (e.g. /bin/sh) is refused. Without <emulator> libvirt uses the host's default.")
    bridges: list[str] = opt(["virbr0"], "Host bridges an <interface type='bridge'> may join.")
    default_bridge: str = opt("virbr0", "Bridge the network card of a VM given as vcpus/memory/name (not libVirtTemplate) joins; must be one of bridges. Empty = no bridge: it joins the alphabetically first of networks, or has no network card if networks is empty.")
    networks: list[str] = opt(["default"], "libvirt networks an <interface type='network'> may join.")
    block_devices: list[str] = opt([], "Directories of host block devices (e.g. /dev/vg-guests) a <disk type='block'> may use; empty = no block disks.")
    network_disks: bool = opt(False, "Allow <disk type='network'> (rbd, iscsi, nbd...): the client then chooses hosts the hypervisor connects to.")
    firmware_directories: list[str] = opt([], "Directories besides the image store an <os><loader> or <nvram template=...> may come from, e.g. /usr/share/OVMF.")


@dataclass
class Ec2Settings:
    listen_port: int = opt(0, "Port of the bootstrap's EC2-compatible API (the original's snoozeec2), on [node] listen_address; 0 = off.")
    region: str = opt("us-east-1", "The region EC2 clients must sign for and name (libcloud's EC2 driver accepts only AWS's region names).")
    access_keys: dict[str, str] = opt({}, "Access key id -> secret key of every client allowed (AWS Signature Version 4; no anonymous access): keep this file mode 0600.")
    instance_types: dict[str, list[int]] = opt({"m1.small": [1, 1048576], "m1.medium": [2, 2097152], "m1.large": [4, 4194304]}, "EC2 instance types offered: NAME = [vcpus, memory KiB].")
    images: list[str] = opt([], "Image ids DescribeImages lists and RunInstances accepts; empty = any the cluster accepts (none listed).")


@dataclass
class ImagesSettings:
    enabled: bool = opt(True, "Serve the image repository (/images: list, upload, download, delete) on the bootstrap's port.")
    directory: str = opt("/var/lib/snooze/repository", "Where the images are kept, one file per image named by its id (made at the first upload, or at start with libvirt_uri; uploads are staged in its .staging directory, checksums kept in .meta).")
    libvirt_uri: str = opt("", "libvirt URI of the daemon whose dir storage pool holds the images (defined on directory and started if missing; images listed and deleted through it, refreshed after uploads); empty = a plain directory.")
    pool: str = opt("snooze-images", "Name of that libvirt storage pool.")
    max_upload_bytes: int = opt(4 * 1024**3, "Largest image accepted, in bytes (an upload's Content-Length above it is refused with 413 before its body is read).")
    min_upload_rate: int = opt(1024**2, "Slowest upload accepted, in bytes/s: a body must arrive within [node] http_body_timeout + its size / this rate, and no read may wait longer than http_body_timeout.")
    max_concurrent_uploads: int = opt(4, "Uploads staged at once; more are refused with a 503 to retry.")


@dataclass
class EventsSettings:
    amqp_url: str = opt("", "Group managers: the RabbitMQ broker the group leader publishes the cluster's events to (docs/events.md), e.g. amqp://USER:PASSWORD@HOST:5672/; empty = none (they are still served by the bootstrap's /events).")
    amqp_exchange: str = opt("snooze", "The topic exchange they are published to (durable, made if missing); each event's routing key names its kind, e.g. vm.state, groupleader.elected.")


@dataclass
class AuthSettings:
    enabled: bool = opt(True, "Require a bearer token (snooze token create) on every call of the public HTTP API but /health, /metrics and ping; tokens are kept hashed in ZooKeeper (docs/auth.md). Off only in the local demo cluster (snooze cluster up without --auth).")
    seed_admin_token: str = opt("", "Bootstrap only: an admin token created in ZooKeeper at start when missing, as ID:SHA256 (its id and the SHA-256 of its secret; the local cluster's --auth makes one); empty = none. Make the first admin token of a deployment with snooze token create --zookeeper instead.")
    audit_log: str = opt("", "File that every state-changing call of the public API is appended to, one JSON line each (time, user, role, token id, client, method, path, verb, status); empty = the process's log (logger snooze.audit).")


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    groupmanager: GroupManagerSettings = field(default_factory=GroupManagerSettings)
    localcontroller: LocalControllerSettings = field(default_factory=LocalControllerSettings)
    templates: TemplateSettings = field(default_factory=TemplateSettings)
    ec2: Ec2Settings = field(default_factory=Ec2Settings)
    images: ImagesSettings = field(default_factory=ImagesSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    events: EventsSettings = field(default_factory=EventsSettings)

    def node_id(self, role: str) -> str:
        """``[node] id``, or one derived from this machine's identity, the role and the port:
        stable across restarts, distinct for two machines that share a host name."""
        if self.node.id:
            return self.node.id
        seed = f"{role}:{machine_identity()}:{self.node.port}"
        return str(uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4))

    def hostname(self) -> str:
        return self.node.hostname or socket.gethostname()

    def advertise_address(self, zookeeper: str | None = None) -> str:
        """The address peers use to reach this process (see ``[node] advertise_address``).

        ``zookeeper``: the connect string to route to when it is not ``[cluster] zookeeper``
        (found by zeroconf). ConfigError, naming the options, when the result would be a
        wildcard, or loopback while ZooKeeper is not on loopback.
        """
        n = self.node
        zk = self.cluster.zookeeper if zookeeper is None else zookeeper
        servers = zookeeper_servers(zk) if zk else []
        if n.advertise_address:
            address = n.advertise_address
            source = f"[node] advertise_address = {address!r}"
            if is_wildcard(address):
                raise ConfigError(f"{source} is a wildcard: peers cannot reach it; give this host's address")
        elif not is_wildcard(n.listen_address):
            address = n.listen_address
            source = f"[node] listen_address = {address!r} (advertised: [node] advertise_address is empty)"
        elif servers:
            host, port = servers[0]
            try:
                address = route_source(host, port)
            except OSError as exc:
                raise ConfigError(
                    f"[node] listen_address = {n.listen_address!r} and [node] advertise_address is empty: the advertised "
                    f"address is the one that routes to ZooKeeper at {host}:{port}, but {exc.strerror or exc}; "
                    "set [node] advertise_address"
                ) from exc
            source = f"{address!r}, the address routing to ZooKeeper at {host}:{port} ([node] listen_address is a wildcard),"
        else:
            raise ConfigError(
                f"[node] listen_address = {n.listen_address!r} is a wildcard and ZooKeeper's address is not known yet: "
                "set [node] advertise_address"
            )
        if servers and is_loopback(address) and not all(is_loopback(h) for h, _ in servers):
            raise ConfigError(
                f"{source} is a loopback address, but ZooKeeper ([cluster] zookeeper = {zk!r}) is not on "
                "loopback: peers on other hosts would reach themselves. Set [node] advertise_address (or a specific "
                "[node] listen_address) to this host's address"
            )
        return address


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_identity(files: tuple[str | Path, ...] = MACHINE_ID_FILES) -> str:
    """What tells this machine from others: systemd's /etc/machine-id (or D-Bus's copy of it),
    else the host name."""
    for path in files:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return socket.gethostname()


def zookeeper_servers(connect: str) -> list[tuple[str, int]]:
    """(host, port) of each server of a ZooKeeper connect string ``host[:port][,...][/chroot]``;
    IPv6 addresses in brackets. ConfigError naming ``[cluster] zookeeper`` if malformed."""
    out: list[tuple[str, int]] = []
    for item in connect.split("/", 1)[0].split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        else:
            host, port_text = item, ""
        try:
            port = int(port_text) if port_text else 2181
        except ValueError:
            raise ConfigError(f"[cluster] zookeeper: {item!r} is not HOST:PORT") from None
        if not host or not 0 < port < 65536:
            raise ConfigError(f"[cluster] zookeeper: {item!r} is not HOST:PORT")
        out.append((host, port))
    return out


def is_wildcard(address: str) -> bool:
    """0.0.0.0, :: (and the empty string): every interface, no one address."""
    try:
        return not address or ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False  # a host name


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or a name, resolved) is on loopback; an unresolvable name is not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def route_source(host: str, port: int) -> str:
    """This host's source address on the route to ``host:port``: a UDP socket's ``connect``
    only picks the route (no packet is sent); OSError if there is none."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.connect(sockaddr)
        return str(s.getsockname()[0])


ROLE_SECTIONS = {
    "bootstrap": ("node", "cluster", "heartbeat", "auth", "ec2", "images"),
    "groupmanager": ("node", "cluster", "heartbeat", "auth", "events", "monitoring", "groupmanager", "templates"),
    "localcontroller": ("node", "cluster", "heartbeat", "auth", "monitoring", "localcontroller", "templates"),
}
#: [groupmanager] power_saving_action's values; the first powers the host off.
POWER_SAVING_ACTIONS = ("SHUTDOWN", "SUSPEND_TO_RAM", "SUSPEND_TO_DISK", "SUSPEND_TO_BOTH")
POWER_OFF = POWER_SAVING_ACTIONS[0]

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


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(section_type: type) -> dict[str, Any]:
    """A section's option types, resolved once: resolving the string annotations costs
    milliseconds a call, and a process may load many configurations (``localcontroller.many``
    loads hundreds)."""
    if section_type not in _HINTS:
        _HINTS[section_type] = get_type_hints(section_type)
    return _HINTS[section_type]


def from_dict(data: dict[str, Any]) -> Settings:
    settings = Settings()
    for section, values in data.items():
        if not hasattr(settings, section):
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        group = getattr(settings, section)
        hints = _hints(type(group))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"[{section}] unknown option {key!r}")
            setattr(group, key, _coerce(section, key, value, hints[key]))
    validate(settings)
    return settings


def parse_multicast_group(value: str) -> tuple[str, int]:
    """``"ADDR:PORT"`` as ``(ADDR, PORT)``: an IPv4 multicast address (224.0.0.0/4) and a port
    in 1..65535; a ConfigError naming ``[heartbeat] multicast_group`` otherwise."""
    where = "[heartbeat] multicast_group"
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: {value!r} must be ADDR:PORT, e.g. \"239.23.1.1:5555\" (the port is required)")
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(f"{where}: {host!r} in {value!r} is not an IPv4 address (ADDR:PORT, e.g. \"239.23.1.1:5555\")") from None
    if not addr.is_multicast:
        raise ConfigError(f"{where}: {host} is not a multicast address (224.0.0.0/4; e.g. 239.23.1.1)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: port {port!r} in {value!r} must be a number in 1..65535")
    return str(addr), int(port)


def check_heartbeat(s: HeartbeatSettings) -> None:
    """ConfigError naming the option when ``[heartbeat]``'s multicast options cannot work."""
    if s.multicast_group:
        parse_multicast_group(s.multicast_group)
    if not 0 <= s.multicast_ttl <= 255:
        raise ConfigError("[heartbeat] multicast_ttl must be in 0..255")
    if s.multicast_interface:
        try:
            addr = ipaddress.IPv4Address(s.multicast_interface)
        except ValueError:
            raise ConfigError(f"[heartbeat] multicast_interface: {s.multicast_interface!r} must be the IPv4 address "
                              "of this host's interface on the heartbeat network (empty = the advertised address)") from None
        if addr.is_unspecified or addr.is_multicast:
            raise ConfigError(f"[heartbeat] multicast_interface: {addr} is not an interface address "
                              "(give the address this host has on the heartbeat network)")


def check_ec2(s: Ec2Settings) -> None:
    if not 0 <= s.listen_port < 65536:
        raise ConfigError("[ec2] listen_port must be in 0..65535")
    for key, secret in s.access_keys.items():
        if not isinstance(secret, str) or not secret or not key:
            raise ConfigError("[ec2] access_keys: each key id needs a non-empty secret string")
    if not s.instance_types:
        raise ConfigError("[ec2] instance_types: offer at least one")
    for name, size in s.instance_types.items():
        if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in size)
                or size[0] < 1 or size[1] < 1024):
            raise ConfigError(f"[ec2] instance_types: {name} must be [vcpus >= 1, memory KiB >= 1024]")


def check_images(s: ImagesSettings) -> None:
    if not s.directory.startswith("/"):
        raise ConfigError(f"[images] directory must be an absolute path, got {s.directory!r}")
    if s.max_upload_bytes < 1 or s.min_upload_rate < 1 or s.max_concurrent_uploads < 1:
        raise ConfigError("[images] max_upload_bytes, min_upload_rate and max_concurrent_uploads must be >= 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", s.pool):
        raise ConfigError(f"[images] pool: {s.pool!r} is not a valid pool name (letters, digits, '.', '_', '-')")


_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}")


def check_vif(s: Settings) -> None:
    for section in ("groupmanager", "localcontroller"):
        plugins = getattr(s, section).vif_plugins
        if not all(isinstance(p, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,62}", p) for p in plugins) or len(set(plugins)) != len(plugins):
            raise ConfigError(f"[{section}] vif_plugins must name plugins (e.g. [\"linux_bridge\"]), each once")
    if s.groupmanager.vif_uplink and not _IFNAME.fullmatch(s.groupmanager.vif_uplink):
        raise ConfigError(f"[groupmanager] vif_uplink: {s.groupmanager.vif_uplink!r} is not a device name (1-15 characters)")
    if not _IFNAME.fullmatch(s.groupmanager.vif_bridge):
        raise ConfigError(f"[groupmanager] vif_bridge: {s.groupmanager.vif_bridge!r} is not a device name (1-15 characters)")
    if s.groupmanager.vif_mtu and not 68 <= s.groupmanager.vif_mtu <= 65535:
        raise ConfigError("[groupmanager] vif_mtu must be 0 (the host's default) or 68..65535")
    if s.localcontroller.vif_datapath_type not in ("system", "netdev"):
        raise ConfigError("[localcontroller] vif_datapath_type must be 'system' or 'netdev'")
    if s.localcontroller.vrs and "ovs" not in s.localcontroller.vif_plugins:
        raise ConfigError("[localcontroller] vrs needs the ovs VIF plugin (vif_plugins = [\"ovs\"]): its rows go to vif_ovsdb")
    if s.localcontroller.vrs_audit_interval <= 0:
        raise ConfigError("[localcontroller] vrs_audit_interval must be > 0")
    if not s.localcontroller.vif_ovsdb.startswith(("unix:", "tcp:", "ssl:")):
        raise ConfigError("[localcontroller] vif_ovsdb must be an OVSDB connection string: unix:PATH, tcp:ADDR:PORT or ssl:ADDR:PORT")


def check_keys(s: ClusterSettings) -> None:
    if not s.key:
        raise ConfigError("[cluster] key must not be empty")
    if not all(isinstance(k, str) and k for k in s.accept_keys):
        raise ConfigError("[cluster] accept_keys must be a list of keys (non-empty strings)")


def read_key_file(s: ClusterSettings) -> None:
    """``[cluster] key`` and ``accept_keys`` from ``[cluster] key_file``; ConfigError naming it."""
    where = f"[cluster] key_file = {s.key_file!r}"
    try:
        data = tomllib.loads(Path(s.key_file).read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # Not the parser's message: it may quote the line, and so the key.
        raise ConfigError(f"{where}: not TOML (key = \"...\", accept_keys = [...])") from exc
    unknown = sorted(set(data) - {"key", "accept_keys"})
    if unknown or not isinstance(data.get("key"), str) or not isinstance(data.get("accept_keys", []), list):
        raise ConfigError(f"{where}: it must hold key = \"...\" and optionally accept_keys = [...], nothing else"
                          + (f" (found {', '.join(unknown)})" if unknown else ""))
    s.key, s.accept_keys = data["key"], list(data.get("accept_keys", []))
    check_keys(s)


def check_tls(s: NodeSettings) -> None:
    """Both of ``[node] tls_cert`` and ``tls_key``, or neither; ``tls_ca`` only with them."""
    if bool(s.tls_cert) != bool(s.tls_key):
        given, missing = ("tls_cert", "tls_key") if s.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(f"[node] {given} is set but [node] {missing} is empty: give both (TLS) or neither (plain HTTP)")
    if s.tls_ca and not s.tls_cert:
        raise ConfigError("[node] tls_ca is set without [node] tls_cert and tls_key: it only checks peers when TLS is on")


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
    if s.groupmanager.power_saving_action not in POWER_SAVING_ACTIONS:
        raise ConfigError("[groupmanager] power_saving_action must be SHUTDOWN, SUSPEND_TO_RAM, SUSPEND_TO_DISK or SUSPEND_TO_BOTH")
    if s.groupmanager.idle_time < 0 or s.groupmanager.reserved_nodes < 0 or s.groupmanager.wakeup_time <= 0:
        raise ConfigError("[groupmanager] idle_time and reserved_nodes must be >= 0, wakeup_time > 0")
    if s.groupmanager.rebalance_interval < 0 or s.groupmanager.rebalance_moves < 0 or s.groupmanager.rebalance_quiet < 0:
        raise ConfigError("[groupmanager] rebalance_interval, rebalance_moves and rebalance_quiet must be >= 0")
    check_vif(s)
    if len(s.localcontroller.network_capacity) != 2:
        raise ConfigError("[localcontroller] network_capacity must be [rx, tx]")
    # The template policy's own rules (a late import: snooze.domainxml imports this module).
    from snooze.domainxml import check_settings

    check_settings(s.templates)
    check_heartbeat(s.heartbeat)
    if s.monitoring.full_report_every < 1:
        raise ConfigError("[monitoring] full_report_every must be >= 1 (1 = every report whole)")
    check_keys(s.cluster)
    check_tls(s.node)
    check_ec2(s.ec2)
    check_images(s.images)


def parse_override(item: str) -> tuple[str, Any]:
    """``SECTION.OPTION=VALUE`` (a role's and ``snooze cluster up``'s ``--set``): the dotted name
    and the value, read as TOML (``2``, ``true``, ``["a"]``), else taken as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError(f"--set expects SECTION.OPTION=VALUE, got {item!r}")
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


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
    if settings.cluster.key_file:
        read_key_file(settings.cluster)
    if settings.node.port == 0:
        settings.node.port = DEFAULT_PORTS[role]
    return settings


def to_dict(settings: Settings, role: str) -> dict[str, Any]:
    return {s: dataclasses.asdict(getattr(settings, s)) for s in ROLE_SECTIONS[role]}


def _toml_key(k: str) -> str:
    """A bare key when TOML allows one, else quoted (``"m1.small"``: a bare dotted key nests)."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
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
