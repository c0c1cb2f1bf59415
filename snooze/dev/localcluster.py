"""A complete Snooze cluster on one machine: ZooKeeper, a bootstrap, group managers and local
controllers on libvirt's test driver, each its own process.

Every process runs from a generated config in the state dir and logs there; ``cluster.json``
records the ZooKeeper address, the bootstrap URL and every process (role, id, pid, port), which
is all ``down`` needs to stop exactly what ``up`` started. It is rewritten after each process
starts, so even an ``up`` killed half-way leaves a record of what it started.

Each cluster has its own random key (the HMAC on every internal message): it is written only
in the roles' config files, mode 0600, in a state dir of mode 0700. ``snooze cluster
rotate-key`` replaces it while the cluster runs (``snooze.dev.keyrotation``).

With ``tls`` (``snooze cluster up --tls``) every HTTP listener serves https with a certificate
for 127.0.0.1 signed by an authority of this cluster's own (``snooze.dev.tlscerts``, in
``tls/``); ``cluster.json`` gives the bootstrap's URL as https and the authority's certificate
as ``caCert``, which the ``snooze`` command checks the bootstrap with.

A state dir whose recorded processes are all gone (the machine rebooted, ``up`` was killed) is
stale: the next ``up`` cleans it up. Only PIDs recorded there, and only while they still run
what we started (``snooze.procs``), are ever signalled.

With ``netns`` (``snooze cluster up --netns``) every process, ZooKeeper included, runs in its own
network namespace on a private subnet joined by a bridge in a fabric namespace
(``snooze.dev.netns``); each listens on, and advertises, its own address there. Clients in the
root namespace still find the bootstrap at ``http://127.0.0.1:BASE_PORT``: a forwarder process
(recorded as ``forwarder``) relays that port into the bootstrap's namespace. ``cluster.json``
then also gives each process's ``netns`` and ``address``, every namespace made (``namespaces``,
recorded before each is created, so ``down`` and the next ``up`` remove them even after a crash)
and ``fabric``: ``{"netns", "subnet", "address", "links": {PROCESS_ID: INTERFACE}}``, the
fabric-side end of each process's link (``ip -n FABRIC link set INTERFACE down`` cuts it).

With ``hypervisor="qemu"`` (``snooze cluster up --hypervisor qemu``, which implies netns) every
local controller runs on a real hypervisor: a private libvirtd + QEMU "host"
(``snooze.dev.sim.libvirtd``) started in the local controller's own network namespace, the local
controller itself entering that host's mount and network namespaces (so its image cache and
overlays under ``/var/lib/snooze`` are the host's own, at the same paths on every host). Each
host namespace holds a bridge ``br-vm`` with the VM subnet's gateway (``.1`` of
``groupmanager.virtual_machine_subnet``): a guest is reached with ``ip netns exec NETNS curl
http://ADDRESS/``. Migration streams go over the fabric (``localcontroller.migration_uri`` =
``tcp://`` the host's fabric address, method ``nonshared-incremental``); guests run under TCG.
The bootstrap keeps its image repository in the state dir's ``images/``, and the guest image
``snooze-tiny`` (``snooze.dev.guestimage``) is uploaded once the hierarchy has formed.
``cluster.json`` then also gives ``images`` (the repository's URL, the bootstrap's), per local
controller ``hypervisorUri`` and ``host``, ``hypervisors`` (the hosts' records, for ``down``)
and ``qemuDir`` (the hosts' state, a short path under /tmp: libvirt's sockets live there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snooze import config as cfg
from snooze.auth.tokens import Role, TokenRecord, make_token, seed_value
from snooze.dev import netns, ovs
from snooze.dev.ports import free_port, free_udp_port
from snooze.dev.rabbitmq import RabbitMQError, RabbitMQServer, stop_recorded_broker
from snooze.dev.sim import libvirtd
from snooze.dev.tlscerts import TlsFiles, TlsFilesError, make_local_tls
from snooze.dev.zookeeper import ZooKeeperEnsemble, ZooKeeperError, ZooKeeperServer
from snooze.procs import alive, kill_group, kill_groups, open_log, running

#: ``ClusterOptions.vif``: none, or a VIF plugin every host loads.
VIF_PLUGINS = ("", "linux_bridge", "ovs")

#: The CNI agent's port in a local controller's own namespace (Contrail's agent's).
CNI_AGENT_PORT = 9091

# Kept for the benchmarks, which import it from here.
_alive = alive

# Options never written to cluster.json: they are secrets, kept in the 0600 config files only.
SECRET_OPTIONS = ("key", "bmc_password", "ec2_secret_key")

MODULES = {"bootstrap": "bootstrap", "groupmanager": "groupmanager", "localcontroller": "localcontroller"}

HYPERVISORS = ("test", "qemu")
#: ``[node] http_max_connections_per_client``'s default, raised with the cluster's size on 127.0.0.1.
LIMIT_PER_ADDRESS = cfg.NodeSettings().http_max_connections_per_client
#: The heartbeat timeout the join timings' defaults are sized for.
DEFAULT_HEARTBEAT_TIMEOUT = cfg.HeartbeatSettings().timeout
#: The guest image the launcher uploads to a QEMU cluster's repository.
GUEST_IMAGE = "snooze-tiny"
#: Directories each QEMU host keeps for itself (the local controller's cache and overlays).
HOST_PRIVATE_DIRS = ("/var/lib/snooze",)


class ClusterError(RuntimeError):
    pass


class Interrupted(ClusterError):
    """``up`` was asked to stop (a signal) before the cluster had formed; nothing is left running."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (also if it existed, wider, before)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def host_xml(cpus: int, memory_kib: int, domains: list[str] | None = None) -> str:
    """A libvirt test-driver host file; ``domains`` are names of domains already running there."""
    running = "".join(
        f'  <domain type="test"><name>{name}</name><memory>262144</memory><vcpu>1</vcpu>'
        "<os><type>hvm</type></os></domain>\n"
        for name in domains or []
    )
    return (
        "<node>\n  <cpu>\n    <mhz>2400</mhz>\n    <model>x86_64</model>\n"
        f"    <active>{cpus}</active>\n    <total>{cpus}</total>\n    <nodes>1</nodes>\n"
        f"    <sockets>1</sockets>\n    <cores>{cpus}</cores>\n    <threads>1</threads>\n  </cpu>\n"
        f"  <memory>{memory_kib}</memory>\n{running}</node>\n"
    )


@dataclass
class ClusterOptions:
    gms: int = 3
    lcs: int = 4
    base_port: int = 5000
    zk_port: int = 0
    heartbeat_interval: float = 3.0
    heartbeat_timeout: float = 10.0
    session_timeout: float = 10.0
    monitoring_interval: float = 3.0
    lc_cpus: int = 8
    lc_memory_gib: int = 16
    # The cluster's HMAC key: a fresh random one per cluster, never a fixed string.
    key: str = field(default_factory=lambda: secrets.token_hex(32))
    domains_per_lc: int = 0  # domains already running on each simulated host at start
    energy: bool = False  # energy management on; each LC runs under a simulated IPMI BMC
    idle_time: float = 120.0
    reserved_nodes: int = 1
    bmc_user: str = "admin"
    # IPMI v2 (lanplus) passwords are at most 20 bytes: 16 hex digits, 64 random bits.
    bmc_password: str = field(default_factory=lambda: secrets.token_hex(8))
    extra: dict[str, Any] = field(default_factory=dict)  # "section.option" -> value for every role
    # Every process in its own network namespace (snooze.dev.netns); needs root and iproute2.
    netns: bool = False
    # With netns: heartbeats also go to a multicast group on the fabric (the original's LAN way).
    multicast: bool = False
    # The bootstrap's EC2-compatible API on the port after the last local controller's, with a
    # demo key pair (in cluster.json); not with netns (only the bootstrap's port is forwarded).
    ec2: bool = True
    ec2_access_key: str = field(default_factory=lambda: "AKSNOOZE" + secrets.token_hex(6).upper())
    ec2_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    # "test": libvirt's test driver (fast, nothing runs); "qemu": each LC on a private libvirtd +
    # QEMU host in its own network namespace (implies netns; needs root and QEMU).
    hypervisor: str = "test"
    # With qemu: upload the guest image (built when missing) as "snooze-tiny" once formed.
    guest_image: bool = True
    # With qemu: the repository is a libvirt dir storage pool on a private libvirtd of its own.
    repository_pool: bool = True
    # Local controllers per process (``localcontroller.many``): above 1, for clusters of
    # hundreds or thousands of simulated hosts; each is still a whole local controller.
    lcs_per_process: int = 1
    # ZooKeeper servers: 1 (standalone) or an ensemble of this many (3, 5) on 127.0.0.1.
    zookeeper_ensemble: int = 1
    # With lcs_per_process > 1: local controllers of one process starting at the same time.
    start_concurrency: int = 20
    # With lcs_per_process > 1: the niceness of those processes. They stand for hosts that
    # each have their own CPUs; on one small machine they would otherwise take the cores from
    # the group managers and ZooKeeper, which then fall behind (heartbeats read too late).
    lcs_nice: int = 10
    # Each local controller serves the CNI agent snooze-cni asks (cluster.json: its "cniAgent"
    # URL and a ready "cniConfig" network configuration list): with netns on 127.0.0.1:9091 of
    # its namespace, else on the ports after the last role's (and the EC2 API's). Not with
    # lcs_per_process > 1 (a scale test's simulated hosts run no containers).
    cni: bool = True
    # VIF plugging (os-vif's model, docs/networking.md): "" (none: a domain's interface is its
    # template's), "linux_bridge" or "ovs". Each group manager chooses it and each local
    # controller loads it; with "ovs" every host runs its own ovsdb-server and ovs-vswitchd
    # (userspace datapath) in its namespace, and cluster.json names its OVSDB ("ovsdb").
    # Implies netns (the plugins make devices in the hosts' namespaces, never in the root one).
    vif: str = ""
    # Options of single local controllers ("lc-2" -> {"section.option": value}), over ``extra``
    # (e.g. one host pinned to older VIF object versions, as in a rolling upgrade).
    lc_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The public API needs a token (snooze.auth): every role with [auth] enabled, an admin token
    # seeded by the bootstrap and given in cluster.json ("adminToken"), audit logs in logs/.
    auth: bool = False
    # "rabbitmq": a private RabbitMQ broker (snooze.dev.rabbitmq) the group leader publishes the
    # event stream to (cluster.json: "rabbitmq" with its URL); "" = none. Not with netns.
    events: str = ""
    # Every HTTP listener serves https with a certificate of this cluster's own authority
    # (cluster.json: caCert); peers call each other over https. Not with netns.
    tls: bool = False


def _tail(log: str, lines: int = 15) -> str:
    """The last lines of a log, to quote in an error: a test's temporary directory (and the log
    with it) may be gone by the time anyone reads the failure."""
    try:
        text = Path(log).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; its last lines:\n" + "\n".join(text) if text else ""


def _lines_about(log: str, ident: str, lines: int = 8) -> list[str]:
    """The last warnings and errors of a shared log that name ``ident``."""
    try:
        text = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    word = re.compile(rf"\b{re.escape(ident)}\b")
    return [line for line in text if (" ERROR " in line or " WARNING " in line) and word.search(line)][-lines:]


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _http_json(url: str, timeout: float = 2.0, token: str | None = None, context: ssl.SSLContext | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=_auth(token)), timeout=timeout, context=context) as resp:
        return json.loads(resp.read() or b"null")


class LocalCluster:
    def __init__(self, state_dir: Path, options: ClusterOptions | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.options = options or ClusterOptions()
        self.zk: ZooKeeperServer | None = None
        # With zookeeper_ensemble > 1: the ensemble (then ``zk`` stays None).
        self.ensemble: ZooKeeperEnsemble | None = None
        self.processes: list[dict[str, Any]] = []
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._spares: set[int] = set()  # ports handed out by _spare_port
        self.fabric: netns.Fabric | None = None
        self.forwarder: dict[str, Any] | None = None
        # With auth: the admin token the bootstrap seeds (its record) and the token itself.
        self.rabbitmq: RabbitMQServer | None = None
        self.admin_record: TokenRecord | None = None
        self.admin_token: str | None = None
        if self.options.auth:
            self.admin_record, self.admin_token = make_token("admin", Role.ADMIN, "local cluster")
        self.hypervisors: libvirtd.LibvirtdCluster | None = None
        self.repository_host: libvirtd.LibvirtdCluster | None = None
        self.qemu_dir: Path | None = None
        self._client_tls: ssl.SSLContext | None = None
        if self.options.vif not in VIF_PLUGINS:
            raise ClusterError(f"vif must be one of {', '.join(repr(v) for v in VIF_PLUGINS)}, not {self.options.vif!r}")
        if self.options.vif and not self.options.netns:
            # The plugins make bridges and taps: only in namespaces of the cluster's own.
            self.options = dataclasses.replace(self.options, netns=True)
        self.switches: dict[str, ovs.OvsSwitch] = {}
        if self.options.hypervisor == "qemu" and not self.options.netns:
            # Hosts live in namespaces joined by the fabric: so does every process.
            self.options = dataclasses.replace(self.options, netns=True)
        if self.options.netns:
            self.fabric = netns.Fabric.for_state_dir(self.state_dir, on_change=self._namespaces_changed)

    @property
    def zookeeper_address(self) -> str:
        """The connection string the roles get: the one server's, or every server of the ensemble."""
        if self.ensemble is not None:
            return self.ensemble.address
        assert self.zk is not None
        return self.zk.address

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def bootstrap_url(self) -> str:
        return f"{'https' if self.options.tls else 'http'}://127.0.0.1:{self.options.base_port}"

    @property
    def tls_files(self) -> TlsFiles | None:
        """With ``tls``: the authority's certificate, and the certificate and key every process serves with."""
        if not self.options.tls:
            return None
        directory = self.state_dir / "tls"
        return TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")

    def client_tls(self) -> ssl.SSLContext | None:
        """With ``tls``: what a client here checks the processes' certificates with (made once
        the authority's certificate exists, then kept)."""
        files = self.tls_files
        if files is None:
            return None
        if self._client_tls is None:
            self._client_tls = ssl.create_default_context(cafile=str(files.ca))
        return self._client_tls

    @property
    def qemu(self) -> bool:
        return self.options.hypervisor == "qemu"

    @property
    def vm_gateway(self) -> str:
        """The VM subnet's first address with its prefix (what each host's br-vm holds)."""
        subnet = self.options.extra.get("groupmanager.virtual_machine_subnet") or cfg.GroupManagerSettings().virtual_machine_subnet
        network = ipaddress.ip_network(str(subnet), strict=False)
        return f"{network.network_address + 1}/{network.prefixlen}"

    @property
    def guest_network(self) -> bool:
        """Guests on one network across hosts (``--hypervisor qemu --vif``), its gateway in the
        fabric namespace; else each host's guests are on the host's own bridge."""
        return self.qemu and bool(self.options.vif)

    def guest_namespaces(self) -> dict[str, str]:
        """Local controller id -> the namespace its guests are reached from."""
        lcs = [p for p in self.processes if p["role"] == "localcontroller"]
        if self.guest_network:
            assert self.fabric is not None
            return {p["id"]: self.fabric.netns for p in lcs}
        return {p["id"]: p["netns"] for p in lcs if p.get("netns")}

    @property
    def images_url(self) -> str | None:
        """The image repository's URL for clients here (the bootstrap's; with qemu only)."""
        return self.bootstrap_url if self.qemu else None

    def _repository_url(self) -> str:
        """The repository as the local controllers reach it: the bootstrap's fabric address."""
        assert self.fabric is not None
        return f"http://{self.fabric.plan_host('bootstrap-1').address}:{self.options.base_port}"

    def _host_uri(self, index: int, within: str = "") -> str:
        assert self.qemu_dir is not None
        return f"qemu+unix:///system?socket={self.qemu_dir / within / f'host{index}' / 'run/libvirt/libvirt-sock'}"

    @property
    def ec2_port(self) -> int | None:
        """The EC2 API's port (the one after the last local controller's), or None when off."""
        o = self.options
        return o.base_port + 1 + o.gms + o.lcs if o.ec2 and not o.netns else None

    def cni_agent_port(self, index: int) -> int | None:
        """The CNI agent's port of local controller ``lc-INDEX`` (on 127.0.0.1 of its namespace
        with netns), or None when the cluster runs no agents."""
        o = self.options
        if not o.cni or o.lcs_per_process > 1:
            return None
        if o.netns:
            return CNI_AGENT_PORT
        return o.base_port + o.gms + o.lcs + (1 if self.ec2_port is not None else 0) + index

    def _cni(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Local controller ``lc-INDEX``'s CNI options and what cluster.json says of them: its
        agent's URL and a network configuration list for snooze-cni (written here)."""
        port = self.cni_agent_port(index)
        if port is None:
            return {}, {}
        node = f"lc-{index}"
        records = self.state_dir / "cni" / node
        records.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}"
        conflist = {"cniVersion": "1.0.0", "name": f"snooze-{node}", "plugins": [{"type": "snooze-cni", "snooze": {
            "agent": url, "network": "default", "mode": "veth", "mtu": 1500, "pollTimeout": 1.0, "pollRetries": 10,
            "recordDir": str(records)}}]}
        path = self.state_dir / "cni" / f"{node}.conflist"
        path.write_text(json.dumps(conflist, indent=2) + "\n")
        return ({"localcontroller.cni_agent_port": port, "localcontroller.cni_record_directory": str(records)},
                {"cniAgent": url, "cniConfig": str(path)})

    @property
    def multicast_group(self) -> str:
        """With ``multicast``: the heartbeats' group on the fabric, ADDR:PORT (else empty)."""
        if not (self.options.multicast and self.fabric is not None):
            return ""
        # Any port will do inside the namespaces, but not one a process's own UDP socket holds.
        n = 1 + self.options.gms + self.options.lcs
        port = 4999 if not self.options.base_port <= 4999 < self.options.base_port + n else self.options.base_port + n
        return f"239.213.{self.fabric.octet}.1:{port}"

    # -- configuration -------------------------------------------------------------------
    def _settings(self, role: str, node_id: str, port: int, address: str = "127.0.0.1") -> cfg.Settings:
        o = self.options
        data: dict[str, dict[str, Any]] = {
            "node": {"id": node_id, "port": port, "listen_address": address},
            "cluster": {"key": o.key, "zookeeper": self.zookeeper_address, "session_timeout": o.session_timeout},
            "heartbeat": {"interval": o.heartbeat_interval, "timeout": o.heartbeat_timeout},
        }
        if (files := self.tls_files) is not None:
            data["node"].update(tls_cert=str(files.cert), tls_key=str(files.key), tls_ca=str(files.ca))
        if role == "bootstrap" and self.ec2_port is not None:
            data["ec2"] = {"listen_port": self.ec2_port, "access_keys": {o.ec2_access_key: o.ec2_secret_key}}
        if self.fabric is not None:
            data["node"]["advertise_address"] = address
            if self.multicast_group:
                data["heartbeat"]["multicast_group"] = self.multicast_group
                data["heartbeat"]["multicast_interface"] = address
        if role != "bootstrap":
            data["monitoring"] = {"interval": o.monitoring_interval, "summary_interval": o.monitoring_interval}
        data["auth"] = {"enabled": o.auth}
        if role == "groupmanager" and self.rabbitmq is not None:
            data["events"] = {"amqp_url": self.rabbitmq.url}
        if o.auth:
            data["auth"]["audit_log"] = str(self.state_dir / "logs" / f"audit-{node_id}.jsonl")
            if role == "bootstrap":
                assert self.admin_record is not None
                data["auth"]["seed_admin_token"] = seed_value(self.admin_record)
        if role != "localcontroller" and o.lcs > LIMIT_PER_ADDRESS // 2 and self.fabric is None:
            # Every process here is one client address (127.0.0.1): the per-address limit, meant
            # for one client host, would count the whole cluster. Each local controller may hold
            # one connection to its group manager, and during a join storm one to the leader.
            data["node"]["http_max_connections_per_client"] = LIMIT_PER_ADDRESS + o.lcs + o.gms
        if self.qemu:
            if "images" in cfg.ROLE_SECTIONS[role]:
                data["images"] = {"directory": str(self.state_dir / "images")}
                if o.repository_pool:
                    data["images"]["libvirt_uri"] = self._host_uri(1, "repository")
            if "templates" in cfg.ROLE_SECTIONS[role]:
                data["templates"] = {"bridges": [libvirtd.VM_BRIDGE], "default_bridge": libvirtd.VM_BRIDGE}
            if role == "localcontroller":
                data["localcontroller"] = {"accelerator": "tcg", "migration_method": "nonshared-incremental",
                                           "image_repository": self._repository_url()}
        if role == "localcontroller" and o.heartbeat_timeout < DEFAULT_HEARTBEAT_TIMEOUT:
            # Compressed heartbeats (tests, demos): the join's backoff and re-join spread shrink
            # with them, so a host cut off for a while is back as soon after the cut as in a
            # deployment with the default timings (defaults are sized for a 10 s timeout).
            scale = o.heartbeat_timeout / DEFAULT_HEARTBEAT_TIMEOUT
            lc_defaults = cfg.LocalControllerSettings()
            data.setdefault("localcontroller", {}).update(
                join_backoff_base=lc_defaults.join_backoff_base * scale,
                join_backoff_cap=max(lc_defaults.join_backoff_base * scale, lc_defaults.join_backoff_cap * scale),
                rejoin_spread=lc_defaults.rejoin_spread * scale)
        if o.vif and role == "groupmanager":
            data.setdefault("groupmanager", {})["vif_plugins"] = [o.vif]
            if self.guest_network:
                data["groupmanager"]["vif_uplink"] = netns.GUEST_UPLINK
        if o.vif and role == "localcontroller":
            data.setdefault("localcontroller", {})["vif_plugins"] = [o.vif]
            if o.vif == "ovs":
                # With Nuage VRS's tables kept in each host's OVSDB, audited every 2 s.
                data["localcontroller"].update(vif_ovsdb=f"unix:{self._ovs_dir(node_id) / 'db.sock'}", vif_datapath_type="netdev",
                                               vrs=True, vrs_audit_interval=2.0)
        if role == "groupmanager" and o.energy:
            data.setdefault("groupmanager", {}).update({"energy_management": True, "idle_time": o.idle_time,
                                                        "reserved_nodes": o.reserved_nodes,
                                                        "wakeup_time": max(30.0, 4 * o.heartbeat_timeout)})
        for dotted, value in o.extra.items():
            section, key = dotted.split(".", 1)
            if section in cfg.ROLE_SECTIONS[role]:
                data.setdefault(section, {})[key] = value
        return cfg.from_dict(data)

    def _write_config(self, role: str, node_id: str, port: int, extra: dict[str, Any] | None = None,
                      address: str = "127.0.0.1") -> Path:
        settings = self._settings(role, node_id, port, address)
        for dotted, value in (extra or {}).items():
            section, key = dotted.split(".", 1)
            setattr(getattr(settings, section), key, value)
        path = self.state_dir / "config" / f"{node_id}.toml"
        write_private(path, cfg.render_toml(settings, role, comments=False))  # it holds the key
        return path

    def plan(self) -> list[dict[str, Any]]:
        """Every process of the cluster: role, id, port, config (written), log."""
        o = self.options
        specs: list[dict[str, Any]] = []
        port = o.base_port

        def add(role: str, node_id: str, extra: dict[str, Any] | None = None) -> None:
            nonlocal port
            spec = self._spec(role, node_id, port, extra)
            specs.append(spec)
            port += 1

        add("bootstrap", "bootstrap-1")
        for i in range(1, o.gms + 1):
            add("groupmanager", f"gm-{i}")
        hosts = self.state_dir / "hosts"
        hosts.mkdir(parents=True, exist_ok=True)
        for i in range(1, o.lcs + 1):
            if self.qemu:
                assert self.fabric is not None
                uri = self._host_uri(i)
                extra: dict[str, Any] = {"localcontroller.hypervisor_uri": uri, "localcontroller.remote_uri": uri,
                                         "localcontroller.migration_uri": f"tcp://{self.fabric.plan_host(f'lc-{i}').address}"}
                cni, shown = self._cni(i)
                add("localcontroller", f"lc-{i}", {**extra, **cni, **o.lc_extra.get(f"lc-{i}", {})})
                specs[-1].update({"host": f"host{i}", "hypervisorUri": uri, **shown})
                continue
            xml = hosts / f"lc-{i}.xml"
            names = [f"lc-{i}-vm-{k}" for k in range(1, o.domains_per_lc + 1)]
            xml.write_text(host_xml(o.lc_cpus, o.lc_memory_gib * 1024 * 1024, names))
            extra = {"localcontroller.hypervisor_uri": f"test://{xml}"}
            if o.energy:
                bmc_port = self._spare_port(udp=True)
                extra.update({
                    "localcontroller.power_test_mode": True,
                    "localcontroller.wakeup_driver": "IPMI",
                    "localcontroller.wakeup_options": f"-I lanplus -H 127.0.0.1 -p {bmc_port} -U {o.bmc_user} -P {o.bmc_password}",
                })
            cni, shown = self._cni(i)
            add("localcontroller", f"lc-{i}", {**extra, **cni, **o.lc_extra.get(f"lc-{i}", {})})
            specs[-1].update(shown)
            if o.energy:
                specs[-1]["bmcPort"] = bmc_port
        if o.lcs_per_process > 1:
            # Consecutive local controllers share a process ("lcs-K"), and its log.
            lcs = [spec for spec in specs if spec["role"] == "localcontroller"]
            for index, spec in enumerate(lcs):
                group = f"lcs-{index // o.lcs_per_process + 1}"
                spec.update(process=group, log=str(self.state_dir / "logs" / f"{group}.log"))
        return specs

    def groups(self) -> dict[str, list[dict[str, Any]]]:
        """Processes of several local controllers: their name ("lcs-K") -> their members' specs."""
        out: dict[str, list[dict[str, Any]]] = {}
        for spec in self.processes:
            if spec.get("process"):
                out.setdefault(spec["process"], []).append(spec)
        return out

    def spawn_group(self, name: str) -> int:
        """Start the process of the local controllers of group ``name``; each member records its PID."""
        members = self.groups()[name]
        argv = [sys.executable, "-m", "localcontroller.many", "--start-concurrency", str(self.options.start_concurrency),
                "--nice", str(self.options.lcs_nice)]
        for spec in members:
            argv += ["--config", spec["config"]]
        log_path = members[0]["log"]
        with open_log(log_path, f"{len(members)} local controllers ({members[0]['id']} .. {members[-1]['id']}) starting "
                                f"on 127.0.0.1:{members[0]['port']}..{members[-1]['port']}") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for spec in members:
            spec["pid"] = proc.pid
        self._children[proc.pid] = proc
        return proc.pid

    def _spec(self, role: str, node_id: str, port: int, extra: dict[str, Any] | None) -> dict[str, Any]:
        """One process: its config written, its namespace and address planned (with netns)."""
        address = "127.0.0.1"
        placed: dict[str, Any] = {}
        if self.fabric is not None:
            host = self.fabric.plan_host(node_id)
            address = host.address
            placed = {"netns": host.netns, "address": host.address}
        return {
            "role": role,
            "id": node_id,
            "port": port,
            "config": str(self._write_config(role, node_id, port, extra, address)),
            "log": str(self.state_dir / "logs" / f"{node_id}.log"),
            **placed,
        }

    # -- processes -----------------------------------------------------------------------
    def command(self, spec: dict[str, Any]) -> list[str]:
        argv = [sys.executable, "-m", MODULES[spec["role"]], "--config", spec["config"]]
        host = self._host(spec.get("host"))
        if host is not None:
            # Into the host's mount and network namespaces: nsenter execs, the PID is the role's.
            argv = [*host.enter_argv(), *argv]
        elif spec.get("netns"):
            # ip execs the command: the PID recorded is the role's own.
            argv = ["ip", "netns", "exec", spec["netns"], *argv]
        if spec.get("bmcPort"):
            # The host's power is the BMC's: chassis power on/off starts/stops the LC process.
            o = self.options
            return [sys.executable, "-m", "snooze.dev.sim.bmc", "--port", str(spec["bmcPort"]), "--user", o.bmc_user,
                    "--password", o.bmc_password, "--on", "--log", spec["log"] + ".host", "--", *argv]
        return argv

    def _host(self, name: str | None) -> libvirtd.LibvirtdHost | None:
        if not name or self.hypervisors is None:
            return None
        for host in self.hypervisors.hosts:
            if host.name == name:
                return host
        raise ClusterError(f"no QEMU host {name}")

    def spawn(self, spec: dict[str, Any]) -> int:
        where = f"{spec.get('address', '127.0.0.1')}:{spec['port']}" + (f" in namespace {spec['netns']}" if spec.get("netns") else "")
        with open_log(spec["log"], f"{spec['role']} {spec['id']} starting on {where}") as log:
            proc = subprocess.Popen(
                self.command(spec),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        spec["pid"] = proc.pid
        self._children[proc.pid] = proc
        return proc.pid

    def process(self, node_id: str) -> dict[str, Any]:
        for spec in self.processes:
            if spec["id"] == node_id:
                return spec
        raise ClusterError(f"no process {node_id}")

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one process (kill -9 by default) and reap it. ``node_id`` may name a
        process of several local controllers ("lcs-K"); a local controller that shares one is
        killed with all the others of its process."""
        groups = self.groups()
        spec = groups[node_id][0] if node_id in groups else self.process(node_id)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spec["pid"], sig)
        proc = self._children.pop(spec["pid"], None)
        if proc is not None:
            proc.wait(10)

    def restart(self, node_id: str) -> int:
        """Start a stopped process again with the same config (so the same id)."""
        spec = self.process(node_id)
        if running(spec.get("pid"), spec["config"]):
            raise ClusterError(f"{node_id} is still running")
        pid = self.spawn(spec)
        self.write_manifest()
        return pid

    def add_process(self, role: str, node_id: str, extra: dict[str, Any] | None = None, port: int | None = None) -> dict[str, Any]:
        """Start one more process of ``role`` (``extra``: "section.option" -> value)."""
        # In its own namespace any port is free; on 127.0.0.1 one must be found.
        port = port or (self.options.base_port if self.fabric is not None else self._spare_port())
        extra = dict(extra or {})
        if role == "localcontroller" and "localcontroller.hypervisor_uri" not in extra:
            xml = self.state_dir / "hosts" / f"{node_id}.xml"
            xml.write_text(host_xml(self.options.lc_cpus, self.options.lc_memory_gib * 1024 * 1024))
            extra["localcontroller.hypervisor_uri"] = f"test://{xml}"
        spec = self._spec(role, node_id, port, extra)
        if self.fabric is not None:
            self._netns_call(self.fabric.add_host, node_id)
        self.processes.append(spec)
        self.spawn(spec)
        self.write_manifest()
        return spec

    def cut(self, process_id: str) -> None:
        """With netns: cut ``process_id`` (a role's id, or "zookeeper") off the fabric."""
        if self.fabric is None:
            raise ClusterError("only a cluster started with netns can cut a link")
        self._netns_call(self.fabric.cut, process_id)

    def heal(self, process_id: str) -> None:
        """With netns: plug ``process_id`` back into the fabric."""
        if self.fabric is None:
            raise ClusterError("only a cluster started with netns can heal a link")
        self._netns_call(self.fabric.heal, process_id)

    def restart_zookeeper(self, down_for: float = 0.0) -> None:
        """Stop ZooKeeper and start it again on the same port and data dir."""
        if self.ensemble is not None:
            raise ClusterError("an ensemble's servers are stopped and restarted one by one (cluster.ensemble)")
        assert self.zk is not None
        self.zk.stop()
        time.sleep(down_for)
        self.zk.start()
        self.write_manifest()

    # -- start-up ------------------------------------------------------------------------
    def _spare_port(self, *, udp: bool = False) -> int:
        """A free port for a helper of the cluster (ZooKeeper, a simulated BMC), outside the
        roles' range and unlike any handed out before: chosen before the roles bind theirs, a
        port merely free now could be one of them (CI saw a BMC take a local controller's)."""
        o = self.options
        planned = set(range(o.base_port, o.base_port + 2 + o.gms + o.lcs)) | {port for port, _ in self.ports()}
        for _ in range(200):
            port = free_udp_port() if udp else free_port()
            if port not in planned and port not in self._spares:
                self._spares.add(port)
                return port
        raise ClusterError(f"no free port outside the cluster's own ({min(planned)}..{max(planned)})")

    def ports(self) -> list[tuple[int, str]]:
        """Every fixed port the cluster will listen on (on 127.0.0.1), with what listens there."""
        o = self.options
        if o.netns:
            # The roles and ZooKeeper listen in their own namespaces, where every port is free.
            return [(o.base_port, "the bootstrap's forwarder")]
        names = ["the bootstrap"] + [f"group manager gm-{i}" for i in range(1, o.gms + 1)]
        names += [f"local controller lc-{i}" for i in range(1, o.lcs + 1)]
        used = [(o.base_port + i, name) for i, name in enumerate(names)]
        if self.ec2_port is not None:
            used.append((self.ec2_port, "the EC2 API"))
        for i in range(1, o.lcs + 1):
            if (agent := self.cni_agent_port(i)) is not None:
                used.append((agent, f"lc-{i}'s CNI agent"))
        if o.zk_port:
            used.append((o.zk_port, "ZooKeeper"))
        return used

    def check_ports(self) -> None:
        """Fail, naming each one, if a port the cluster needs is taken (before anything starts)."""
        busy = [f"{port} ({what})" for port, what in self.ports() if not (0 < port < 65536 and _port_free(port))]
        if busy:
            raise ClusterError(f"port{'s' if len(busy) > 1 else ''} {', '.join(busy)} on 127.0.0.1 "
                               f"{'are' if len(busy) > 1 else 'is'} in use or invalid; choose another --base-port"
                               + (" or --zk-port" if self.options.zk_port and not self.options.netns else ""))

    def check_options(self) -> None:
        """Refuse what netns cannot do, before anything starts."""
        o = self.options
        if o.multicast and not o.netns:
            raise ClusterError("multicast heartbeats need --netns (loopback has no multicast)")
        if o.netns and o.energy:
            raise ClusterError("--energy is not supported with --netns (the simulated BMCs listen on 127.0.0.1)")
        if o.netns and o.tls:
            raise ClusterError("--tls is not supported with --netns (its certificate names 127.0.0.1, not the namespaces' addresses)")
        if o.lcs_per_process < 1 or o.zookeeper_ensemble < 1:
            raise ClusterError("--lcs-per-process and --zookeeper-ensemble must be >= 1")
        if o.lcs_per_process > 1 and (o.netns or o.energy):
            # One process is one host to a BMC, and one network namespace.
            raise ClusterError("--lcs-per-process above 1 is for local controllers on 127.0.0.1 (not with --netns, "
                               "--hypervisor qemu or --energy)")
        if o.zookeeper_ensemble > 1 and (o.netns or o.zk_port):
            raise ClusterError("--zookeeper-ensemble runs its servers on 127.0.0.1 on free ports (not with --netns or --zk-port)")
        if o.zookeeper_ensemble % 2 == 0:
            raise ClusterError("--zookeeper-ensemble must be odd (1, 3, 5): an even one tolerates no more failures")
        if o.netns and (reason := netns.available()):
            raise ClusterError(f"--netns: {reason}")
        if o.hypervisor not in HYPERVISORS:
            raise ClusterError(f"unknown hypervisor {o.hypervisor!r}: one of {', '.join(HYPERVISORS)}")
        if self.qemu:
            if missing := libvirtd.missing_components():
                raise ClusterError("--hypervisor qemu needs libvirtd and QEMU, missing: " + ", ".join(missing)
                                   + " (run scripts/install-qemu.sh as root)")
            if o.domains_per_lc:
                raise ClusterError("domains_per_lc is for the test driver only")

    def running_processes(self) -> list[str]:
        """The recorded processes (``id (pid N)``) of ``cluster.json`` that still run."""
        return [f"{name} (pid {pid})" for name, pid, marker in _manifest_entries(self.manifest_path)
                if running(pid, marker)]

    def clean_stale(self) -> bool:
        """Remove the record of a previous cluster whose processes are all gone; True if there was one.

        Raises if any of them still runs: that cluster must be stopped first, not overwritten.
        """
        if not self.manifest_path.exists():
            return False
        still = self.running_processes()
        if still:
            raise ClusterError(f"a cluster is already running from {self.state_dir} ({', '.join(still)}); "
                               f"stop it with 'snooze cluster down --state-dir {self.state_dir}'")
        stale = _read_manifest(self.manifest_path)
        libvirtd.stop_recorded(_recorded_hosts(stale))
        _remove_qemu_dir(self.state_dir, stale.get("qemuDir"))
        _delete_namespaces(self.state_dir, stale)
        self.manifest_path.unlink(missing_ok=True)
        # Its configs hold its key (and tls/ its TLS key); the next cluster writes its own.
        shutil.rmtree(self.state_dir / "config", ignore_errors=True)
        shutil.rmtree(self.state_dir / "tls", ignore_errors=True)
        return True

    def prepare(self) -> bool:
        """The private state dir, a stale record cleaned, the ports checked: everything ``up`` does
        before starting anything. Returns True if a stale cluster was cleaned up."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Also when it existed, wider, from an earlier version: its configs hold the cluster key.
        os.chmod(self.state_dir, 0o700)
        self.check_options()
        cleaned = self.clean_stale()
        if self.options.netns:
            # Namespaces of this state dir with no record left (a crash before the first write,
            # a record removed by hand) go, unless something still runs in them.
            assert self.fabric is not None
            busy = {name: pids for name in netns.namespaces(self.fabric.prefix + "-") if (pids := netns.namespace_pids(name))}
            if busy:
                raise ClusterError("processes still run in network namespaces of this state dir, which has no record of "
                                   "them: " + "; ".join(f"{n}: pids {' '.join(map(str, p))}" for n, p in busy.items()))
            if _delete_namespaces(self.state_dir, {}, leftovers=True):
                cleaned = True
        self.check_ports()
        return cleaned

    def up(self, *, wait: bool = True, timeout: float = 90.0, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Start ZooKeeper and every process; with ``wait``, until the hierarchy has formed.

        ``stop()`` is polled throughout: once true, everything started so far is stopped and
        :class:`Interrupted` is raised. On any failure, too, nothing is left running.
        """
        stopping = stop or (lambda: False)
        self.prepare()
        o = self.options
        if self.tls_files is not None:
            self._client_tls = None  # a new authority
            try:
                make_local_tls(self.tls_files.ca.parent)
            except TlsFilesError as exc:
                raise ClusterError(str(exc)) from exc
        # Simulated hosts start empty, so the cluster's durable state starts empty too.
        shutil.rmtree(self.state_dir / "zookeeper", ignore_errors=True)
        # ZooKeeper expires sessions on tick boundaries: a tick of a tenth of the session timeout
        # keeps failover within session timeout + a fraction, instead of + a whole 1 s tick.
        tick_ms = int(min(1000, max(100, o.session_timeout * 100)))
        try:
            if self.fabric is not None:
                zk_host = self.fabric.plan_host("zookeeper")
                self.zk = ZooKeeperServer(self.state_dir / "zookeeper", o.zk_port or 2181, tick_ms=tick_ms,
                                          host=zk_host.address, netns=zk_host.netns)
                self._netns_call(self.fabric.create)
                self._netns_call(self.fabric.add_host, "zookeeper")
            elif o.zookeeper_ensemble > 1:
                # Its servers' ports are spares too: a free port chosen now may be a local
                # controller's, not bound yet (a 200-host cluster lost lc-198 that way).
                self.ensemble = ZooKeeperEnsemble(self.state_dir / "zookeeper", o.zookeeper_ensemble, tick_ms,
                                                  port=self._spare_port)
            else:
                self.zk = ZooKeeperServer(self.state_dir / "zookeeper", o.zk_port or self._spare_port(), tick_ms=tick_ms)
            if self.ensemble is not None:
                self.ensemble.launch()
            else:
                assert self.zk is not None
                self.zk.launch()
            self.write_manifest()
            try:
                if self.ensemble is not None:
                    # Three JVMs starting at once on a small machine, then their election.
                    self.ensemble.wait_ready(60.0, stop=stopping)
                else:
                    assert self.zk is not None
                    self.zk.wait_ready(30.0, stop=stopping)
            except ZooKeeperError as exc:
                raise (Interrupted(str(exc)) if stopping() else ClusterError(str(exc))) from exc
            if o.events == "rabbitmq":
                self._start_rabbitmq(stopping)
            if self.qemu or o.vif == "ovs":
                assert self.fabric is not None
                # Short: libvirt's and OVS's socket paths must fit in 108 bytes. Recorded before
                # anything is started in it.
                self.qemu_dir = Path(tempfile.mkdtemp(prefix=f"{self.fabric.prefix}-qemu-", dir="/tmp"))
                self.write_manifest()
            self.processes = self.plan()
            if self.fabric is not None:
                for spec in self.processes:
                    self._netns_call(self.fabric.add_host, spec["id"])
                if self.guest_network:
                    self._netns_call(self.fabric.add_guest_network, self.vm_gateway)
                    for spec in self.processes:
                        if spec["role"] == "localcontroller":
                            spec["guestUplink"] = self._netns_call(self.fabric.add_guest_uplink, spec["id"],
                                                                   no_tx_offload=o.vif == "ovs")
                self.write_manifest()
                self._start_forwarder()
            if self.qemu:
                self._start_hypervisors(stopping)
            if o.vif == "ovs":
                self._start_switches(stopping)
            spawned: set[str] = set()
            for spec in self.processes:
                if stopping():
                    raise Interrupted("interrupted while starting the cluster")
                group = spec.get("process")
                if group:
                    if group in spawned:
                        continue
                    spawned.add(group)
                    self.spawn_group(group)
                else:
                    self.spawn(spec)
                self.write_manifest()
            if wait:
                self.wait_formed(timeout, stop=stopping)
                if self.qemu and o.guest_image:
                    self.upload_guest_image()
        except BaseException:
            self.down()
            raise
        return self.manifest()

    # -- QEMU hosts ----------------------------------------------------------------------
    def _start_hypervisors(self, stopping: Callable[[], bool]) -> None:
        """One private libvirtd per local controller, in that LC's namespace (made already)."""
        assert self.qemu_dir is not None
        lcs = [spec for spec in self.processes if spec["role"] == "localcontroller"]
        if stopping():
            raise Interrupted("interrupted while starting the cluster")
        if self.options.repository_pool:
            # The repository's own hypervisor host, for its storage pool: no network, no guests.
            self.repository_host = libvirtd.LibvirtdCluster(self.qemu_dir / "repository", count=1)
            try:
                self.repository_host.start(timeout=120)
            except libvirtd.LibvirtdError as exc:
                raise ClusterError(f"the repository's libvirtd: {exc}") from exc
            finally:
                self.write_manifest()
        if not lcs:
            return
        networks = [libvirtd.HostNetwork(spec["netns"], spec["address"]) for spec in lcs]
        # With --vif the hosts' VM bridges are made by their VIF plugin and joined by the guests'
        # network, which holds the gateway (in the fabric); without, each host's br-vm holds it.
        self.hypervisors = libvirtd.LibvirtdCluster(self.qemu_dir, count=len(lcs), networks=networks,
                                                    vm_gateway=None if self.options.vif else self.vm_gateway,
                                                    private_dirs=HOST_PRIVATE_DIRS)
        try:
            self.hypervisors.start(timeout=120)
        except libvirtd.LibvirtdError as exc:
            raise ClusterError(f"QEMU hosts: {exc}") from exc
        finally:
            self.write_manifest()
        for spec, host in zip(lcs, self.hypervisors.hosts, strict=True):
            if host.uri != spec["hypervisorUri"] or host.name != spec["host"]:
                raise ClusterError(f"{spec['id']}: host {host.name} at {host.uri}, not {spec['hypervisorUri']}")

    def _ovs_dir(self, lc_id: str) -> Path:
        assert self.qemu_dir is not None
        return self.qemu_dir / f"ovs-{lc_id}"

    def _start_switches(self, stopping: Callable[[], bool]) -> None:
        """Each local controller's own Open vSwitch, ``ovs-vswitchd`` in its namespace."""
        missing = ovs.available()
        if missing is not None:
            raise ClusterError(f"--vif ovs: {missing}")
        for spec in self.processes:
            if spec["role"] != "localcontroller":
                continue
            if stopping():
                raise Interrupted("interrupted while starting the hosts' Open vSwitch")
            switch = ovs.OvsSwitch(self._ovs_dir(spec["id"]), netns=spec["netns"])
            self.switches[spec["id"]] = switch
            try:
                switch.start()
            except (ovs.OvsError, OSError, subprocess.SubprocessError) as exc:
                raise ClusterError(f"{spec['id']}'s Open vSwitch: {exc}") from exc
            finally:
                spec.update(ovsdb=switch.remote, ovs={"dir": str(switch.directory), "pids": switch.pids()})
                self.write_manifest()

    def kill_ovsdb(self, lc_id: str) -> None:
        """SIGKILL the ovsdb-server of ``lc_id``'s host (--vif ovs), as a crash would."""
        self.switches[lc_id].kill_ovsdb()
        self._record_switch(lc_id)

    def start_ovsdb(self, lc_id: str) -> None:
        """Start the ovsdb-server of ``lc_id``'s host again, on its database."""
        self.switches[lc_id].start_ovsdb()
        self._record_switch(lc_id)

    def _record_switch(self, lc_id: str) -> None:
        spec = next(p for p in self.processes if p["id"] == lc_id)
        spec["ovs"]["pids"] = self.switches[lc_id].pids()
        self.write_manifest()

    def _host_records(self) -> list[dict[str, Any]]:
        """Every QEMU host's record, the local controllers' and then the repository's."""
        return [*(self.hypervisors.records() if self.hypervisors else []),
                *(self.repository_host.records() if self.repository_host else [])]

    def upload_guest_image(self, name: str = GUEST_IMAGE) -> dict[str, Any]:
        """Build the guest image if missing and upload it to the repository as ``name`` (kept
        if an image of that name is there already); returns the repository's record."""
        from snooze.dev import guestimage

        try:
            path = guestimage.ensure_image()  # built from Debian packages when missing
        except Exception as exc:
            raise ClusterError(f"cannot build the guest image: {exc}") from exc
        return upload_image(self.bootstrap_url, Path(path), name, token=self.admin_token)

    # -- network namespaces --------------------------------------------------------------
    def _netns_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except netns.NetnsError as exc:
            raise ClusterError(str(exc)) from exc

    def _namespaces_changed(self) -> None:
        # Called before each namespace is made: its name is on disk before it exists.
        if self.zk is not None:
            self.write_manifest()

    def _start_forwarder(self) -> None:
        """The bootstrap's port on 127.0.0.1 of the root namespace, relayed into its namespace."""
        assert self.fabric is not None
        boot = next(p for p in self.processes if p["role"] == "bootstrap")
        marker = f"{self.fabric.prefix}-forwarder"
        log_path = self.state_dir / "logs" / "forwarder.log"
        argv = [sys.executable, "-m", "snooze.dev.netns", "forward", f"127.0.0.1:{self.options.base_port}",
                boot["netns"], f"{boot['address']}:{boot['port']}", "--name", marker]
        with open_log(log_path, f"forwarder 127.0.0.1:{self.options.base_port} -> {boot['address']}:{boot['port']}") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._children[proc.pid] = proc
        self.forwarder = {"id": "forwarder", "pid": proc.pid, "marker": marker, "log": str(log_path),
                          "listen": f"127.0.0.1:{self.options.base_port}", "netns": boot["netns"],
                          "target": f"{boot['address']}:{boot['port']}"}
        self.write_manifest()

    def _start_rabbitmq(self, stopping: Callable[[], bool]) -> None:
        if self.fabric is not None:
            raise ClusterError("--events rabbitmq runs its broker on 127.0.0.1, which the namespaces of --netns do not reach")
        self.rabbitmq = RabbitMQServer(self.state_dir / "rabbitmq")
        try:
            self.rabbitmq.launch()
            self.write_manifest()
            self.rabbitmq.wait_ready(60.0, stop=stopping)
        except RabbitMQError as exc:
            raise (Interrupted(str(exc)) if stopping() else ClusterError(str(exc))) from exc
        self.write_manifest()  # with the broker's VM, now that it runs

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "stateDir": str(self.state_dir),
            "zookeeper": self.zookeeper_address,
            "bootstrapUrl": self.bootstrap_url,
            "options": {k: v for k, v in self.options.__dict__.items() if k not in SECRET_OPTIONS},
            "processes": self.processes,
        }
        if self.ensemble is not None:
            data["zookeeperServers"] = [{"pid": server.pid, "port": server.port, "dataDir": str(server.data_dir)}
                                        for server in self.ensemble.servers]
        else:
            assert self.zk is not None
            data.update(zookeeperPid=self.zk.pid, zookeeperDataDir=str(self.zk.data_dir))
        if groups := self.groups():
            data["localControllerProcesses"] = [
                {"id": name, "pid": members[0].get("pid"), "log": members[0]["log"], "members": [m["id"] for m in members]}
                for name, members in groups.items()]
        if self.qemu_dir is not None:
            # The hosts' short-path state (libvirtd's, Open vSwitch's), removed by `down`.
            data["qemuDir"] = str(self.qemu_dir)
        if self.options.vif:
            data["vif"] = self.options.vif
        if self.admin_token:
            data["adminToken"] = self.admin_token
        if self.tls_files is not None:
            data["caCert"] = str(self.tls_files.ca)
        if self.rabbitmq is not None:
            data["rabbitmq"] = self.rabbitmq.record()  # cluster.json is mode 0600, like the configs
        if self.guest_network and self.fabric is not None:
            # Every guest is reached from the fabric namespace, on this bridge, wherever it runs.
            data["guestNetwork"] = {"netns": self.fabric.netns, "bridge": netns.GUEST_BRIDGE, "gateway": self.vm_gateway}
        if self.qemu:
            data.update({
                "hypervisor": "qemu",
                "images": self.images_url,
                "hypervisors": self.hypervisors.records() if self.hypervisors else [],
                "repositoryHost": self.repository_host.records()[0] if self.repository_host and self.repository_host.hosts
                else None,
            })
        if self.ec2_port is not None:
            # A demo key pair of this cluster only (cluster.json is mode 0600, like the configs).
            data["ec2"] = {"url": f"{'https' if self.options.tls else 'http'}://127.0.0.1:{self.ec2_port}/",
                           "accessKey": self.options.ec2_access_key,
                           "secretKey": self.options.ec2_secret_key, "region": cfg.Ec2Settings().region}
        if self.fabric is not None:
            assert self.zk is not None
            data.update({
                "zookeeperNetns": self.zk.netns,
                "namespaces": list(self.fabric.created),
                "fabric": self.fabric.to_json(),
                "forwarder": self.forwarder,
            })
            if self.multicast_group:
                data["multicastGroup"] = self.multicast_group
        return data

    def write_manifest(self) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        write_private(tmp, json.dumps(self.manifest(), indent=2))
        tmp.replace(self.manifest_path)

    def hierarchy(self, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            hierarchy: dict[str, Any] | None = _http_json(self.bootstrap_url + "/bootstrap?getCompleteHierarchy", timeout=timeout,
                                                          token=self.admin_token, context=self.client_tls())
            return hierarchy
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def _how_it_ended(self, pid: int) -> str:
        """``exited with N``, ``was killed by SIGNAME`` or ``exited``, for a process we started."""
        proc = self._children.get(pid)
        code = proc.poll() if proc is not None else None
        if code is None:
            return "exited"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with {code}"

    def wait_formed(self, timeout: float, *, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Until every local controller is assigned to a group manager."""
        want = {p["id"] for p in self.processes if p["role"] == "localcontroller"}
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if stop is not None and stop():
                raise Interrupted("interrupted while the hierarchy was forming")
            for spec in [*self.processes, *([self.forwarder] if self.forwarder else [])]:
                if not alive(spec["pid"]):
                    raise ClusterError(f"{spec['id']} {self._how_it_ended(spec['pid'])} during start-up; "
                                       f"see {spec['log']}{_tail(spec['log'])}")
            # A short timeout: a stop request is seen within it.
            last = self.hierarchy(timeout=2.0)
            if last is not None and assigned_lcs(last) >= want:
                return last
            time.sleep(0.2)
        raise ClusterError(f"hierarchy did not form within {timeout}s; {self._formation_report(want, last)}"
                           f"; logs in {self.state_dir / 'logs'}")

    def _formation_report(self, want: set[str], last: dict[str, Any] | None) -> str:
        """What the last hierarchy showed, and the logs' tails that may say why (a test's
        temporary directory may be gone by the time anyone reads the failure)."""
        if last is None:
            boot = next((p for p in self.processes if p["role"] == "bootstrap"), None)
            return "the bootstrap gave no hierarchy" + (_tail(boot["log"]) if boot else "")
        gms = last.get("groupManagerDescriptions", [])
        missing = sorted(want - assigned_lcs(last))
        leader = (last.get("groupLeaderDescription") or {}).get("id")
        sizes = ", ".join(f"{gm.get('id')}: {len(gm.get('localControllers') or [])}" for gm in gms)
        more = " ..." if len(missing) > 10 else ""
        text = (f"leader {leader}, {len(gms)} group managers ({sizes}), {len(missing)} local controllers "
                f"unassigned: {', '.join(missing[:10])}{more}")
        by_id = {p["id"]: p for p in self.processes}
        for lc in missing[:3]:
            spec = by_id.get(lc)
            if spec is None:
                continue
            if spec.get("process"):
                # Many controllers share that log: only the problems it reports of this one.
                lines = _lines_about(spec["log"], lc)
                text += f"\n{lc} in {spec['log']}:\n" + ("\n".join(lines) if lines else "(no warning or error)")
            else:
                text += f"\n{lc}" + _tail(spec["log"])
        return text + "".join(_tail(p["log"], 25) for p in self.processes
                              if p["role"] == "groupmanager" and p["id"] == leader)

    def down(self) -> None:
        if self.rabbitmq is not None:
            with contextlib.suppress(Exception):
                self.rabbitmq.stop()
            self.rabbitmq = None
        stop_manifest(self.state_dir, processes=self.processes, zk=self.zk, ensemble=self.ensemble, forwarder=self.forwarder,
                      namespaces=self.fabric.namespaces + self.fabric.created if self.fabric else None,
                      hypervisors=self._host_records() if self.qemu else None, qemu_dir=self.qemu_dir)
        for hosts in (self.hypervisors, self.repository_host):
            if hosts is not None:
                # Reaps the daemons (stopped above); their state went with qemu_dir.
                with contextlib.suppress(Exception):
                    hosts.stop()
        self.hypervisors = self.repository_host = None
        for switch in self.switches.values():
            with contextlib.suppress(Exception):
                switch.stop()  # reaps its daemons (stopped above)
        self.switches = {}
        self.qemu_dir = None
        for proc in self._children.values():
            with contextlib.suppress(Exception):
                proc.wait(1)
        self._children.clear()
        self.forwarder = None
        if self.fabric is not None:
            self.fabric.created.clear()


def assigned_lcs(hierarchy: dict[str, Any]) -> set[str]:
    return {lc["id"] for gm in hierarchy.get("groupManagerDescriptions", []) for lc in gm.get("localControllers", [])}


def _port_free(port: int) -> bool:
    """Free for a service: TCP bindable with SO_REUSEADDR (as the services bind) and UDP free."""
    import socket

    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _manifest_entries(path: Path) -> list[tuple[str, int, str]]:
    """(id, pid, marker) of every process recorded in ``path``: the marker is what its command
    line must still contain for the PID to be ours (its config; ZooKeeper's data dir; the
    forwarder's name)."""
    data = _read_manifest(path)
    entries = [(str(p.get("id")), int(p["pid"]), str(p.get("config", "")))
               for p in data.get("processes", []) if isinstance(p, dict) and isinstance(p.get("pid"), int)]
    for p in data.get("processes", []):
        switch = p.get("ovs") if isinstance(p, dict) else None
        if isinstance(switch, dict) and isinstance(switch.get("pids"), dict):
            entries += [(f"{p.get('id')}-{name}", pid, str(switch.get("dir"))) for name, pid in switch["pids"].items()
                        if isinstance(pid, int)]
    forwarder = data.get("forwarder")
    if isinstance(forwarder, dict) and isinstance(forwarder.get("pid"), int):
        entries.append(("forwarder", forwarder["pid"], str(forwarder.get("marker", ""))))
    if isinstance(data.get("zookeeperPid"), int):
        entries.append(("zookeeper", data["zookeeperPid"], str(data.get("zookeeperDataDir") or "zoo.cfg")))
    entries += [(f"zookeeper-{i}", s["pid"], str(s.get("dataDir") or "zoo.cfg")) for i, s in enumerate(_servers(data), 1)]
    return entries


def _servers(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The ensemble's servers a cluster.json records (``zookeeperServers``) that have a PID."""
    servers = data.get("zookeeperServers")
    return [s for s in servers if isinstance(s, dict) and isinstance(s.get("pid"), int)] if isinstance(servers, list) else []


def _stop_strays(state_dir: Path, data: dict[str, Any], names: list[str] | None = None) -> int:
    """Stop the processes running in the cluster's namespaces whose command line names its
    state dir (its roles' configs are there); returns how many."""
    recorded = [n for n in [*(names or []), *(data.get("namespaces") or [])] if isinstance(n, str)]
    if not recorded:
        return 0
    prefix = netns.Fabric.for_state_dir(state_dir).prefix + "-"
    marker = str(state_dir.resolve())
    stopped = 0
    for name in dict.fromkeys(recorded + netns.namespaces(prefix)):
        for pid in netns.namespace_pids(name):
            if running(pid, marker) and kill_group(pid, marker):
                stopped += 1
    return stopped


def _delete_namespaces(state_dir: Path, data: dict[str, Any], names: list[str] | None = None,
                       leftovers: bool = False) -> list[str]:
    """Delete the namespaces a cluster recorded (and, with ``leftovers`` or when it recorded
    any, every other one named after its state dir); returns those deleted. Nothing is asked of
    ``ip`` for a cluster that never had any (one started without netns)."""
    recorded = [n for n in [*(names or []), *(data.get("namespaces") or [])] if isinstance(n, str)]
    if not recorded and not leftovers:
        return []
    prefix = netns.Fabric.for_state_dir(state_dir).prefix + "-"
    try:
        return netns.delete_namespaces(list(dict.fromkeys(recorded + netns.namespaces(prefix))))
    except netns.NetnsError as exc:
        raise ClusterError(str(exc)) from exc


def upload_image(bootstrap_url: str, path: Path, name: str, timeout: float = 300.0, token: str | None = None) -> dict[str, Any]:
    """PUT ``path`` to the repository at ``bootstrap_url`` as ``name`` with its checksum; an
    image of that name already there is kept. Returns the repository's record of it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    url = f"{bootstrap_url}/images/{name}"
    try:
        with open(path, "rb") as body:
            request = urllib.request.Request(url, data=body, method="PUT", headers={
                "Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream",
                "X-Snooze-Checksum": f"sha256:{digest.hexdigest()}", **_auth(token)})
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                record: dict[str, Any] = json.loads(resp.read())
                return record
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise ClusterError(f"uploading {path} as {name}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    except OSError as exc:
        raise ClusterError(f"uploading {path} as {name}: {exc}") from exc
    existing: dict[str, Any] = _http_json(url, timeout=10, token=token)
    return existing


def guest_answer(namespace: str, address: str, timeout: float = 2.0) -> str | None:
    """``GET http://ADDRESS/`` sent from inside ``namespace`` (a QEMU host's, or the fabric's
    with a guest network), once its route to ``address`` is checked to be the host's VM bridge
    (or the guests' network); the body, or None if no answer."""
    try:
        device = netns.route_device(namespace, address)
    except netns.NetnsError:
        return None
    if device not in (libvirtd.VM_BRIDGE, netns.GUEST_BRIDGE):
        raise ClusterError(f"{address} is routed through {device}, not {libvirtd.VM_BRIDGE} or {netns.GUEST_BRIDGE}, "
                           f"in {namespace}: not sent")

    def get() -> str | None:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://{address}/", timeout=timeout) as resp:
                return str(resp.read().decode(errors="replace"))
        except (OSError, ValueError):
            return None

    return netns.call_in(namespace, get)


def start_guests(bootstrap_url: str, count: int, *, image: str = GUEST_IMAGE, memory_kib: int = 131072,
                 namespaces: dict[str, str] | None = None, prefix: str = "guest", timeout: float = 180.0,
                 stop: Callable[[], bool] | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """Start ``count`` VMs from ``image`` in one virtual cluster and, with ``namespaces`` (LC id
    -> its host's namespace, as cluster.json gives them), wait until each answers over HTTP. Returns per VM: id, status, ipAddress, localControllerId,
    answer (None if it did not answer in time), seconds (from submission to its answer)."""
    stopping = stop or (lambda: False)
    suffix = secrets.token_hex(2)
    templates = [{"name": f"{prefix}-{suffix}-{i}", "vcpus": 1, "memory": memory_kib, "imageId": image,
                  "networkCapacityDemand": {"rxBytes": 1024.0, "txBytes": 1024.0}} for i in range(1, count + 1)]
    started = time.monotonic()
    task = _post_text(bootstrap_url + "/bootstrap?startVirtualCluster", json.dumps({"virtualMachineTemplates": templates}),
                      token=token)
    deadline = started + timeout
    response: dict[str, Any] | None = None
    while response is None:
        if stopping() or time.monotonic() > deadline:
            raise ClusterError(f"virtual cluster {task} did not finish in time")
        body = _post_text(bootstrap_url + "/bootstrap?getVirtualClusterResponse", task, token=token)
        response = json.loads(body) if body.strip() else None
        if response is None:
            time.sleep(0.2)
    guests = []
    for vm in response["virtualMachineMetaData"]:
        guests.append({"id": vm["virtualMachineId"], "status": vm["status"], "ipAddress": vm.get("ipAddress"),
                       "localControllerId": (vm.get("virtualMachineLocation") or {}).get("localControllerId"),
                       "errorCode": vm.get("errorCode"), "answer": None, "seconds": None})
    pending = [g for g in guests if g["status"] == "RUNNING" and namespaces and g["localControllerId"] in namespaces]
    while pending and not stopping() and time.monotonic() < deadline:
        for guest in list(pending):
            assert namespaces is not None
            answer = guest_answer(namespaces[guest["localControllerId"]], guest["ipAddress"], timeout=1.0)
            if answer is not None:
                guest.update(answer=answer, seconds=time.monotonic() - started)
                pending.remove(guest)
        if pending:
            time.sleep(0.2)
    return guests


def _post_text(url: str, body: str, timeout: float = 10.0, token: str | None = None) -> str:
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json", **_auth(token)})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return str(resp.read().decode())


def _recorded_hosts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The QEMU hosts a cluster.json records: the local controllers' and the repository's."""
    hosts = data.get("hypervisors")
    found = [h for h in hosts if isinstance(h, dict)] if isinstance(hosts, list) else []
    if isinstance(data.get("repositoryHost"), dict):
        found.append(data["repositoryHost"])
    return found


def _remove_qemu_dir(state_dir: Path, qemu_dir: str | Path | None) -> None:
    """Remove the QEMU hosts' state dir, only if it is the one this cluster's name made."""
    if not qemu_dir:
        return
    path = Path(qemu_dir)
    prefix = netns.Fabric.for_state_dir(state_dir).prefix + "-qemu-"
    if path.parent == Path("/tmp") and path.name.startswith(prefix) and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def stop_manifest(state_dir: Path, *, processes: list[dict[str, Any]] | None = None, zk: ZooKeeperServer | None = None,
                  ensemble: ZooKeeperEnsemble | None = None, forwarder: dict[str, Any] | None = None, namespaces: list[str] | None = None,
                  hypervisors: list[dict[str, Any]] | None = None, qemu_dir: Path | None = None) -> int:
    """Stop every process of the cluster in ``state_dir``; returns how many were running. Then
    delete the network namespaces it made (with netns).

    Once none of them runs any more, ``cluster.json`` is removed: it describes a running cluster.
    """
    state_dir = Path(state_dir).resolve()
    manifest = state_dir / "cluster.json"
    data = _read_manifest(manifest)
    procs = processes if processes is not None else data.get("processes", [])
    # Every role at once, waited for together (local controllers sharing a process share its
    # PID: it is stopped once). One after the other, each stop also set off elections and
    # re-joins among those still running, for nothing.
    targets: dict[int, str] = {}
    for spec in procs:
        pid = spec.get("pid")
        if isinstance(pid, int) and pid not in targets:
            targets[pid] = str(spec["config"])
    stopped = kill_groups(list(targets.items()))
    for spec in procs:
        # Each host's Open vSwitch (--vif ovs), after its local controller; the marker is its dir.
        switch = spec.get("ovs") if isinstance(spec, dict) else None
        if isinstance(switch, dict) and isinstance(switch.get("pids"), dict):
            stopped += sum(1 for pid in switch["pids"].values() if isinstance(pid, int) and kill_group(pid, str(switch.get("dir"))))
    fwd = forwarder or data.get("forwarder")
    if isinstance(fwd, dict) and isinstance(fwd.get("pid"), int) and kill_group(fwd["pid"], str(fwd.get("marker", ""))):
        stopped += 1
    # The event broker (--events rabbitmq) after the group managers that published to it.
    broker = data.get("rabbitmq")
    if isinstance(broker, dict):
        stopped += stop_recorded_broker(broker)
    # The QEMU hosts after their local controllers: their guests are destroyed with them.
    hosts = hypervisors if hypervisors is not None else _recorded_hosts(data)
    if isinstance(hosts, list):
        stopped += libvirtd.stop_recorded([h for h in hosts if isinstance(h, dict)])
    _remove_qemu_dir(state_dir, qemu_dir or data.get("qemuDir"))
    if zk is not None:
        if zk.process is not None and zk.process.poll() is None:
            stopped += 1
        zk.stop()
    elif data.get("zookeeperPid") and kill_group(data["zookeeperPid"], data.get("zookeeperDataDir", "zoo.cfg")):
        stopped += 1
    if ensemble is not None:
        stopped += sum(1 for server in ensemble.servers if server.process is not None and server.process.poll() is None)
        ensemble.stop()
    else:
        stopped += sum(1 for server in _servers(data) if kill_group(server["pid"], str(server.get("dataDir") or "zoo.cfg")))
    # Processes of this cluster its record does not name (started by an ``up`` killed before it
    # wrote their PIDs) still run in its namespaces: stopped too, known by their command lines.
    stopped += _stop_strays(state_dir, data, namespaces)
    # Only now that nothing runs in them: a namespace still in use would outlive its name.
    _delete_namespaces(state_dir, data, namespaces)
    if not any(running(pid, marker) for _name, pid, marker in _manifest_entries(manifest)):
        manifest.unlink(missing_ok=True)
    return stopped
