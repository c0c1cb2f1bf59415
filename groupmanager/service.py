"""The group manager process: every one competes in the election; the winner runs the leader
role and stops its manager role, the others run the manager role. Leadership can be lost and
regained at any time, and both roles start and stop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client.core import Metric

from groupmanager.leader import LeaderRole
from groupmanager.manager import ManagerRole
from groupmanager.original import OriginalApi
from groupmanager.placement import make_placement_policy
from groupmanager.thresholds import thresholds_from
from snooze import config as cfg
from snooze import metrics
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError, LeaderElection
from snooze.coordination.election import delete_own
from snooze.discovery import Advertiser, zeroconf_interfaces
from snooze.http import ApiError, read_identifier, read_json
from snooze.models import GroupManagerDescription, ListenSettings
from snooze.protocol import Envelope
from snooze.service import Service

log = logging.getLogger(__name__)


class GroupManager(Service):
    role = "groupmanager"

    def __init__(self, settings: cfg.Settings) -> None:
        gm = settings.groupmanager
        for option in ("placement_policy", "dispatch_policy"):
            try:
                make_placement_policy(getattr(gm, option), thresholds=thresholds_from(gm))
            except ValueError as exc:  # UnknownPolicyError names the known policies
                raise cfg.ConfigError(f"[groupmanager] {option}: {exc}") from exc
        super().__init__(settings)
        self.leader_role: LeaderRole | None = None
        self.manager_role: ManagerRole | None = None
        self.election: LeaderElection | None = None
        self.advertiser: Advertiser | None = None
        self.scope.heartbeat_on("gl.heartbeat", self._on_gl_heartbeat)
        self.routes.add("groupmanager", "getGroupManagerDescription", self._http_describe, ("GET",))
        self.routes.add("groupmanager", "startVirtualCluster", self._http_start_vc, ("POST",))
        self.routes.add("groupmanager", "getVirtualClusterResponse", self._http_vc_response, ("POST",))
        # The original's group-manager API (VM verbs, repository information, migration, resize).
        self.original = OriginalApi(self)

    def description(self) -> GroupManagerDescription:
        # A leader's epoch is its own term; anyone else's, the newest term it has seen.
        epoch = self.leader_role.epoch if self.leader_role is not None else self.known_epoch
        return GroupManagerDescription(
            id=self.id, listen_settings=ListenSettings(self.address), hostname=self.hostname, epoch=epoch
        )

    def leader_description(self, epoch: int) -> GroupManagerDescription:
        d = self.description()
        d.epoch = epoch
        return d

    def role_metric_families(self) -> Iterable[Metric]:
        """The group manager's part of ``/metrics``: leading or not; as a manager, its hosts by
        power state, their VMs by state and its energy and inventory counters; as the leader,
        the group managers it leads and what it handed over or rebalanced (counted per term)."""
        yield metrics.gauge("snooze_group_leader", "1 while this group manager is the group leader.", 1.0 if self.is_leader else 0.0)
        manager = self.manager_role
        if manager is not None and manager.running:
            hosts = Counter(rec.description.status.value for rec in manager.lcs.values())
            yield metrics.gauge("snooze_local_controllers", "Local controllers this group manager manages, by power state.",
                                {(k,): float(v) for k, v in hosts.items()}, ("status",))
            vms = Counter(str(d.get("state")) for rec in manager.lcs.values() for d in rec.domains)
            yield metrics.gauge("snooze_virtual_machines", "VMs on this group manager's local controllers, by state.",
                                {(k,): float(v) for k, v in vms.items()}, ("status",))
            yield metrics.counter("snooze_wakeups", "Hosts this group manager woke (since its manager role started).", manager.energy.wakeups)
            yield metrics.counter("snooze_power_downs", "Hosts this group manager powered down (since its manager role started).",
                                  manager.energy.power_downs)
            yield metrics.counter("snooze_sleeping_hosts_adopted", "Sleeping hosts taken over from a group manager that is gone.",
                                  manager.energy.adopted)
            yield metrics.counter("snooze_vms_lost", "VMs marked lost (their host re-joined without them).", manager.inventory.lost)
            yield metrics.counter("snooze_vms_restarted", "Lost VMs started again from their spec.", manager.inventory.restarted)
            yield metrics.counter("snooze_monitoring_reports", "Monitoring reports taken: sent whole, or as a heartbeat saying "
                                  "the last one is unchanged (unmatched: it named a report this manager does not have).",
                                  {(k,): float(v) for k, v in manager.reports.items()}, ("form",))
        leader = self.leader_role
        if leader is not None and leader.running:
            yield metrics.gauge("snooze_group_managers", "Group managers the group leader leads.", float(len(leader.gms)))
            yield metrics.counter("snooze_local_controllers_rebalanced", "Local controllers moved between group managers this term.",
                                  leader.placement.moved)
            yield metrics.counter("snooze_sleeping_hosts_handed_over", "Sleeping hosts of lost group managers handed over this term.",
                                  leader.placement.handed_over)

    @property
    def is_leader(self) -> bool:
        """Leads and may say so: runs the leader role, and the election says its session is
        CONNECTED and its term not over (never while SUSPENDED: see ``LeaderElection``)."""
        return self.leader_role is not None and self.election is not None and self.election.presenting

    async def on_start(self) -> None:
        assert self.coord is not None
        self.election = LeaderElection(self.coord, self.id, self._elected, self._deposed, cleanup=self._after_term,
                                       should_yield=self._should_yield)
        self.coord.watch_json(self.coord.path("leader"), self._on_leader_znode)
        await self._become_manager()
        self.spawn("election", self.election.run())
        c = self.settings.cluster
        if c.discovery == "zeroconf":
            self.advertiser = Advertiser(zeroconf_interfaces(self.settings))
            await self.advertiser.start(
                f"{c.name}-{self.id}", self.address.address, self.address.port,
                {"cluster": c.name, "zookeeper": c.zookeeper, "role": self.role, "id": self.id},
            )

    async def on_stop(self) -> None:
        if self.advertiser is not None:
            await self.advertiser.stop()
        if self.election is not None:
            await self.election.stop()
        if self.leader_role is not None:
            await self.leader_role.stop()
            assert self.coord is not None
            await self.coord.unregister(self.coord.path("leader"))
        if self.manager_role is not None:
            await self.manager_role.stop()

    # -- role switching ------------------------------------------------------------------
    async def _become_manager(self) -> None:
        assert self.coord is not None
        self.manager_role = ManagerRole(self.scope.child("manager"), self)
        await self.manager_role.start()
        self.keep_registered("groupmanagers", lambda: self.description().to_json())

    async def _elected(self, epoch: int) -> None:
        assert self.coord is not None
        self.see_epoch(epoch)
        role, self.manager_role = self.manager_role, None
        if role is not None:
            self.cancel("register")
            await self.coord.unregister(self.coord.path("groupmanagers", self.id))
        self.leader_role = LeaderRole(self.scope.child("leader"), self, epoch)
        await self.leader_role.start()
        await self.coord.register(self.coord.path("leader"), self.leader_description(epoch).to_json())
        log.info("now group leader (epoch %d)", epoch)
        if role is not None:
            # Only now that the leader is announced: the LCs re-join it at once.
            await role.stop(handover_epoch=epoch, leader=self.leader_description(epoch).to_json())

    async def _deposed(self) -> None:
        assert self.coord is not None
        if self.leader_role is not None:
            await self.leader_role.stop()
            self.leader_role = None
        # Not re-created by a new session any more; deleted now if ZooKeeper is reachable (a
        # delete asked while cut off goes out, in order, before the lock's release), else by
        # _after_term once the session is back. Never waited for long: the manager role starts.
        with contextlib.suppress(CoordinationError, TimeoutError):
            await asyncio.wait_for(self.coord.unregister(self.coord.path("leader")), 2)
        if self.manager_role is None:
            await self._become_manager()

    async def _after_term(self) -> None:
        """Once the session is back after stepping down while cut off: our leader znode goes
        (only if it is still ours), before the abandoned lock is released."""
        assert self.coord is not None
        await delete_own(self.coord, self.coord.path("leader"))

    async def _should_yield(self, others: list[str]) -> bool:
        """Won the lock: step aside if another contender manages fewer local controllers (awake
        ones by their registration, sleeping ones by their ``sleeping/`` entry), so that fewer
        must move to other group managers when this one becomes leader."""
        if not self.settings.groupmanager.election_yield or self.manager_role is None or self.coord is None:
            return False
        mine = len(self.manager_role.lcs)
        if mine == 0:
            return False
        counts = dict.fromkeys(others, 0)
        for data in (await self.coord.children_json(self.coord.path("localcontrollers"))).values():
            gm = data.get("groupManagerId") if isinstance(data, dict) else None
            if gm in counts:
                counts[gm] += 1
        store = self.scope.store
        if store is not None:
            for entry, _version in (await store.sleeping()).values():
                gm = entry.get("groupManagerId")
                if gm in counts:
                    counts[gm] += 1
        fewer = min(counts.values())
        if worth_yielding(mine, fewer):
            log.info("stepping aside in the election: this group manager manages %d local controllers, %s %d",
                     mine, min(counts, key=lambda g: counts[g]), fewer)
            return True
        return False

    # -- who leads -----------------------------------------------------------------------
    def _on_leader_znode(self, value: Any | None) -> None:
        if not value:
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            leader = GroupManagerDescription.from_json(value)
            if self.see_epoch(leader.epoch) and self.manager_role is not None:
                self.manager_role.leader_seen(leader)

    def _on_gl_heartbeat(self, env: Envelope, _addr: tuple[str, int]) -> None:
        if env.sender == self.id or not self.see_epoch(env.epoch):
            return
        if self.leader_role is not None and self.election is not None and env.epoch > self.leader_role.epoch:
            # A leader of a newer term exists (heard over multicast while cut off from ZooKeeper,
            # say): this term is over, whatever our session still says.
            self.election.depose(f"{env.sender} leads with the newer epoch {env.epoch}")
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            leader = GroupManagerDescription.from_json(env.body)
            if self.manager_role is not None:
                self.manager_role.leader_seen(leader)

    def _leader_only(self) -> LeaderRole:
        if self.leader_role is None or self.leader_role.submissions is None:
            hint = ""
            if self.manager_role is not None and self.manager_role.leader is not None:
                hint = f"; the group leader is at {self.manager_role.leader.address.url}"
            # 409, not the code's 503: the caller asked the wrong process (it is no leader at all).
            raise ApiError(ErrorCode.NOT_GROUP_LEADER, f"this group manager is not the group leader{hint}", status=409)
        return self.leader_role

    async def _http_start_vc(self, request: web.Request) -> Any:
        leader = self._leader_only()
        assert leader.submissions is not None
        task_id = await leader.submissions.submit(await read_json(request))
        return web.Response(text=task_id, content_type="text/plain")

    async def _http_vc_response(self, request: web.Request) -> Any:
        leader = self._leader_only()
        assert leader.submissions is not None
        response = await leader.submissions.response(await read_identifier(request, "taskId"))
        if response is None:
            return web.Response(text="", content_type="application/json")
        return response

    async def _http_describe(self, _request: web.Request) -> Any:
        d = self.description().to_json()
        d["isGroupLeader"] = self.is_leader
        return d


def worth_yielding(mine: int, fewest: int) -> bool:
    """Whether a winner managing ``mine`` local controllers steps aside for a contender managing
    ``fewest``: only when that spares at least 2 hosts and a quarter of its own a move. Between
    balanced group managers (51 against 50) each winner stepped aside for the next: 33 of 40
    did in turn, and the election took a minute instead of a queue turn."""
    return mine - fewest >= max(2, -(-mine // 4))


def main(argv: list[str] | None = None) -> int:
    from snooze.service import main_for

    return main_for("groupmanager", GroupManager, argv)
