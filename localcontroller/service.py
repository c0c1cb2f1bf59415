"""The local controller: one per hypervisor host.

Joining follows the original: ask the group leader which group manager to join, join it with
this host's description and the domains libvirt already runs, then heartbeat and report
monitoring data to it. Missing heartbeats from the group manager (or an order to re-join from
a leader of the current epoch) sends it back to the group leader for a new assignment.
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections import deque
from typing import Any

from localcontroller.hypervisor import (
    HypervisorError,
    LibvirtHypervisor,
    MigrationFailed,
    NotEnoughCapacity,
)
from localcontroller.hypervisor.adapt import adapt_domain_xml
from localcontroller.hypervisor.libvirt import DomainInfo
from localcontroller.monitoring import HostMonitor
from localcontroller.power import DEFAULT_STATE, PowerActionError, PowerSaver
from snooze import capacity
from snooze import config as cfg
from snooze.codes import ErrorCode, VMStatus
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
    LocalControllerStartVirtualMachines,
    LocalControllerVmAction,
    Monitoring,
    PowerSave,
    ReceiveDomain,
    Rejoin,
)
from snooze.rpc import RpcError, api_error
from snooze.service import Service

log = logging.getLogger(__name__)

# The states each lifecycle order applies to; for any other, the order is refused with the
# domain's state and what it needs (libvirt's own refusal says only "not running").
APPLIES_TO = {"suspend": (VMStatus.RUNNING,), "resume": (VMStatus.PAUSED,), "shutdown": (VMStatus.RUNNING,),
              "reboot": (VMStatus.RUNNING,)}
ACTIONS = (*APPLIES_TO, "destroy")


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
        self.hypervisor = LibvirtHypervisor(lc.hypervisor_uri, policy=DomainPolicy.from_settings(settings.templates))
        self.total: Capacity = (0.0, 0.0, 0.0, 0.0)
        self.status = Status.ACTIVE
        self.gm: GroupManagerDescription | None = None
        self.leader: dict[str, Any] | None = None
        self.gm_detector = FailureDetector(settings.heartbeat.timeout)
        self._rejoin = asyncio.Event()
        self._excluded: deque[str] = deque(maxlen=4)
        self.monitor: HostMonitor | None = None
        # The process is the role: its handlers live in the process scope.
        scope = self.scope
        scope.heartbeat_on("gm.heartbeat", self._on_gm_heartbeat)
        scope.heartbeat_on("gl.heartbeat", self._on_gl_heartbeat)
        scope.on_message(Rejoin, self._on_rejoin_order, order=True)
        scope.on_message(DescribeLocalController, self._on_describe)
        scope.on_message(LocalControllerStartVirtualMachines, self._on_start_vms, order=True)
        scope.on_message(LocalControllerVmAction, self._on_vm_action, order=True)
        scope.on_message(LocalControllerMigrate, self._on_migrate, order=True)
        scope.on_message(ReceiveDomain, self._on_receive_domain, order=True)
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
        self.routes.add("localcontroller", "getLocalControllerDescription", self._http_describe, ("GET",))

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
                              "autoConverge": lc.migration_auto_converge, "postCopy": lc.migration_post_copy},
            },
            wakeup_settings={"driver": lc.wakeup_driver, "options": lc.wakeup_options},
            group_manager_id=self.gm.id if self.gm else None,
        )

    async def on_start(self) -> None:
        assert self.coord is not None
        await self.hypervisor.open()
        cpus, mem_kib, hv_host = await self.hypervisor.host_info()
        rx, tx = self.settings.localcontroller.network_capacity
        self.total = (float(cpus), float(mem_kib), float(rx), float(tx))
        if not self.settings.node.hostname and self.hypervisor.is_test_driver:
            self.hostname = f"{hv_host}-{self.settings.node.port}"
        self.monitor = HostMonitor(self.hypervisor, self.settings.monitoring.history)
        self.coord.watch_json(self.coord.path("leader"), self._on_leader)
        self._register()
        self.spawn("join", self._join_loop())
        self.every("heartbeat", lambda: self.settings.heartbeat.interval, self._send_heartbeat)
        self.every("monitoring", lambda: self.settings.monitoring.interval, self._report)

    async def on_stop(self) -> None:
        await self.hypervisor.close()

    def _register(self) -> None:
        self.keep_registered("localcontrollers", lambda: self.description().to_json())

    # -- leader and group manager tracking -----------------------------------------------
    def _on_leader(self, value: Any | None) -> None:
        if value and self.see_epoch(int(value.get("epoch", 0))):
            self.leader = value

    def _on_gl_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if self.see_epoch(env.epoch) and isinstance(env.body, dict):
            self.leader = env.body

    def _on_gm_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if self.gm is not None and env.sender == self.gm.id:
            self.gm_detector.heard(env.sender)

    async def _on_rejoin_order(self, msg: Rejoin, env: Envelope) -> Any:
        self.see_epoch(env.epoch)
        log.info("ordered to re-join by %s (epoch %d)", env.sender, env.epoch)
        if msg.leader is not None:
            self.leader = msg.leader  # the new leader, so we need not wait for its heartbeat
        if self.gm is not None and msg.exclude:
            self._excluded.append(self.gm.id)
        self._rejoin.set()
        return {"ok": True}

    # -- joining -------------------------------------------------------------------------
    async def _join_loop(self) -> None:
        interval = self.settings.heartbeat.interval
        while True:
            if self.gm is None:
                if not await self._join_once():
                    await asyncio.sleep(min(interval, 0.5))
                    continue
            self._rejoin.clear()
            # Watch the group manager until it goes silent or we are told to move.
            while self.gm is not None and not self._rejoin.is_set():
                if not self.gm_detector.alive(self.gm.id):
                    log.warning("group manager %s silent for %.1fs; re-joining", self.gm.id, self.gm_detector.timeout)
                    self._excluded.append(self.gm.id)
                    break
                try:
                    await asyncio.wait_for(self._rejoin.wait(), interval / 2)
                except TimeoutError:
                    pass
            self.gm = None

    async def _join_once(self) -> bool:
        assert self.monitor is not None
        leader = self.leader
        if leader is None:
            return False
        gl = GroupManagerDescription.from_json(leader)
        try:
            reply = await self.rpc.call(
                gl.address, AssignLocalController.KIND,
                AssignLocalController(self.description().to_json(), list(self._excluded)).to_wire(),
                epoch=self.known_epoch, timeout=3,
            )
            gm = GroupManagerDescription.from_json(reply["groupManager"])
            domains = [d.to_json() for d in await self.hypervisor.domains()]
            self.gm_detector.heard(gm.id)
            joined = await self.rpc.call(
                gm.address, LocalControllerJoin.KIND, LocalControllerJoin(self.description().to_json(), domains).to_wire(),
                epoch=self.known_epoch, timeout=3,
            )
        except (RpcError, KeyError, TypeError, ValueError) as exc:
            log.info("join attempt failed: %s", exc)
            return False
        self.see_epoch(int(joined.get("epoch", 0)))
        self.gm = gm
        self._excluded.clear()
        log.info("joined group manager %s at %s", gm.id, gm.address.url)
        self._register()  # now with our group manager's id
        return True

    # -- periodic ------------------------------------------------------------------------
    async def _send_heartbeat(self) -> None:
        if self.gm is not None:
            self.heartbeat.send(LocalControllerHeartbeat.KIND, self.known_epoch, LocalControllerHeartbeat(self.id).to_wire(),
                                [self.gm.address])

    async def _report(self) -> None:
        assert self.monitor is not None
        sample = await self.monitor.sample()
        gm = self.gm
        if gm is None:
            return
        try:
            await self.rpc.call(gm.address, Monitoring.KIND, Monitoring.from_wire({"id": self.id, **sample}).to_wire(),
                                epoch=self.known_epoch, timeout=3)
        except RpcError as exc:
            if exc.code is ErrorCode.NOT_JOINED:
                log.info("group manager %s does not know us; re-joining", gm.id)
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
        for vm in msg.vms:
            results.append(await self._start_vm(vm))
        return {"results": results}

    async def _start_vm(self, vm: dict[str, Any]) -> dict[str, Any]:
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
            await self._check_room(requested)
            self._starting[vm_id] = requested
            try:
                xml, changes = adapt_domain_xml(
                    str(vm.get("xml", "")), name=vm_id, mac=vm.get("mac"), test_driver=self.hypervisor.is_test_driver,
                    image_id=vm.get("imageId"), policy=self.hypervisor.policy,
                )
                info = await self.hypervisor.start(xml)
                self._requested[vm_id] = requested
            finally:
                self._starting.pop(vm_id, None)
        except HypervisorError as exc:
            return {"id": vm_id, "status": VMStatus.ERROR, "errorCode": exc.code, "message": str(exc)}
        log.info("started %s (%s)", vm_id, "; ".join(changes) or "template as given")
        return {"id": vm_id, "status": info.state, "uuid": info.uuid, "xml": xml, "adaptations": changes}

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
            # By UUID too: should the domain be replaced since it was looked at, nothing happens.
            info = await self.hypervisor.lifecycle(vm_id, action, uuid=domain.uuid)
        except HypervisorError as exc:
            raise api_error(exc) from exc
        return {"ok": True, "domain": info.to_json() if info else None}

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
            if self.hypervisor.is_test_driver or settings.get("testDriver"):
                result = await self._move_non_live(vm_id, domain.uuid, dest_addr, env.epoch)
            else:
                result = await self.hypervisor.migrate(vm_id, settings, uuid=domain.uuid)
        except HypervisorError as exc:
            raise api_error(exc) from exc
        log.info("moved %s to %s in %.2fs (%s)", vm_id, dest_id, result["duration"],
                 "non-live fallback" if result.get("nonLive") else "live")
        return {"ok": True, **result}

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
