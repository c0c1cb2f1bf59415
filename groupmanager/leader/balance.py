"""The leader's care of where local controllers are: sleeping hosts of a group manager that is
gone are handed to another, and local controllers are kept balanced across group managers.

**Sleeping hosts.** A group manager records each host it powers down in ZooKeeper
(``sleeping/<lc>``, see ``groupmanager/manager/energy.py``). Every heartbeat interval (at most
a second), and at once when a group manager leaves ZooKeeper, the leader looks for entries whose group manager is
no longer alive (unregistered, or silent for the heartbeat timeout) and hands each to the alive
group manager managing the fewest hosts (version-checked, so two leaders cannot both move it),
then tells that one (``gm.adoptSleeping``), which counts it as PASSIVE, wakeable capacity and
wakes it the usual way when placement needs it.

**Rebalancing.** Every ``rebalance_interval`` seconds, if no group manager joined or left for
``rebalance_quiet`` heartbeat timeouts (not during a failover) and the previous round's moves
have landed, the leader counts the hosts of each alive group manager (awake ones by their
``localcontrollers/`` registration, sleeping ones by their ``sleeping/`` entry) and, while the
fullest holds two more than the emptiest, moves one from the first to the second, at most
``rebalance_moves`` per round: it asks the fullest to release hosts (``gm.releaseLocalControllers``;
it gives sleeping hosts first, then idle ones, never one with an operation in flight), hands a
sleeping one over as above, and orders an awake one to re-join (``lc.rejoin``), remembering where
it must go so that its ``lc.assign`` sends it there. Its VMs keep running: a host changes
managers, not domains. See docs/energy-handover.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from snooze.coordination import CoordinationError
from snooze.models import NetworkAddress, Status
from snooze.protocol.messages import AdoptSleepingHosts, Rejoin, ReleaseLocalControllers
from snooze.rpc import RpcError

if TYPE_CHECKING:
    from groupmanager.leader.role import LeaderRole

log = logging.getLogger(__name__)


def plan_moves(counts: Mapping[str, int], limit: int) -> list[tuple[str, str]]:
    """Moves (from, to), at most ``limit``, that bring the fullest group manager and the emptiest
    within one host of each other (so every one is within one of the mean); ties by id."""
    load = dict(counts)
    moves: list[tuple[str, str]] = []
    while len(load) > 1 and len(moves) < limit:
        fullest = max(sorted(load), key=lambda g: load[g])
        emptiest = min(sorted(load), key=lambda g: load[g])
        if load[fullest] - load[emptiest] <= 1:
            break
        moves.append((fullest, emptiest))
        load[fullest] -= 1
        load[emptiest] += 1
    return moves


def choose_adopter(load: dict[str, int], gone: str) -> str | None:
    """The alive group manager with the fewest hosts (ties by id), counting it one more."""
    candidates = sorted(g for g in load if g != gone)
    if not candidates:
        return None
    chosen = min(candidates, key=lambda g: load[g])
    load[chosen] += 1
    return chosen


@dataclass
class Move:
    target: str
    deadline: float


class Placement:
    """Sleeping-host handover and rebalancing for one leader term (``LeaderRole`` wires it)."""

    def __init__(self, role: LeaderRole, clock: Callable[[], float] = time.monotonic) -> None:
        self.role = role
        self.scope = role.scope
        self.settings = role.scope.settings.groupmanager
        self.clock = clock
        #: Awake hosts ordered to re-join: lc id -> where the leader sends them.
        self.moves: dict[str, Move] = {}
        self.membership_changed = clock()
        self._alive: set[str] = set()
        self.handed_over = 0  # sleeping hosts handed over this term
        self.moved = 0  # hosts moved by rebalancing this term
        self.last_counts: dict[str, int] = {}

    def start(self) -> None:
        hb = self.scope.settings.heartbeat
        # At least every second: a lost manager's hosts count again within its timeout + 2 s.
        self.scope.every("leader.sleeping", lambda: min(hb.interval, 1.0), self.hand_over)
        if self.settings.rebalance_interval > 0:
            self.scope.every("leader.rebalance", lambda: self.settings.rebalance_interval, self.rebalance)

    def membership_change(self) -> None:
        self.membership_changed = self.clock()

    # -- who is alive, and how many hosts each holds ---------------------------------------
    def alive(self) -> dict[str, Any]:
        """Alive group managers (heard within the heartbeat timeout and registered): id -> record.
        A change of this set counts as a membership change."""
        alive = {r.description.id: r for r in self.role.alive_gms()}
        if set(alive) != self._alive:
            self._alive = set(alive)
            self.membership_change()
        return alive

    async def census(self) -> tuple[dict[str, int], dict[str, tuple[dict[str, Any], int]]]:
        """(group manager id -> hosts it holds, the sleeping entries with their versions)."""
        coord, store = self.scope.coord, self.scope.store
        assert coord is not None and store is not None
        counts: dict[str, int] = {}
        for data in (await coord.children_json(coord.path("localcontrollers"))).values():
            gm = data.get("groupManagerId") if isinstance(data, dict) else None
            if isinstance(gm, str):
                counts[gm] = counts.get(gm, 0) + 1
        sleeping = await store.sleeping()
        for entry, _version in sleeping.values():
            gm = entry.get("groupManagerId")
            if isinstance(gm, str):
                counts[gm] = counts.get(gm, 0) + 1
        return counts, sleeping

    # -- sleeping hosts --------------------------------------------------------------------
    async def hand_over(self) -> None:
        if not self.role.node.is_leader:
            return
        alive = self.alive()
        if not alive:
            return
        coord, store = self.scope.coord, self.scope.store
        assert coord is not None and store is not None
        try:
            sleeping = await store.sleeping()
            if not sleeping:
                return
            registered = set(await coord.children_json(coord.path("groupmanagers")))
        except CoordinationError:
            return

        def gone(gm: Any) -> bool:
            # Unregistered, or registered but silent for the heartbeat timeout. One registered
            # that this leader has not read yet (just elected) is not gone.
            return gm not in registered or (gm in self.role.gms and gm not in alive)

        orphans = {lc: ev for lc, ev in sleeping.items() if gone(ev[0].get("groupManagerId"))}
        if not orphans:
            return
        try:
            counts, _ = await self.census()
        except CoordinationError:
            return
        load = {g: counts.get(g, 0) for g in alive}
        given: dict[str, list[dict[str, Any]]] = {}
        for lc_id, (entry, version) in sorted(orphans.items()):
            target = choose_adopter(load, str(entry.get("groupManagerId")))
            if target is None:
                return
            try:
                if not await store.hand_sleeping(lc_id, entry, version, target):
                    continue  # it woke, or was moved meanwhile
            except CoordinationError:
                return
            log.warning("sleeping host %s of %s (gone) handed to group manager %s", lc_id, entry.get("groupManagerId"), target)
            given.setdefault(target, []).append({**entry, "groupManagerId": target})
            self.handed_over += 1
        for target, entries in given.items():
            await self._adopt(alive[target].description.address, target, entries)

    async def _adopt(self, address: NetworkAddress, target: str, entries: list[dict[str, Any]]) -> None:
        try:
            await self.scope.rpc.call(address, AdoptSleepingHosts.KIND, AdoptSleepingHosts(entries).to_wire(),
                                      epoch=self.role.epoch, timeout=3)
        except RpcError as exc:
            # The entries name it: its own periodic check adopts them.
            log.info("group manager %s did not take its sleeping hosts yet (%s)", target, exc)

    # -- rebalancing -----------------------------------------------------------------------
    def target_for(self, lc_id: str, candidates: list[str]) -> str | None:
        """Where a host ordered to move must go, if it is still to move there."""
        move = self.moves.get(lc_id)
        if move is None:
            return None
        if self.clock() > move.deadline or move.target not in candidates:
            self.moves.pop(lc_id, None)
            return None
        self.moves.pop(lc_id, None)
        return move.target

    async def rebalance(self) -> None:
        if not self.role.node.is_leader:
            return
        now = self.clock()
        hb = self.scope.settings.heartbeat
        alive = self.alive()
        if now - self.membership_changed < self.settings.rebalance_quiet * hb.timeout or len(alive) < 2:
            return
        self.moves = {k: m for k, m in self.moves.items() if m.deadline > now}
        if self.moves:
            return  # the last round's moves have not all landed yet
        try:
            counts, _sleeping = await self.census()
        except CoordinationError:
            return
        load = {g: counts.get(g, 0) for g in alive}
        self.last_counts = dict(load)
        moves = plan_moves(load, max(0, self.settings.rebalance_moves))
        if not moves:
            return
        log.info("rebalancing local controllers %s: %s", load, ", ".join(f"{a}->{b}" for a, b in moves))
        pairs: dict[tuple[str, str], int] = {}
        for pair in moves:
            pairs[pair] = pairs.get(pair, 0) + 1
        for (source, target), count in pairs.items():
            await self._move(alive[source].description.address, source, target, alive[target].description.address, count)

    async def _move(self, address: NetworkAddress, source: str, target: str, target_address: NetworkAddress,
                    count: int) -> None:
        try:
            reply = await self.scope.rpc.call(address, ReleaseLocalControllers.KIND,
                                              ReleaseLocalControllers(count, target).to_wire(), epoch=self.role.epoch, timeout=5)
            released = [r for r in reply.get("released") or [] if isinstance(r, dict)]
        except (RpcError, AttributeError) as exc:
            log.info("group manager %s released no local controller (%s)", source, exc)
            return
        store = self.scope.store
        asleep: list[dict[str, Any]] = []
        deadline = self.clock() + 2 * self.scope.settings.heartbeat.timeout + 5.0
        for r in released:
            lc_id, desc = str(r.get("id")), r.get("localController")
            if r.get("status") == Status.PASSIVE.value and isinstance(desc, dict):
                if store is None:
                    continue
                try:
                    await store.put_sleeping(lc_id, desc, target)
                except (CoordinationError, ValueError) as exc:
                    log.warning("could not hand sleeping host %s to %s: %s", lc_id, target, exc)
                    continue
                asleep.append({"localController": desc, "groupManagerId": target})
                self.moved += 1
                continue
            try:
                where = NetworkAddress.from_json(desc["controlDataAddress"]) if isinstance(desc, dict) else None
            except (KeyError, TypeError, ValueError):
                where = None
            if where is None:
                continue
            self.moves[lc_id] = Move(target, deadline)
            try:
                await self.scope.rpc.call(where, Rejoin.KIND, Rejoin(exclude=True).to_wire(), epoch=self.role.epoch, timeout=3)
            except RpcError as exc:
                # Its old manager no longer knows it: its next report is refused and it re-joins anyway.
                log.info("could not order %s to re-join (%s); it will on its own", lc_id, exc)
            self.moved += 1
            log.info("moving local controller %s from %s to %s", lc_id, source, target)
        if asleep:
            await self._adopt(target_address, target, asleep)
