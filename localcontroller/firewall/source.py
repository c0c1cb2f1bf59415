"""What one host's firewall is made of, read from the network model in ZooKeeper, and mapped
onto the renderer's input.

Read through the store's links (``snooze.network.store``: a ``guest:<id>`` child under each
object a guest names), so a host reads what concerns it, not every guest of the cluster:

- ``network/hypervisors/<host>`` children → the guests placed here; each one's record (its
  address, MAC, firewall group);
- ``network/fwgroups/<g>`` for every group those guests are in → the rules;
- ``network/fwgroups/<n>`` children for every group a rule names → its members, and each
  member's record (its address; on any host).

Every read but the members' records arms a kazoo watch with the one ``watch`` callback given,
so any change to what the rendering depends on calls it once (kazoo keeps one watcher per
path; the callback runs on kazoo's thread). A member's address never changes while its record
exists (the store refuses it), and a member leaving or joining moves its link, which is watched.
Watches on paths no longer read simply fire once more, for nothing.

Blocking (kazoo's synchronous calls, pipelined): run :meth:`ZkSource.read` in a thread. Every
kazoo failure, and a record of this host's that cannot be read, is one :class:`SourceError`:
the caller then keeps the rules it has (fail static) rather than render from half the data.
A member's unreadable record is skipped (its address is then denied: fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from localcontroller.firewall import render
from snooze.ids import is_valid_id
from snooze.network import model

__all__ = ["Snapshot", "SourceError", "ZkSource", "host_firewall"]

log = logging.getLogger(__name__)

Watch = Callable[[Any], None]
GUEST = "guest:"


class SourceError(RuntimeError):
    """The firewall's inputs could not be read (ZooKeeper unreachable, a record unreadable)."""


@dataclass(frozen=True)
class Snapshot:
    """This host's guests, their groups, and the addresses of every group their rules name."""

    guests: tuple[model.Guest, ...] = ()
    groups: Mapping[str, model.FirewallGroup] = field(default_factory=dict)
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def macs(self) -> list[str]:
        return [g.mac for g in self.guests if g.mac]


class ZkSource:
    """Reads one host's :class:`Snapshot` under a cluster's root (``host``: the local
    controller's id, which is its hypervisor id in the model)."""

    def __init__(self, client: KazooClient, root: str, host: str, timeout: float = 10.0) -> None:
        if not is_valid_id(host):
            raise ValueError(f"not a valid hypervisor id: {host!r}")
        self.client = client
        self.root = root.rstrip("/")
        self.host = host
        self.timeout = timeout

    def _path(self, kind: str, key: str) -> str:
        return f"{self.root}/network/{kind}/{key}"

    def read(self, watch: Watch) -> Snapshot:
        if not self.client.connected:
            # kazoo queues a request made while it reconnects until the session is back: fail
            # now (the rules applied last stay), the daemon retries.
            raise SourceError(f"ZooKeeper: not connected ({self.client.state})")
        try:
            return self._read(watch)
        except (KazooException, KazooTimeoutError) as exc:
            raise SourceError(f"ZooKeeper: {exc!r}") from exc

    # -- pipelined reads ----------------------------------------------------------------------
    def _children(self, path: str, watch: Watch) -> list[str]:
        """The children of ``path`` (watched); a missing znode: [] and its creation watched."""
        while True:
            try:
                return list(self.client.get_children_async(path, watch=watch).get(timeout=self.timeout))
            except NoNodeError:
                if self.client.exists_async(path, watch=watch).get(timeout=self.timeout) is None:
                    return []
                # created between the two reads: read it again

    def _records(self, kind: str, ids: Iterable[str], watch: Watch | None) -> dict[str, Any]:
        """``{id: decoded JSON}`` of the records that exist (read at once, then waited for)."""
        pending = [(i, self.client.get_async(self._path(kind, i), watch=watch)) for i in ids]
        out: dict[str, Any] = {}
        for key, result in pending:
            try:
                data, _stat = result.get(timeout=self.timeout)
            except NoNodeError:
                if watch is not None:
                    self.client.exists_async(self._path(kind, key), watch=watch).get(timeout=self.timeout)
                continue
            try:
                out[key] = json.loads(data)
            except ValueError as exc:
                out[key] = exc
        return out

    @staticmethod
    def _linked(children: Iterable[str]) -> list[str]:
        return sorted(c[len(GUEST):] for c in children if c.startswith(GUEST) and is_valid_id(c[len(GUEST):]))

    def _read(self, watch: Watch) -> Snapshot:
        here = self._linked(self._children(self._path("hypervisors", self.host), watch))
        guests: list[model.Guest] = []
        for gid, raw in self._records("guests", here, watch).items():
            try:
                guest = model.Guest.from_json(raw if not isinstance(raw, Exception) else None)
            except model.NetworkObjectError as exc:
                raise SourceError(f"guest {gid}'s record cannot be read: {exc}") from exc
            if guest.hypervisor == self.host:  # the link and the record are written together
                guests.append(guest)

        used = sorted({g.fwgroup for g in guests if g.fwgroup})
        groups: dict[str, model.FirewallGroup] = {}
        for gid, raw in self._records("fwgroups", used, watch).items():
            try:
                groups[gid] = model.FirewallGroup.from_json(raw if not isinstance(raw, Exception) else None)
            except model.NetworkObjectError as exc:
                raise SourceError(f"firewall group {gid}'s record cannot be read: {exc}") from exc

        named = sorted({r.group for grp in groups.values() for r in grp.rules if r.group})
        linked = {n: self._linked(self._children(self._path("fwgroups", n), watch)) for n in named}
        records = self._records("guests", sorted({m for ms in linked.values() for m in ms}), None)
        members: dict[str, tuple[str, ...]] = {}
        for name, ids in linked.items():
            addresses = []
            for mid in ids:
                raw = records.get(mid)
                try:
                    member = model.Guest.from_json(raw if not isinstance(raw, Exception) else None)
                except model.NetworkObjectError as exc:
                    log.warning("firewall: member %s of group %s skipped: %s", mid, name, exc)
                    continue
                if member.fwgroup == name and member.ip is not None:
                    addresses.append(str(member.ip))
            members[name] = tuple(addresses)
        return Snapshot(tuple(sorted(guests, key=lambda g: g.id)), groups, members)


def host_firewall(snapshot: Snapshot, ports: Mapping[str, str] | None = None) -> render.HostFirewall:
    """The renderer's input for ``snapshot`` (``ports``: guest MAC → its bridge port)."""
    ports = ports or {}
    guests = tuple(
        render.Guest(g.id, (str(g.ip),) if g.ip is not None else (), g.fwgroup,
                     interface=ports.get(g.mac) if g.mac else None, mac=g.mac)
        for g in snapshot.guests
    )
    groups = {
        gid: render.Group(gid, tuple(
            render.Rule(source=str(r.source) if r.source is not None else None, group=r.group, port_start=r.port_start,
                        port_end=r.port_end, protocol=r.protocol, action=r.action)
            for r in grp.rules))
        for gid, grp in snapshot.groups.items()
    }
    return render.HostFirewall(guests, groups, dict(snapshot.members))
