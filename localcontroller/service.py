"""The local controller: one per hypervisor host.

Joining follows the original: ask the group leader which group manager to join, join it with
this host's description and the domains libvirt already runs, then heartbeat and report
monitoring data to it. Missing heartbeats from the group manager (or an order to re-join from
a leader of the current epoch) sends it back to the group leader for a new assignment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import json
import logging
import math
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from prometheus_client.core import Metric

from localcontroller.backoff import Backoff, BackoffPolicy
from localcontroller.cni.agent import AgentSettings, CniAgent
from localcontroller.firewall import nft
from localcontroller.firewall.daemon import FirewallDaemon, decide
from localcontroller.hypervisor import (
    HypervisorError,
    LibvirtHypervisor,
    MigrationFailed,
    NotEnoughCapacity,
)
from localcontroller.hypervisor.adapt import ACCELERATORS, adapt_domain_xml, retarget_disks, vif_of
from localcontroller.hypervisor.errors import HypervisorUnavailable
from localcontroller.hypervisor.libvirt import DomainInfo
from localcontroller.images.cache import ImageCache
from localcontroller.images.configdrive import GuestNetwork, nocloud_files, write_config_drive
from localcontroller.images.disks import (
    DiskError,
    InstanceFiles,
    create_overlay,
    guest_network,
    virtual_size,
)
from localcontroller.monitoring import HostMonitor, ReportDeltas
from localcontroller.power import DEFAULT_STATE, PowerActionError, PowerSaver
from localcontroller.vif.host import HostVifs, Plugging
from localcontroller.vrs.agent import VrsAgent
from snooze import capacity, metrics
from snooze import config as cfg
from snooze.codes import CodedError, ErrorCode, VMStatus
from snooze.coordination import CoordinationError
from snooze.domainxml import DomainPolicy
from snooze.heartbeat import FailureDetector
from snooze.http import ApiError
from snooze.ids import InvalidId, check_id, is_valid_id
from snooze.models import (
    Capacity,
    GroupManagerDescription,
    LocalControllerDescription,
    NetworkAddress,
    Status,
)
from snooze.protocol import Envelope
from snooze.protocol.messages import (
    AssignLocalController,
    DescribeLocalController,
    LocalControllerHeartbeat,
    LocalControllerJoin,
    LocalControllerMigrate,
    LocalControllerResize,
    LocalControllerStartVirtualMachines,
    LocalControllerVmAction,
    Monitoring,
    PlugVif,
    PowerSave,
    PrepareMigration,
    ReceiveDomain,
    Rejoin,
)
from snooze.rpc import RpcError, api_error
from snooze.service import Service, StartupError
from snooze.vif.errors import NoMatchingPlugin
from snooze.vif.objects import InstanceInfo

log = logging.getLogger(__name__)

# The states each lifecycle order applies to; for any other, the order is refused with the
# domain's state and what it needs (libvirt's own refusal says only "not running").
APPLIES_TO = {"suspend": (VMStatus.RUNNING,), "resume": (VMStatus.PAUSED,), "shutdown": (VMStatus.RUNNING,),
              "reboot": (VMStatus.RUNNING,)}
ACTIONS = (*APPLIES_TO, "destroy")
#: What a leader that is gone answers (nothing, or no longer the leader's verbs): worth a look
#: at the leader's znode before asking again.
LEADER_GONE = frozenset({ErrorCode.UNREACHABLE, ErrorCode.TIMEOUT, ErrorCode.UNKNOWN_KIND, ErrorCode.STALE_EPOCH})
# A received config drive is small (a few MiB of mostly empty vfat): bound what a peer may send.
MAX_CONFIG_DRIVE_BYTES = 64 * 1024 * 1024
START_FETCH_WAIT = 20.0  # seconds a start order (a whole batch) waits for images' first fetches
MAX_DISK_BYTES = 1 << 50  # 1 PiB: the largest overlay a peer may ask for


def _target(vm_id: str, uuid: str | None = None) -> tuple[str, str | None]:
    """(name, UUID) of the domain an order is for, checked; the UUID makes sure it is that very domain."""
    try:
        vm_id = check_id(vm_id, "vmId")
    except InvalidId as exc:
        raise ApiError(ErrorCode.INVALID_ID, str(exc), field=exc.field) from exc
    if uuid is not None and not 0 < len(uuid) <= 64:
        raise ApiError(ErrorCode.BAD_REQUEST, "uuid must be a domain UUID string", field="uuid")
    return vm_id, uuid


def _demand(value: Any) -> Capacity:
    """A start order's requested ``[cpu, memory, rx, tx]`` (its group manager checked it; a
    missing or short one counts as 0 where it says nothing)."""
    v = [float(x) for x in (value if isinstance(value, (list, tuple)) else ())][:4]
    v += [0.0] * (4 - len(v))
    return (v[0], v[1], v[2], v[3])


def _check_uuid(domain: DomainInfo, uuid: str | None, host: str) -> None:
    if uuid is not None and domain.uuid != uuid:
        raise ApiError(ErrorCode.VIRTUAL_MACHINE_MISMATCH,
                       f"{domain.name} on {host} is domain {domain.uuid}, not {uuid}: this order was meant for another VM "
                       "of that name, and is refused", field="uuid")


class LocalController(Service):
    role = "localcontroller"

    def __init__(self, settings: cfg.Settings) -> None:
        super().__init__(settings)
        lc = settings.localcontroller
        self.hypervisor = LibvirtHypervisor(lc.hypervisor_uri, policy=DomainPolicy.from_settings(settings.templates),
                                            events=lc.vrs)
        self.total: Capacity = (0.0, 0.0, 0.0, 0.0)
        self.status = Status.ACTIVE
        self.gm: GroupManagerDescription | None = None
        self.leader: dict[str, Any] | None = None
        self.gm_detector = FailureDetector(settings.heartbeat.timeout)
        self._rejoin = asyncio.Event()
        # Set with _rejoin when our group manager said it does not know us (it dropped us as
        # silent, so it is alive): going back to it directly is worth a try.
        self._may_return = False
        self._returned_at = -math.inf  # when we last went back to a group manager directly
        self._leader_read_at = -math.inf  # when the leader's znode was last read after a failed join
        self._stall_ended = -math.inf  # when a look at our group manager last came late (a stall of ours)
        self._leader_seen = asyncio.Event()  # set whenever the leader is learnt (wakes a join waiting for one)
        self._excluded: deque[str] = deque(maxlen=4)
        self._backoff = Backoff(BackoffPolicy(lc.join_backoff_base, lc.join_backoff_cap, lc.rejoin_spread))
        self.monitor: HostMonitor | None = None
        self._deltas = ReportDeltas(settings.monitoring.full_report_every)
        self._sent_at = -math.inf  # when a heartbeat or a report last left for the group manager
        self._gm_takes_deltas = False  # its join answer said monitoringDeltas
        # The process is the role: its handlers live in the process scope.
        scope = self.scope
        scope.heartbeat_on("gm.heartbeat", self._on_gm_heartbeat)
        scope.heartbeat_on("gl.heartbeat", self._on_gl_heartbeat)
        scope.on_message(Rejoin, self._on_rejoin_order, order=True)
        scope.on_message(DescribeLocalController, self._on_describe)
        scope.on_message(LocalControllerStartVirtualMachines, self._on_start_vms, order=True)
        scope.on_message(LocalControllerVmAction, self._on_vm_action, order=True)
        scope.on_message(LocalControllerResize, self._on_resize, order=True)
        scope.on_message(LocalControllerMigrate, self._on_migrate, order=True)
        scope.on_message(ReceiveDomain, self._on_receive_domain, order=True)
        scope.on_message(PrepareMigration, self._on_prepare_migration, order=True)
        scope.on_message(PlugVif, self._on_plug_vif, order=True)
        scope.on_message(PowerSave, self._on_power_save, order=True)
        self.power = PowerSaver(
            commands=settings.localcontroller.power_commands or None,
            test_mode=settings.localcontroller.power_test_mode,
            on_test_action=lambda _state: self.request_stop(),
        )
        self._starting: dict[str, Capacity] = {}
        # What the VMs started here requested, by domain name: libvirt knows a domain's vcpus and
        # memory, not the network capacity it was admitted with.
        self._requested: dict[str, Capacity] = {}
        # Images: with a repository, each VM boots from its own overlay on a cached image.
        self.instances = InstanceFiles(lc.instance_directory)
        self.images: ImageCache | None = (
            ImageCache(lc.image_cache_directory, lc.image_cache_bytes, lc.image_repository,
                       in_use=self.instances.backing_files) if lc.image_repository else None)
        self._offered_types: frozenset[str] = frozenset()
        # VMs whose files are being made or moved here: never cleaned up under their feet.
        self._busy_files: set[str] = set()
        self.routes.add("localcontroller", "getLocalControllerDescription", self._http_describe, ("GET",))
        # The host's side of the network model: nftables for the guests' firewall groups, and
        # the agent snooze-cni asks for containers' ports (both started with the role).
        self.firewall: FirewallDaemon | None = None
        self.cni_agent: CniAgent | None = None
        # The VIF plugins that plug VMs' interfaces here ([localcontroller] vif_plugins), if any.
        self.vifs: HostVifs | None = None
        # Nuage VRS's tables in the host's OVSDB, kept in step with lifecycle events ([localcontroller] vrs).
        self.vrs: VrsAgent | None = None

    def description(self) -> LocalControllerDescription:
        lc = self.settings.localcontroller
        return LocalControllerDescription(
            id=self.id,
            control_data_address=self.address,
            total_capacity=self.total,
            hostname=self.hostname,
            status=self.status,
            hypervisor_settings={
                "driver": lc.hypervisor_driver,
                "transport": lc.hypervisor_transport,
                "port": lc.hypervisor_port,
                "remoteUri": lc.remote_uri
                or f"{lc.hypervisor_driver}+{lc.hypervisor_transport}://{self.address.address}:{lc.hypervisor_port}/system",
                "migrationUri": lc.migration_uri or None,
                "testDriver": self.hypervisor.is_test_driver,
                "migration": {"method": lc.migration_method, "timeout": lc.migration_timeout,
                              "autoConverge": lc.migration_auto_converge, "postCopy": lc.migration_post_copy,
                              **({"bandwidth": lc.migration_bandwidth} if lc.migration_bandwidth else {}),
                              "recoveryTimeout": lc.migration_recovery_timeout},
            },
            wakeup_settings={"driver": lc.wakeup_driver, "options": lc.wakeup_options},
            group_manager_id=self.gm.id if self.gm else None,
        )

    async def on_start(self) -> None:
        assert self.coord is not None
        try:
            await self.hypervisor.open()
        except HypervisorUnavailable as exc:
            raise StartupError(f"[localcontroller] hypervisor_uri = {self.hypervisor.uri!r}: {exc}") from exc
        lc = self.settings.localcontroller
        if lc.accelerator not in ACCELERATORS:
            raise StartupError(f"[localcontroller] accelerator must be one of {', '.join(ACCELERATORS)}")
        if lc.image_repository:
            if not lc.image_repository.startswith(("http://", "https://")):
                raise StartupError("[localcontroller] image_repository must be an http:// or https:// URL (or empty)")
            if self.images is not None:
                self.images.tls = self.client_tls  # with TLS: an https repository checked with [node] tls_ca
            for name in ("image_cache_directory", "instance_directory"):
                if not str(getattr(lc, name)).startswith("/"):
                    raise StartupError(f"[localcontroller] {name} must be an absolute path")
            if lc.image_cache_bytes <= 0:
                raise StartupError("[localcontroller] image_cache_bytes must be > 0")
        cpus, mem_kib, hv_host = await self.hypervisor.host_info()
        if not self.hypervisor.is_test_driver:
            self._offered_types = await self.hypervisor.domain_types()
        rx, tx = self.settings.localcontroller.network_capacity
        self.total = (float(cpus), float(mem_kib), float(rx), float(tx))
        if not self.settings.node.hostname and self.hypervisor.is_test_driver:
            self.hostname = f"{hv_host}-{self.settings.node.port}"
        self.monitor = HostMonitor(self.hypervisor, self.settings.monitoring.history)
        if lc.vif_plugins:
            try:
                self.vifs = HostVifs(lc)
            except (CodedError, ValueError, TypeError) as exc:
                raise StartupError(f"[localcontroller] vif_plugins = {lc.vif_plugins!r}: {exc}") from exc
        if lc.vrs:
            self.vrs = VrsAgent(self.hypervisor, lc.vif_ovsdb, lc.vrs_audit_interval)
            await self.vrs.start(self.spawn, self.every)
        # The leader's znode is read until a leader is found, then no longer watched: later
        # leaders announce themselves (their heartbeats, re-join orders), and 2,000 hosts
        # watching it made every failover a storm of notifications and re-reads at ZooKeeper
        # just when the cluster needs it most.
        self.coord.watch_json(self.coord.path("leader"), self._on_leader, until_found=True)
        self._register()
        self.spawn("join", self._join_loop())
        await self._start_network_side()
        self.every("heartbeat", lambda: self.settings.heartbeat.interval, self._send_heartbeat)
        self.every("monitoring", lambda: self.settings.monitoring.interval, self._report)
        if self.images is not None and not self.hypervisor.is_test_driver:
            self.every("instance-files", lambda: self.settings.monitoring.interval, self._clean_instance_files)

    async def _start_network_side(self) -> None:
        assert self.coord is not None
        lc = self.settings.localcontroller
        try:
            on, why = decide(lc.firewall, self.hypervisor.is_test_driver,
                             None if lc.firewall == "off" else await asyncio.to_thread(nft.usable))
        except ValueError as exc:
            raise StartupError(f"[localcontroller] {exc}") from exc
        log.info("firewall: %s", why)
        if on:
            # The tables stay when the role stops: they keep protecting the running guests.
            self.firewall = FirewallDaemon.for_host(self.coord.client, self.coord.root, self.id)
            self.firewall.start(lambda name, coro: self.scope.spawn(name, coro))
        if lc.cni_agent_port:
            if not 0 < lc.cni_agent_port < 65536:
                raise StartupError("[localcontroller] cni_agent_port must be 1..65535 (0 = no agent)")
            agent = CniAgent(self.coord, self.id, AgentSettings(
                port=lc.cni_agent_port, network=lc.cni_network, allocate=lc.cni_allocate,
                grace_period=lc.cni_grace_period, record_directory=lc.cni_record_directory))
            try:
                await agent.start()
            except OSError as exc:
                raise StartupError(f"[localcontroller] cni_agent_port = {lc.cni_agent_port}: "
                                   f"cannot listen on 127.0.0.1: {exc.strerror or exc}") from exc
            self.cni_agent = agent

    def role_metric_families(self) -> Iterable[Metric]:
        """The local controller's part of ``/metrics``: its firewall daemon and CNI agent."""
        fw = self.firewall
        yield metrics.gauge("snooze_firewall_running", "1 while the firewall daemon keeps this host's nftables tables.",
                            1.0 if fw is not None else 0.0)
        if fw is not None:
            st = fw.status
            yield metrics.counter("snooze_firewall_syncs", "Firewall syncs (read ZooKeeper, render, compare).", st.syncs)
            yield metrics.counter("snooze_firewall_applies", "nft batches applied (the rendering changed, or the tables were replaced).",
                                  st.applies)
            yield metrics.gauge("snooze_firewall_sync_failures", "Firewall syncs failed in a row (the rules applied last stay).",
                                st.failures)
            yield metrics.gauge("snooze_firewall_guests", "Guests of this host the firewall filters.", st.guests)
            yield metrics.gauge("snooze_firewall_ports", "Of those, guests whose bridge port was found (anti-spoofing).", st.ports)
            if st.last_apply is not None:
                yield metrics.gauge("snooze_firewall_last_apply_timestamp_seconds", "When the tables were last applied.",
                                    st.last_apply)
        if self.cni_agent is not None:
            yield metrics.gauge("snooze_cni_ports", "Container ports the CNI agent knows (and those awaiting a replay).",
                                {("known",): float(len(self.cni_agent.ports)), ("pending",): float(len(self.cni_agent.pending))},
                                ("state",))

    def _network_changed(self) -> None:
        """A guest's domain started or arrived here: its tap can now be found (anti-spoofing)."""
        if self.firewall is not None:
            self.firewall.poke()

    async def on_stop(self) -> None:
        if self.cni_agent is not None:
            await self.cni_agent.stop()
        if self.firewall is not None:
            await self.firewall.close()
        if self.images is not None:
            await self.images.close()
        if self.vrs is not None:
            await self.vrs.close()
        if self.vifs is not None:
            await asyncio.to_thread(self.vifs.close)  # the OVSDB connection's thread is joined
        await self.hypervisor.close()

    def _register(self) -> None:
        self.keep_registered("localcontrollers", lambda: self.description().to_json())

    # -- leader and group manager tracking -----------------------------------------------
    def _on_leader(self, value: Any | None) -> None:
        if value and self.see_epoch(int(value.get("epoch", 0))):
            self._learn_leader(value)

    def _on_gl_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if self.see_epoch(env.epoch) and isinstance(env.body, dict):
            self._learn_leader(env.body)

    def _learn_leader(self, leader: dict[str, Any]) -> None:
        self.leader = leader
        self._leader_seen.set()

    async def _until_leader(self, timeout: float) -> None:
        """Wait until a leader is known, at most ``timeout`` seconds: a host that starts (or is
        woken) before the leader's znode was read joins the moment it is, not a poll later."""
        self._leader_seen.clear()
        if self.leader is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._leader_seen.wait(), timeout)

    def _on_gm_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if self.gm is not None and env.sender == self.gm.id:
            self.gm_detector.heard(env.sender)

    async def _on_rejoin_order(self, msg: Rejoin, env: Envelope) -> Any:
        self.see_epoch(env.epoch)
        log.info("ordered to re-join by %s (epoch %d)", env.sender, env.epoch)
        if msg.leader is not None:
            self._learn_leader(msg.leader)  # the new leader, so we need not wait for its heartbeat
        if self.gm is not None and msg.exclude:
            self._excluded.append(self.gm.id)
        self._may_return = False  # told to move: the leader chooses
        self._rejoin.set()
        return {"ok": True}

    # -- joining -------------------------------------------------------------------------
    async def _join_loop(self) -> None:
        rejoining = False
        while True:
            if self.gm is None:
                if rejoining:
                    # The hosts of a group manager that died notice it together: spread them.
                    rejoining = False
                    await asyncio.sleep(self._backoff.first_rejoin_delay())
                wait = await self._join_once()
                if wait is not None:
                    if self.leader is None:
                        await self._until_leader(wait)
                    else:
                        await asyncio.sleep(wait)
                    continue
            self._rejoin.clear()
            self._may_return = False
            # Watch the group manager until it goes silent or we are told to move. Each look
            # sleeps until the group manager would count as dead (its heartbeats move that
            # moment on), not a fixed tick: with 2,000 hosts in one process, a look every
            # 1.5 s was over a thousand wake-ups a second for nothing.
            while self.gm is not None:
                if self._rejoin.is_set():
                    if self._may_return and await self._return_to(self.gm):
                        self._rejoin.clear()
                        self._may_return = False
                        continue
                    break
                if not self.gm_detector.alive(self.gm.id):
                    # Only after a stall of our own is the manager likely alive: else it is dead
                    # or cut off, and trying it first would keep the host orphaned longer.
                    if self._stalled_lately() and await self._return_to(self.gm):
                        continue
                    log.warning("group manager %s silent for %.1fs; re-joining", self.gm.id, self.gm_detector.timeout)
                    self._excluded.append(self.gm.id)
                    break
                wait = self.gm_detector.until_dead(self.gm.id) + 0.01
                due = time.monotonic() + wait
                try:
                    await asyncio.wait_for(self._rejoin.wait(), wait)
                except TimeoutError:
                    pass
                if time.monotonic() - due > self.settings.heartbeat.timeout / 4:
                    self._stall_ended = time.monotonic()  # we looked late: this host stalled
            self.gm = None
            rejoining = True

    async def _join_once(self) -> float | None:
        """One attempt to join; None once joined, else the seconds to wait before the next."""
        assert self.monitor is not None
        leader = self.leader
        if leader is None:
            # Nothing was asked of anyone: look again soon (the leader's znode or heartbeat).
            return min(self.settings.heartbeat.interval, 0.5)
        gl = GroupManagerDescription.from_json(leader)
        try:
            # One call to the leader per join: no idle connection left there per host
            # (2,000 hosts on one address filled its per-client connection limit).
            # A join waits as long as a peer may stay silent before it counts as dead: a leader
            # busy with thousands of joins answers late, and a shorter wait would throw its work
            # away and come back with more (every answer too late, none of them used).
            wait = max(3.0, self.settings.heartbeat.timeout)
            try:
                reply = await self.rpc.call(
                    gl.address, AssignLocalController.KIND,
                    AssignLocalController(self.description().to_json(), list(self._excluded)).to_wire(),
                    epoch=self.known_epoch, timeout=wait, keep_alive=False,
                )
            except RpcError as exc:
                if exc.code in LEADER_GONE and await self._newer_leader(leader):
                    log.info("the leader we knew (%s) did not answer (%s); %s leads now", gl.id, exc.code.value,
                             (self.leader or {}).get("id"))
                    return 0.0  # ask the new one at once
                raise
            gm = GroupManagerDescription.from_json(reply["groupManager"])
            domains = [d.to_json() for d in await self.hypervisor.domains()]
            join = LocalControllerJoin(self.description().to_json(), domains,
                                       host_info=self.vifs.host_info() if self.vifs is not None else None)
            joined = await self.rpc.call(gm.address, LocalControllerJoin.KIND, join.to_wire(), epoch=self.known_epoch,
                                         timeout=wait)
        except (RpcError, KeyError, TypeError, ValueError) as exc:
            # Internal answers carry no Retry-After: the code says whether asking again can help.
            wait = self._backoff.delay(retryable=exc.code.retryable if isinstance(exc, RpcError) else True)
            log.info("join attempt %d failed (%s); next in %.1fs", self._backoff.failures, exc, wait)
            return wait
        self._joined(gm, joined)
        log.info("joined group manager %s at %s", gm.id, gm.address.url)
        return None

    async def _newer_leader(self, known: dict[str, Any]) -> bool:
        """Read the leader's znode (at most once a heartbeat interval); True if it names a
        leader of a newer epoch than ``known``, which is then ours. A host stops watching that
        znode once it found a leader, and learns later ones from their heartbeats or re-join
        orders; but a new leader busy reading 2,000 registrations may send no heartbeat for a
        minute, and its hosts that had to re-join kept asking the dead one (docs/scale.md)."""
        now = time.monotonic()
        if self.coord is None or now - self._leader_read_at < self.settings.heartbeat.interval:
            return False
        self._leader_read_at = now
        try:
            value = await self.coord.get_json(self.coord.path("leader"))
        except CoordinationError:
            return False
        if not isinstance(value, dict) or int(value.get("epoch", 0)) <= int(known.get("epoch", 0)):
            return False
        self._on_leader(value)
        return self.leader is value

    def _joined(self, gm: GroupManagerDescription, answer: dict[str, Any], *, register: bool = True) -> None:
        # Heard now, as it answered: not when the join was sent. A manager busy with a storm of
        # joins answered after up to the whole timeout, and the host then found it "silent for
        # 10 s" at once and left it (docs/scale.md).
        self.gm_detector.heard(gm.id)
        self.see_epoch(int(answer.get("epoch", 0)))
        self.gm = gm
        self._gm_takes_deltas = answer.get("monitoringDeltas") is True
        self._deltas.forget()
        self._excluded.clear()
        self._backoff.reset()
        if register:
            self._register()  # now with our group manager's id

    def _stalled_lately(self) -> bool:
        """Whether this host stalled within the last timeout and a second. The heartbeats that
        waited in the socket during the stall are read at its end, as if just sent: the
        manager then looks alive one more timeout, and falls silent after a look on time."""
        return time.monotonic() - self._stall_ended < self.settings.heartbeat.timeout + 1.0

    async def _return_to(self, gm: GroupManagerDescription) -> bool:
        """Join ``gm`` again directly, without the leader; True if it took us back.

        For when it stopped hearing us (it dropped us as silent: its answer to a report says
        so), or we stopped hearing it soon after a stall of our own (a look at it came late by
        over a quarter of the timeout): on a host that stalled (a loaded machine, a paused
        process), both ends are alive, and it is the same manager that should have us. Before, every
        such host asked the leader for another one, excluding this one: after a stall of a
        whole process of simulated hosts, 1,563 of 2,000 moved at once, through a leader
        busy with a failover (docs/scale.md). The manager takes back only a host it has, or
        dropped as silent a short while ago (``returning``); a dead one does not answer. Not
        twice within three timeouts: a manager we can reach but never hear is left as before."""
        now = time.monotonic()
        if now - self._returned_at < 3 * self.settings.heartbeat.timeout:
            return False
        self._returned_at = now
        # The hosts of a process (or a rack) that stalled come back together: spread them, as
        # re-joins are, and give the manager as long as a join (a 3 s limit failed 832 of
        # 1,300 returns at 2,000 hosts, which then all asked the leader).
        await asyncio.sleep(self._backoff.first_rejoin_delay())
        try:
            domains = [d.to_json() for d in await self.hypervisor.domains()]
            join = LocalControllerJoin(self.description().to_json(), domains, returning=True,
                                       host_info=self.vifs.host_info() if self.vifs is not None else None)
            answer = await self.rpc.call(gm.address, LocalControllerJoin.KIND, join.to_wire(), epoch=self.known_epoch,
                                         timeout=max(3.0, self.settings.heartbeat.timeout))
        except (RpcError, TypeError, ValueError) as exc:
            log.info("group manager %s did not take us back (%s)", gm.id, exc)
            return False
        self._joined(gm, answer, register=False)  # our znode names it already
        log.info("back with group manager %s at %s", gm.id, gm.address.url)
        return True

    # -- periodic ------------------------------------------------------------------------
    async def _send_heartbeat(self) -> None:
        # Every monitoring report tells the group manager that this host lives, whole or as an
        # "unchanged" heartbeat: while they flow, a plain heartbeat tells it nothing more (at
        # rest, with the default equal intervals, this halves the datagrams each side handles).
        # It goes when nothing left for ``quiet`` seconds: more than an interval, so that the
        # previous tick's report counts, and little enough that the longest silence, quiet
        # plus an interval, stays well within the timeout (none is skipped if it cannot).
        hb = self.settings.heartbeat
        quiet = min(1.5 * hb.interval, (hb.timeout - hb.interval) / 2)
        if self.gm is not None and time.monotonic() - self._sent_at >= quiet:
            self._beat(LocalControllerHeartbeat(self.id), self.gm.address)

    def _beat(self, beat: LocalControllerHeartbeat, to: NetworkAddress) -> None:
        self.heartbeat.send(LocalControllerHeartbeat.KIND, self.known_epoch, beat.to_wire(), [to])
        self._sent_at = time.monotonic()

    async def _report(self) -> None:
        assert self.monitor is not None
        sample = await self.monitor.sample()
        gm = self.gm
        if gm is None:
            return
        same = self._deltas.unchanged(gm.id, sample) if self._gm_takes_deltas else None
        if same is not None:
            self._beat(LocalControllerHeartbeat(self.id, unchanged=same), gm.address)
            return
        try:
            sent = time.monotonic()
            await self.rpc.call(gm.address, Monitoring.KIND,
                                Monitoring.from_wire({"id": self.id, **sample, "seq": self._deltas.seq}).to_wire(),
                                epoch=self.known_epoch, timeout=3)
            # Counted from when it left: an answer up to 3 s late would otherwise hold back the
            # next plain heartbeat by as much, past the manager's timeout.
            self._sent_at = sent
        except RpcError as exc:
            self._deltas.forget()
            if exc.code is ErrorCode.NOT_JOINED:
                log.info("group manager %s does not know us; re-joining", gm.id)
                self._may_return = True
                self._rejoin.set()
            else:
                log.debug("monitoring report failed: %s", exc)

    # -- virtual machines ----------------------------------------------------------------
    async def _used(self) -> Capacity:
        """Capacity taken by the domains that run here and those being started: cpu and memory
        as libvirt reports them, network as the VMs started here requested it."""
        used = [0.0, 0.0, 0.0, 0.0]
        running = set()
        for d in await self.hypervisor.domains():
            if d.state.started:
                running.add(d.name)
                used[0] += d.vcpus
                used[1] += d.memory_kib
                asked = self._requested.get(d.name)
                if asked is not None:
                    used[2] += asked[2]
                    used[3] += asked[3]
        for name in set(self._requested) - running - set(self._starting):
            del self._requested[name]  # gone (destroyed, migrated away): no longer counted
        for c in self._starting.values():
            for i in range(4):
                used[i] += c[i]
        return (used[0], used[1], used[2], used[3])

    async def _check_room(self, demand: Capacity) -> None:
        """The local re-check before any domain starts here, over all four resources and up to
        the host's total (``snooze.capacity``, the rule placement uses): NotEnoughCapacity if it
        does not fit."""
        why = capacity.refusal(demand, capacity.headroom(self.total, await self._used()), self.id)
        if why is not None:
            raise NotEnoughCapacity(why)

    async def _on_start_vms(self, msg: LocalControllerStartVirtualMachines, _env: Envelope) -> Any:
        """Start a batch of VMs; each is re-checked against this host's free capacity first."""
        results = []
        # One bound for the whole batch's image fetches (see START_FETCH_WAIT).
        fetch_deadline = time.monotonic() + START_FETCH_WAIT
        for vm in msg.vms:
            results.append(await self._start_vm(vm, fetch_deadline))
        return {"results": results}

    async def _start_vm(self, vm: dict[str, Any], fetch_deadline: float | None = None) -> dict[str, Any]:
        vm_id = vm.get("id")
        if not is_valid_id(vm_id):
            return {"id": str(vm_id), "status": VMStatus.ERROR, "errorCode": ErrorCode.INVALID_ID, "message": "not a valid VM id"}
        assert isinstance(vm_id, str)
        try:
            existing = {d.name: d for d in await self.hypervisor.domains()}
            if vm_id in existing and existing[vm_id].state.started:
                # Already started (a retried order after a failover): never start twice.
                return {"id": vm_id, "status": existing[vm_id].state, "uuid": existing[vm_id].uuid,
                        "xml": await self.hypervisor.xml(vm_id), "adaptations": []}
            try:
                requested = _demand(vm.get("requested"))
            except (TypeError, ValueError) as exc:
                return {"id": vm_id, "status": VMStatus.ERROR, "errorCode": ErrorCode.BAD_SPECIFICATION,
                        "message": f"requested: {exc}"}
            plugging: Plugging | None = None
            if vm.get("vif") is not None:
                # Its network card is plugged here by a VIF plugin, before libvirt starts it.
                try:
                    if self.vifs is None:
                        raise NoMatchingPlugin(f"{self.id} loads no VIF plugin ([localcontroller] vif_plugins is empty)")
                    plugging = self.vifs.read(vm["vif"])
                except CodedError as exc:
                    return {"id": vm_id, "status": VMStatus.ERROR, "errorCode": exc.code, "message": exc.message}
            await self._check_room(requested)
            self._starting[vm_id] = requested
            self._busy_files.add(vm_id)
            made = plugged = False
            try:
                overlay = cidata = None
                prepared: list[str] = []
                image_id = vm.get("imageId")
                if self.images is not None and image_id:
                    if self.hypervisor.is_test_driver:
                        # No guest runs: only check the image is there, so that an unknown
                        # image fails as it would on a real host.
                        await self.images.describe(str(image_id))
                    else:
                        made = True
                        overlay, cidata, prepared = await self._make_instance(vm_id, str(image_id), vm, fetch_deadline)
                xml, changes = adapt_domain_xml(
                    str(vm.get("xml", "")), name=vm_id, mac=vm.get("mac"), test_driver=self.hypervisor.is_test_driver,
                    image_id=image_id, policy=self.hypervisor.policy, overlay=overlay, cidata=cidata,
                    accelerator=self.settings.localcontroller.accelerator, offered_types=self._offered_types,
                    vif=(plugging.tap, plugging.wire_json, plugging.no_offload) if plugging is not None else None,
                )
                changes = prepared + changes
                if plugging is not None:
                    assert self.vifs is not None
                    plugged = True  # a failed plug removed what it made; unplugging again is harmless
                    await self.vifs.plug(plugging, HostVifs.instance(vm_id, xml))
                # Checked already by adapt_domain_xml, before it added what this host made (the
                # VM's files, the plugged tap).
                info = await self.hypervisor.start(xml, checked=overlay is not None or plugging is not None)
                self._requested[vm_id] = requested
                made = plugged = False
                if overlay is not None:
                    self.instances.write_record(vm_id, **{**(self.instances.read_record(vm_id) or {}), "state": "running"})
            finally:
                self._starting.pop(vm_id, None)
                self._busy_files.discard(vm_id)
                if made:
                    # Never a half-started VM: whatever was made for it goes.
                    self.instances.remove(vm_id)
                if plugged and self.vifs is not None:
                    await self.vifs.unplug_domain(vm_id, xml)
        except HypervisorError as exc:
            return {"id": vm_id, "status": VMStatus.ERROR, "errorCode": exc.code, "message": str(exc)}
        except CodedError as exc:  # a VIF plugin's (PlugException): nothing was started
            return {"id": vm_id, "status": VMStatus.ERROR, "errorCode": exc.code, "message": exc.message}
        log.info("started %s (%s)", vm_id, "; ".join(changes) or "template as given")
        self._network_changed()
        return {"id": vm_id, "status": info.state, "uuid": info.uuid, "xml": xml, "adaptations": changes}

    async def _make_instance(self, vm_id: str, image_id: str, vm: dict[str, Any],
                             fetch_deadline: float | None = None) -> tuple[Any, Any, list[str]]:
        """The VM's overlay on the cached image and its config drive: (overlay, cidata, what
        was done). Fetches the image into the cache when missing."""
        assert self.images is not None
        started = time.monotonic()
        # Within the group manager's patience for a start order (30 s): a longer first fetch
        # answers a temporary refusal and goes on, so that a retry finds the image here.
        wait = START_FETCH_WAIT if fetch_deadline is None else max(0.0, fetch_deadline - time.monotonic())
        image = await self.images.acquire(image_id, wait=wait)
        try:
            inst = self.instances.of(vm_id)
            # The record first: from now on the cache sees the image as in use.
            self.instances.write_record(vm_id, imageId=image_id, backing=str(image.path), format=image.format,
                                        checksum=image.checksum, state="starting", host=self.id)
            await create_overlay(image.path, image.format, inst.overlay)
            net = guest_network(vm.get("mac"), vm.get("ip"), vm.get("subnet"))
            network = GuestNetwork(mac=net[0], address=net[1], prefix=net[2], gateway=net[3]) if net else None
            files = nocloud_files(instance_id=vm_id, hostname=vm_id, network=network)
            try:
                await asyncio.to_thread(write_config_drive, inst.cidata, files)
            except Exception as exc:
                raise DiskError(f"config drive of {vm_id}: {exc}") from exc
        except OSError as exc:
            raise DiskError(f"files of {vm_id} in {self.instances.directory}: {exc}") from exc
        finally:
            self.images.release(image.path)
        seconds = time.monotonic() - started
        log.info("disks of %s ready in %.3f s (image %s %s)", vm_id, seconds, image_id,
                 f"fetched in {image.seconds:.2f} s" if image.fetched else "cached")
        return inst.overlay, inst.cidata, [
            f"disk prepared in {seconds:.3f} s: overlay {inst.overlay.name} on image {image_id}"
            + (f" (fetched in {image.seconds:.2f} s)" if image.fetched else " (cached)")
            + (f", config drive for {net[1]}/{net[2]}" if net else ", config drive without network")]

    async def _clean_instance_files(self) -> None:
        """Remove the files of VMs that are no longer here (destroyed, shut off, migrated
        away, never arrived), then bound the image cache."""
        assert self.images is not None
        records = self.instances.records()
        if records:
            domains = {d.name: d for d in await self.hypervisor.domains()}
            grace = max(300.0, 3 * self.settings.localcontroller.migration_timeout)
            for vm_id, rec in records.items():
                if vm_id in self._busy_files or rec.get("host") not in (None, self.id):
                    continue  # being made, or another host's (an instance directory on shared storage)
                domain = domains.get(vm_id)
                if domain is not None and domain.state is not VMStatus.SHUTOFF:
                    if domain.state.started and rec.get("state") != "running":
                        self.instances.write_record(vm_id, **{**rec, "state": "running"})  # arrived
                    continue
                if domain is None and rec.get("state") == "incoming" and time.time() - float(rec.get("at", 0)) < grace:
                    continue  # being migrated here
                self.instances.remove(vm_id)
        self.images.evict()

    def _drop_instance(self, vm_id: str) -> None:
        if self.images is not None and vm_id not in self._busy_files:
            self.instances.remove(vm_id)
            self.images.evict()

    async def _domain(self, vm_id: str) -> DomainInfo | None:
        return next((d for d in await self.hypervisor.domains() if d.name == vm_id), None)

    async def _on_vm_action(self, msg: LocalControllerVmAction, _env: Envelope) -> Any:
        """A lifecycle order for one domain, named by its name and UUID: refused (409) when the
        domain of that name is another one, or is in a state the order does not apply to."""
        vm_id, uuid = _target(msg.vm_id, msg.uuid)
        action = msg.action
        if action not in ACTIONS:
            raise ApiError(ErrorCode.UNKNOWN_ACTION, f"action must be one of {', '.join(ACTIONS)}", field="action")
        try:
            domain = await self._domain(vm_id)
            if domain is None:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no domain {vm_id} on {self.id}", field="virtualMachineId")
            _check_uuid(domain, uuid, self.id)
            allowed = APPLIES_TO.get(action)
            if allowed and domain.state not in allowed:
                raise ApiError(ErrorCode.INVALID_STATE, f"{vm_id} is {domain.state}; {action} applies to {' or '.join(allowed)}",
                               field="virtualMachineId")
            xml = await self.hypervisor.xml(vm_id) if action == "destroy" and self.vifs is not None else None
            # By UUID too: should the domain be replaced since it was looked at, nothing happens.
            info = await self.hypervisor.lifecycle(vm_id, action, uuid=domain.uuid)
        except HypervisorError as exc:
            raise api_error(exc) from exc
        if action == "destroy":
            self._drop_instance(vm_id)
            if self.vifs is not None:
                await self.vifs.unplug_domain(vm_id, xml)
        return {"ok": True, "domain": info.to_json() if info else None}

    async def _on_resize(self, msg: LocalControllerResize, _env: Envelope) -> Any:
        """Give a running domain new vcpus and memory, live: re-checked against this host's room
        without the domain's present size first (NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY), then
        done by the hypervisor within the domain's maximums (RESIZE_REFUSED otherwise)."""
        vm_id, uuid = _target(msg.vm_id, msg.uuid)
        for name, value in (("vcpus", msg.vcpus), ("memory", msg.memory)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ApiError(ErrorCode.BAD_CAPACITY, f"{name} must be a whole number >= 1", field=name)
        try:
            new = _demand(msg.requested)
        except (TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.BAD_CAPACITY, f"requested: {exc}", field="requested") from exc
        new = (float(msg.vcpus), float(msg.memory), new[2], new[3])
        try:
            domain = await self._domain(vm_id)
            if domain is None:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no domain {vm_id} on {self.id}", field="virtualMachineId")
            _check_uuid(domain, uuid, self.id)
            if domain.state not in (VMStatus.RUNNING, VMStatus.PAUSED):
                raise ApiError(ErrorCode.INVALID_STATE, f"{vm_id} is {domain.state}; resize applies to RUNNING or PAUSED",
                               field="virtualMachineId")
            asked = self._requested.get(vm_id, (float(domain.vcpus), float(domain.memory_kib), 0.0, 0.0))
            now = (float(domain.vcpus), float(domain.memory_kib), asked[2], asked[3])
            used = await self._used()
            others = (used[0] - now[0], used[1] - now[1], used[2] - now[2], used[3] - now[3])
            why = capacity.refusal(new, capacity.headroom(self.total, others), self.id)
            if why is not None:
                raise NotEnoughCapacity(why)
            info = await self.hypervisor.resize(vm_id, msg.vcpus, msg.memory, uuid=domain.uuid)
        except HypervisorError as exc:
            raise api_error(exc) from exc
        self._requested[vm_id] = new
        return {"ok": True, "domain": info.to_json(), "requested": list(new)}

    async def _on_migrate(self, msg: LocalControllerMigrate, env: Envelope) -> Any:
        """Move a domain (named by name and UUID) to another local controller: live over
        libvirt, or the named non-live fallback when either side is libvirt's test driver
        (which cannot migrate). The destination's settings are those its group manager read
        from the destination's own registration."""
        vm_id, uuid = _target(msg.vm_id, msg.uuid)
        dest = msg.destination
        if not isinstance(dest, dict):
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "destination must be an object", field="destination")
        try:
            dest_id = check_id(dest.get("id"), "destination.id")
            dest_addr = NetworkAddress.from_json(dest["address"])
        except InvalidId as exc:
            raise ApiError(ErrorCode.INVALID_ID, str(exc), field=exc.field) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, f"destination.address: {exc}", field="destination.address") from exc
        settings = dest.get("hypervisorSettings") or {}
        if not isinstance(settings, dict):
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "destination.hypervisorSettings must be an object",
                           field="destination.hypervisorSettings")
        try:
            domain = await self._domain(vm_id)
            if domain is None:
                raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, f"no domain {vm_id} on {self.id}", field="virtualMachineId")
            _check_uuid(domain, uuid, self.id)
            method = (settings.get("migration") or {}).get("method") if isinstance(settings.get("migration"), dict) else None
            record = self.instances.read_record(vm_id) if self.images is not None else None
            if self.hypervisor.is_test_driver or settings.get("testDriver"):
                result = await self._move_non_live(vm_id, domain.uuid, dest_addr, env.epoch)
            elif record and record.get("imageId") and method in ("nonshared-incremental", "nonshared-full"):
                result = await self._migrate_with_disks(vm_id, domain.uuid, settings, dest_addr, env.epoch, record)
            else:
                async with self._vif_moving(vm_id, domain.uuid, dest_addr, env.epoch):
                    result = await self.hypervisor.migrate(vm_id, settings, uuid=domain.uuid)
                if record:
                    # Disks on shared storage moved with the domain: the destination owns them now.
                    self.instances.write_record(vm_id, **{**record, "host": dest_id})
        except HypervisorError as exc:
            raise api_error(exc) from exc
        log.info("moved %s to %s in %.2fs (%s)", vm_id, dest_id, result["duration"],
                 "non-live fallback" if result.get("nonLive") else "live")
        return {"ok": True, **result}

    async def _migrate_with_disks(self, vm_id: str, uuid: str, settings: dict[str, Any], dest: NetworkAddress, epoch: int,
                                  record: dict[str, Any]) -> dict[str, Any]:
        """A non-shared migration of a VM booting from an overlay here: the destination makes
        the image, an empty overlay of the same size and the config drive first
        (``lc.prepareMigration``), libvirt copies the overlay's content (the domain defined
        there with the destination's paths), then this host removes its files."""
        inst = self.instances.of(vm_id)
        self._busy_files.add(vm_id)
        try:
            try:
                size = await virtual_size(inst.overlay)
                cidata = (base64.b64encode(gzip.compress(inst.cidata.read_bytes())).decode()
                          if inst.cidata.exists() else None)
            except (OSError, ValueError, KeyError) as exc:
                raise MigrationFailed(f"{vm_id}: cannot read its disks here: {exc}") from exc
            prepare = PrepareMigration(vm_id=vm_id, image_id=str(record["imageId"]), size=size, cidata=cidata)
            try:
                reply = await self.rpc.call(dest, PrepareMigration.KIND, prepare.to_wire(), epoch=epoch, timeout=600)
                there = {str(inst.overlay): str(reply["overlay"])}
                if cidata is not None:
                    there[str(inst.cidata)] = str(reply["cidata"])
            except (RpcError, KeyError, TypeError) as exc:
                raise MigrationFailed(f"the destination could not prepare the disks of {vm_id}: {exc}") from exc
            xml = await self.hypervisor.xml(vm_id, migratable=True)
            dest_xml, copied = retarget_disks(xml, there, copy=(str(inst.overlay),))
            try:
                async with self._vif_moving(vm_id, uuid, dest, epoch):
                    result = await self.hypervisor.migrate(vm_id, settings, uuid=uuid, dest_xml=dest_xml, migrate_disks=copied)
            except HypervisorError:
                try:
                    await self.rpc.call(dest, PrepareMigration.KIND, PrepareMigration(vm_id=vm_id, cancel=True).to_wire(),
                                        epoch=epoch, timeout=10)
                except RpcError as exc:
                    log.warning("could not ask the destination to remove the files of %s: %s", vm_id, exc)
                raise
        finally:
            self._busy_files.discard(vm_id)
        if await self._domain(vm_id) is None:
            self._drop_instance(vm_id)
        return result

    @contextlib.asynccontextmanager
    async def _vif_moving(self, vm_id: str, uuid: str, dest: NetworkAddress, epoch: int) -> AsyncIterator[None]:
        """Around a live migration of a plugged VM: its VIF plugged at the destination first (QEMU
        there opens the tap), unplugged here once the domain left, or there if it did not."""
        xml = await self.hypervisor.xml(vm_id)
        raw = vif_of(xml)
        if raw is None:
            yield
            return
        try:
            await self.rpc.call(dest, PlugVif.KIND, PlugVif(vm_id=vm_id, vif=json.loads(raw), uuid=uuid).to_wire(),
                                epoch=epoch, timeout=60)
        except (RpcError, ValueError) as exc:
            raise MigrationFailed(f"the destination could not plug the network card of {vm_id}: {exc}") from exc
        try:
            yield
        except BaseException:
            try:
                await self.rpc.call(dest, PlugVif.KIND, PlugVif(vm_id=vm_id, cancel=True, vif=json.loads(raw)).to_wire(),
                                    epoch=epoch, timeout=30)
            except RpcError as exc:
                log.warning("could not ask the destination to unplug the network card of %s: %s", vm_id, exc)
            raise
        if self.vifs is not None and await self._domain(vm_id) is None:
            await self.vifs.unplug_domain(vm_id, xml)

    async def _on_plug_vif(self, msg: PlugVif, _env: Envelope) -> Any:
        """Plug (or, with ``cancel``, unplug) the VIF of a VM about to be migrated here."""
        vm_id, uuid = _target(msg.vm_id, msg.uuid)
        if self.vifs is None:
            raise ApiError(ErrorCode.NO_MATCHING_VIF_PLUGIN, f"{self.id} loads no VIF plugin", field="vif")
        try:
            plugging = self.vifs.read(msg.vif)
            instance = InstanceInfo(uuid=uuid or HostVifs.instance(vm_id, "").uuid, name=vm_id)
            if msg.cancel:
                if await self._domain(vm_id) is None:
                    await asyncio.to_thread(self.vifs.library.unplug, plugging.vif, instance)
                return {"ok": True}
            await self.vifs.plug(plugging, instance)
        except CodedError as exc:
            raise ApiError(exc.code, exc.message, field=exc.field or "vif") from exc
        return {"ok": True, "tap": plugging.tap}

    async def _on_prepare_migration(self, msg: PrepareMigration, _env: Envelope) -> Any:
        """Make the files of a VM about to be migrated here (see ``_migrate_with_disks``)."""
        vm_id, _uuid = _target(msg.vm_id)
        if self.images is None or self.hypervisor.is_test_driver:
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, f"{self.id} has no image repository: it cannot take the disks "
                           "of a VM booting from an image", field="imageId")
        present = await self._domain(vm_id)
        if msg.cancel:
            if present is None and vm_id not in self._busy_files:
                self.instances.remove(vm_id)
            return {"ok": True}
        if present is not None:
            raise ApiError(ErrorCode.MIGRATION_FAILED, f"a domain named {vm_id} already exists on {self.id}")
        if vm_id in self._busy_files:
            raise ApiError(ErrorCode.MIGRATION_FAILED, f"the files of {vm_id} are being made on {self.id} already")
        if not is_valid_id(msg.image_id):
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "imageId must be an image name", field="imageId")
        if isinstance(msg.size, bool) or not isinstance(msg.size, int) or not 0 < msg.size <= MAX_DISK_BYTES:
            raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "size must be the overlay's size in bytes", field="size")
        drive = None
        if msg.cidata is not None:
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(base64.b64decode(msg.cidata, validate=True))) as z:
                    drive = z.read(MAX_CONFIG_DRIVE_BYTES + 1)
            except (ValueError, OSError, EOFError) as exc:
                raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, f"cidata: {exc}", field="cidata") from exc
            if len(drive) > MAX_CONFIG_DRIVE_BYTES:
                raise ApiError(ErrorCode.BAD_MIGRATION_REQUEST, "cidata: too large", field="cidata")
        assert self.images is not None and msg.image_id is not None
        inst = self.instances.of(vm_id)
        self._busy_files.add(vm_id)
        done = False
        try:
            image = await self.images.acquire(msg.image_id)
            try:
                self.instances.write_record(vm_id, imageId=msg.image_id, backing=str(image.path), format=image.format,
                                            checksum=image.checksum, state="incoming", host=self.id)
                await create_overlay(image.path, image.format, inst.overlay, msg.size)
                if drive is not None:
                    inst.cidata.write_bytes(drive)
                done = True
            finally:
                self.images.release(image.path)
        except HypervisorError as exc:
            raise api_error(exc) from exc
        except OSError as exc:
            raise ApiError(ErrorCode.MIGRATION_FAILED, f"files of {vm_id} on {self.id}: {exc}") from exc
        finally:
            self._busy_files.discard(vm_id)
            if not done:
                self.instances.remove(vm_id)
        return {"ok": True, "overlay": str(inst.overlay), "cidata": str(inst.cidata) if drive is not None else None}

    async def _move_non_live(self, vm_id: str, uuid: str, dest: NetworkAddress, epoch: int) -> dict[str, Any]:
        t0 = time.monotonic()
        xml = await self.hypervisor.xml(vm_id)
        if self._xml_uuid(xml) != uuid:
            raise MigrationFailed(f"{vm_id} is no longer domain {uuid}", code=ErrorCode.VIRTUAL_MACHINE_MISMATCH)
        try:
            reply = await self.rpc.call(dest, ReceiveDomain.KIND, ReceiveDomain(xml=xml, vm_id=vm_id).to_wire(), epoch=epoch,
                                        timeout=60)
        except RpcError as exc:
            raise MigrationFailed(f"destination did not take {vm_id}: {exc}") from exc
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise MigrationFailed(f"destination did not take {vm_id}: it answered {reply!r}")
        await self.hypervisor.lifecycle(vm_id, "destroy", uuid=uuid)
        return {"duration": time.monotonic() - t0, "nonLive": True, "libvirtSeconds": 0.0}

    @staticmethod
    def _xml_uuid(xml: str) -> str | None:
        try:
            return (ET.fromstring(xml.encode()).findtext("uuid") or "").strip() or None
        except ET.ParseError:
            return None

    async def _on_receive_domain(self, msg: ReceiveDomain, _env: Envelope) -> Any:
        vm_id, _uuid = _target(msg.vm_id)
        xml = msg.xml
        if any(d.name == vm_id for d in await self.hypervisor.domains()):
            # Defining over it would replace that domain, and a failed start would undefine it.
            raise ApiError(ErrorCode.MIGRATION_FAILED, f"a domain named {vm_id} already exists on {self.id}")
        try:
            await self._check_room(self._xml_capacity(xml))
            await self.hypervisor.start(xml)
        except HypervisorError as exc:
            raise api_error(exc) from exc
        self._network_changed()
        return {"ok": True}

    @staticmethod
    def _xml_capacity(xml: str) -> Capacity:
        """A received domain's size (its network demand is not in its XML: 0)."""
        try:
            root = ET.fromstring(xml.encode())
            return float(root.findtext("vcpu") or 1), float(root.findtext("memory") or 0), 0.0, 0.0
        except (ET.ParseError, ValueError):
            return 0.0, 0.0, 0.0, 0.0

    async def _on_power_save(self, msg: PowerSave, env: Envelope) -> Any:
        """Put this host into a power-saving state on its group manager's order."""
        state = msg.state or DEFAULT_STATE
        if any(d.state.started for d in await self.hypervisor.domains()):
            raise ApiError(ErrorCode.HOST_NOT_IDLE, f"{self.id} still runs VMs")
        self.status = Status.PASSIVE
        log.warning("entering power-saving state %s on order of %s", state, env.sender)
        try:
            await self.power.apply(state)
        except PowerActionError as exc:
            self.status = Status.ACTIVE
            raise ApiError(ErrorCode.POWER_ACTION_FAILED, str(exc)) from exc
        return {"ok": True}

    async def _on_describe(self, _msg: DescribeLocalController, _env: Envelope) -> Any:
        return {"localController": self.description().to_json(), "domains": [d.to_json() for d in await self.hypervisor.domains()]}

    async def _http_describe(self, _request: Any) -> Any:
        return self.description().to_json()


def main(argv: list[str] | None = None) -> int:
    from snooze.service import main_for

    return main_for("localcontroller", LocalController, argv)
