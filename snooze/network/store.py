"""The network model's store in ZooKeeper: create-only or version-checked saves, deletes refused
while in use (naming the users), and guests written whole with their address.

Layout under the cluster root (docs/networking.md)::

    network/networks/<id>              a Network (JSON, ``model.Network.to_json``)
    network/subnets/<id>               a Subnet
    network/flavors/<id>               a Flavor
    network/fwgroups/<id>              a FirewallGroup
    network/vlans/<tag>                a VLAN
    network/vlangroups/<id>            a VLANGroup
    network/guests/<id>                a Guest (the VM's id)
    network/hypervisors/<id>           a Hypervisor (the local controller's id): subnets -> bridge
    network/<kind>/<id>/<kind>:<id>    a link: the child names an object that uses this one
                                       (``subnet:s1`` under its network, ``guest:vm-1`` under its
                                       flavor, subnet, firewall group, VLAN group, hypervisor;
                                       ``fwgroup:web`` under a group its rules name;
                                       ``vlangroup:g`` under its VLANs; ``hypervisor:lc-1``
                                       under the subnets it serves)
    network/pools/<subnet>/...         the subnet's addresses (``snooze.network.ipam``)

Links make ZooKeeper itself enforce the references, in the same transaction as the write: a
link is created under the object it names (no such object: the create fails, and the write is
refused with ``UNKNOWN_REFERENCE`` naming the field), and an object is deleted at the version
read, which ZooKeeper refuses while it has children (the users: ``NETWORK_OBJECT_IN_USE`` names
them). A subnet is also refused while its pool holds addresses. Every save is a create (refused
if the id exists) or a set at the version read.

A guest is created in one transaction: its address (``Ipam.plan_reservation``: chunk, pool,
address znode), its record and its links (flavor, subnet, firewall group, VLAN group,
hypervisor); deleted in one: its record, its links and its address. A crash at any step leaves
all of it or nothing. ``plan_guest`` gives those ops to a caller that adds its own (a VM's
records) to the same transaction.

Blocking calls (kazoo's synchronous API): from the asyncio loop, run them with
``Coordinator.call`` (``await coord.call(store.create_guest, guest)``), which also turns kazoo's
errors into ``CoordinationError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from snooze.codes import CodedError, ErrorCode
from snooze.coordination.store import Changed, Op
from snooze.coordination.zk import Coordinator
from snooze.ids import is_valid_id
from snooze.network.ipam import (
    Ipam,
    NoFreeAddress,
    Reservation,
    TxFailed,
    mac_for_address,
    pool_create_ops,
    transact,
)
from snooze.network.model import (
    KINDS,
    VLAN,
    Guest,
    Hypervisor,
    NetworkObject,
    NetworkObjectError,
    Subnet,
    default_objects,
)

__all__ = ["ATTEMPTS", "default_objects", "Exists", "GuestPlan", "InUse", "NetworkStore", "NotFound", "UnknownReference"]

#: Read-modify-write attempts before a conflict is given up (``Changed``).
ATTEMPTS = 16
SINGULAR = {"networks": "network", "subnets": "subnet", "flavors": "flavor", "fwgroups": "fwgroup",
            "vlans": "vlan", "vlangroups": "vlangroup", "guests": "guest", "hypervisors": "hypervisor"}
#: Fields an update may not change (the pool and the address depend on them).
IMMUTABLE = {"subnets": ("network", "cidr", "start", "end"), "guests": ("network", "subnet", "ip")}


class NotFound(CodedError):
    code = ErrorCode.NETWORK_OBJECT_NOT_FOUND


class Exists(CodedError):
    code = ErrorCode.NETWORK_OBJECT_EXISTS


class UnknownReference(CodedError):
    """An object names another that does not exist; ``field`` names where."""

    code = ErrorCode.UNKNOWN_REFERENCE


class InUse(CodedError):
    """A delete refused: ``users`` (``guest:vm-1``, ``address 10.0.0.5 (guest vm-1)`` …) use it."""

    code = ErrorCode.NETWORK_OBJECT_IN_USE

    def __init__(self, what: str, users: Sequence[str]) -> None:
        shown = list(users[:20]) + ([f"and {len(users) - 20} more"] if len(users) > 20 else [])
        super().__init__(f"{what} is in use by {', '.join(shown)}")
        self.users = list(users)


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class GuestPlan:
    """A guest ready to be written (its address, MAC and bridge set) and the ops that write it."""

    guest: Guest
    ops: list[Op]
    roles: list[str] = field(default_factory=list)  # per op: what it writes (for errors)
    reservation: Reservation | None = None

    @property
    def subnet(self) -> str | None:
        return self.guest.subnet


class NetworkStore:
    """The network objects of one cluster (``root``: the cluster's ZooKeeper root)."""

    def __init__(self, client: KazooClient, root: str, ipam: Ipam | None = None) -> None:
        self.client = client
        self.root = root.rstrip("/")
        self.ipam = ipam or Ipam(client, self.root)
        #: Called with each step's name while a guest is created or deleted (``read``,
        #: ``planned``, ``commit``, ``committed``): the tests' crash injection.
        self.hook: Callable[[str], None] | None = None

    @classmethod
    def of(cls, coord: Coordinator) -> NetworkStore:
        return cls(coord.client, coord.root)

    # -- paths ---------------------------------------------------------------------------------
    def path(self, kind: str, key: str | None = None, *more: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        parts = [self.root, "network", kind]
        if key is not None:
            if not is_valid_id(key):
                raise NotFound(f"no {SINGULAR[kind]} {key!r}", field="id")
            parts.append(key)
        return "/".join([*parts, *more])

    def link_path(self, kind: str, key: str, user_kind: str, user_key: str) -> str:
        return self.path(kind, key, f"{SINGULAR[user_kind]}:{user_key}")

    def ensure(self) -> None:
        """Create the folders (idempotent)."""
        for kind in (*KINDS, "pools"):
            self.client.ensure_path(f"{self.root}/network/{kind}")

    def _step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, kind: str, key: str) -> tuple[NetworkObject, int]:
        """The object and its znode's version; NotFound."""
        try:
            data, stat = self.client.get(self.path(kind, key))
        except NoNodeError:
            raise NotFound(f"no {SINGULAR[kind]} {key}", field="id") from None
        return KINDS[kind].from_json(json.loads(data)), stat.version

    def find(self, kind: str, key: str) -> NetworkObject | None:
        try:
            return self.get(kind, key)[0]
        except NotFound:
            return None

    def objects(self, kind: str) -> list[NetworkObject]:
        """Every object of ``kind`` (pipelined reads), by id."""
        try:
            names = sorted(self.client.get_children(self.path(kind)))
        except NoNodeError:
            return []
        pending = [self.client.get_async(self.path(kind, n)) for n in names if is_valid_id(n)]
        out: list[NetworkObject] = []
        for res in pending:
            try:
                data, _stat = res.get(timeout=10)
            except NoNodeError:
                continue
            out.append(KINDS[kind].from_json(json.loads(data)))
        if kind == "vlans":
            out.sort(key=lambda v: v.tag if isinstance(v, VLAN) else 0)
        return out

    def users(self, kind: str, key: str) -> list[str]:
        """What uses an object (its links' names, ``guest:vm-1``), sorted; [] if it has none."""
        try:
            return sorted(self.client.get_children(self.path(kind, key)))
        except NoNodeError:
            return []

    def subnets_of(self, network: str) -> list[str]:
        return [u.split(":", 1)[1] for u in self.users("networks", network) if u.startswith("subnet:")]

    def hypervisors_serving(self, subnet: str) -> list[str]:
        """The hypervisors that serve ``subnet`` (none: every host serves it)."""
        return [u.split(":", 1)[1] for u in self.users("subnets", subnet) if u.startswith("hypervisor:")]

    def serves(self, hypervisor: str, subnet: str) -> bool:
        """Whether ``hypervisor`` may place a guest on ``subnet``: it serves it, or no host does."""
        serving = self.hypervisors_serving(subnet)
        return not serving or hypervisor in serving

    # -- the ops of a save, and what a failed op means --------------------------------------------
    def _link_ops(self, obj: NetworkObject, kind: str, refs: Sequence[tuple[str, str, str]], create: bool) -> tuple[list[Op], list[str]]:
        ops, roles = [], []
        for fld, ref_kind, ref_key in refs:
            path = self.link_path(ref_kind, ref_key, kind, obj.key)
            ops.append(Op("create", path) if create else Op("delete", path))
            roles.append(f"link:{fld}:{SINGULAR[ref_kind]} {ref_key}")
        return ops, roles

    def _explain(self, exc: TxFailed, roles: Sequence[str], what: str) -> Exception:
        """The error a failed transaction means, from the role of the first op refused."""
        for index, error in exc.failures:
            role = roles[index] if index < len(roles) else ""
            if role.startswith("link:") and isinstance(error, NoNodeError) and role.count(":") >= 2:
                _l, fld, target = role.split(":", 2)
                return UnknownReference(f"{fld}: {target} does not exist", field=fld)
            if role == "object" and isinstance(error, NodeExistsError):
                return Exists(f"{what} exists already", field="id")
            if role == "object" and isinstance(error, NoNodeError):
                return NotFound(f"no {what}", field="id")
            if role == "addresses" and isinstance(error, NotEmptyError):
                return InUse(what, [])  # refreshed by the caller
            if role == "object" and isinstance(error, NotEmptyError):
                return InUse(what, [])
        return Changed(f"{what} changed concurrently ({exc})")

    # -- create ---------------------------------------------------------------------------------
    def create(self, obj: NetworkObject) -> NetworkObject:
        """Save a new object (refused if its id exists: Exists). A subnet gets its empty address
        pool, and is refused if it overlaps another subnet of its network (its field ``cidr``
        named). A guest: see ``create_guest``."""
        if isinstance(obj, Guest):
            return self.create_guest(obj)
        kind = obj.KIND
        self.ensure()
        what = f"{SINGULAR[kind]} {obj.key}"
        for _attempt in range(ATTEMPTS):
            ops = [Op("create", self.path(kind, obj.key), _dump(obj.to_json()))]
            roles = ["object"]
            link_ops, link_roles = self._link_ops(obj, kind, obj.refs(), True)
            ops += link_ops
            roles += link_roles
            if isinstance(obj, Subnet):
                extra = self._subnet_checks(obj)
                ops += extra
                roles += ["network"] * len(extra)
                pool = pool_create_ops(self.ipam.pool_path(obj.id), obj)
                ops += pool
                roles += ["pool"] * len(pool)
            try:
                transact(self.client, ops)
                return obj
            except TxFailed as exc:
                err = self._explain(exc, roles, what)
                if isinstance(err, Changed):
                    continue
                raise err from None
        raise Changed(f"{what}: kept conflicting while being created")

    def _subnet_checks(self, subnet: Subnet) -> list[Op]:
        """Refuse a subnet that overlaps another of its network; the op that checks the network
        did not change meanwhile (its data set again at the version read: two subnets created at
        once in one network are written one after the other)."""
        try:
            data, stat = self.client.get(self.path("networks", subnet.network))
        except NoNodeError:
            raise UnknownReference(f"network: network {subnet.network} does not exist", field="network") from None
        for other_id in self.subnets_of(subnet.network):
            other = self.find("subnets", other_id)
            if isinstance(other, Subnet) and other.id != subnet.id and other.overlaps(subnet):
                raise NetworkObjectError("cidr", f"{subnet.cidr} overlaps subnet {other.id} ({other.cidr}) of network {subnet.network}")
        return [Op("set", self.path("networks", subnet.network), data, stat.version)]

    # -- update ---------------------------------------------------------------------------------
    def update(self, obj: NetworkObject, version: int | None = None) -> int:
        """Save a changed object at ``version`` (None: the version read now); its links follow
        its references. Returns the new version. Changed if it changed meanwhile (at the
        version given), NotFound, UnknownReference; a field that may not change is refused."""
        kind = obj.KIND
        what = f"{SINGULAR[kind]} {obj.key}"
        for _attempt in range(ATTEMPTS if version is None else 1):
            old, current = self.get(kind, obj.key)
            at = current if version is None else version
            new = obj.to_json()
            for fld in IMMUTABLE.get(kind, ()):
                if old.to_json().get(fld) != new.get(fld):
                    raise NetworkObjectError(fld, f"a {SINGULAR[kind]}'s {fld} cannot change")
            ops = [Op("set", self.path(kind, obj.key), _dump(new), at)]
            roles = ["object"]
            before = {(k, i) for _f, k, i in old.refs()}
            after = {(k, i) for _f, k, i in obj.refs()}
            gone = [(f, k, i) for f, k, i in old.refs() if (k, i) not in after]
            added = [(f, k, i) for f, k, i in obj.refs() if (k, i) not in before]
            for refs, create in ((gone, False), (added, True)):
                link_ops, link_roles = self._link_ops(obj, kind, refs, create)
                ops += link_ops
                roles += link_roles
            try:
                results = transact(self.client, ops)
                return int(results[0].version)
            except TxFailed as exc:
                err = self._explain(exc, roles, what)
                if isinstance(err, Changed) and version is None:
                    continue
                if isinstance(err, Changed) or any(isinstance(e, BadVersionError) for _i, e in exc.failures):
                    raise Changed(f"{what} changed since version {at}; read it again") from None
                raise err from None
        raise Changed(f"{what}: kept conflicting while being updated")

    # -- delete ---------------------------------------------------------------------------------
    def delete(self, kind: str, key: str, version: int | None = None) -> None:
        """Delete an object (at ``version`` if given); refused while it is used (InUse names the
        users: its links, and a subnet's reserved addresses with their guests). A guest: see
        ``delete_guest``."""
        if kind == "guests":
            self.delete_guest(key)
            return
        what = f"{SINGULAR[kind]} {key}"
        for _attempt in range(ATTEMPTS if version is None else 1):
            obj, current = self.get(kind, key)
            users = self.users(kind, key)
            if kind == "subnets":
                users += [f"address {ip} (guest {g})" for ip, g in sorted(self.ipam.addresses(key).items())]
            if users:
                raise InUse(what, users)
            ops = [Op("delete", self.path(kind, key), version=current if version is None else version)]
            roles = ["object"]
            link_ops, link_roles = self._link_ops(obj, kind, obj.refs(), False)
            ops += link_ops
            roles += link_roles
            if kind == "subnets":
                base = self.ipam.pool_path(key)
                chunks = self.client.get_children(f"{base}/chunks")
                pool = [Op("delete", f"{base}/chunks/{c}") for c in chunks]
                pool += [Op("delete", f"{base}/chunks"), Op("delete", f"{base}/addresses"), Op("delete", base)]
                ops += pool
                roles += ["pool"] * (len(pool) - 2) + ["addresses", "pool"]
            try:
                transact(self.client, ops)
                return
            except TxFailed as exc:
                err = self._explain(exc, roles, what)
                if isinstance(err, InUse | Changed) and version is None:
                    continue  # used or changed meanwhile: look again (InUse then names the users)
                raise (Changed(f"{what} changed since version {version}") if isinstance(err, Changed) else err) from None
        raise Changed(f"{what}: kept changing while being deleted")

    # -- hypervisors: which subnets they serve ----------------------------------------------------
    def ensure_hypervisor(self, hypervisor: str) -> Hypervisor:
        """The record of a local controller as a hypervisor, created empty if there is none."""
        try:
            found = self.get("hypervisors", hypervisor)[0]
        except NotFound:
            try:
                self.create(Hypervisor(hypervisor))
            except Exists:
                pass
            found = self.get("hypervisors", hypervisor)[0]
        assert isinstance(found, Hypervisor)
        return found

    def serve_subnet(self, hypervisor: str, subnet: str, bridge: str) -> Hypervisor:
        """Say that ``hypervisor`` serves ``subnet`` on ``bridge`` (UnknownReference if there is
        no such subnet)."""
        checked = Hypervisor.from_json({"id": hypervisor, "subnets": {subnet: bridge}})
        for _attempt in range(ATTEMPTS):
            hv = self.ensure_hypervisor(checked.id)
            _obj, version = self.get("hypervisors", hv.id)
            new = replace(hv, subnets={**hv.subnets, **checked.subnets})
            try:
                self.update(new, version)
                return new
            except Changed:
                continue
        raise Changed(f"hypervisor {hypervisor}: kept changing")

    def unserve_subnet(self, hypervisor: str, subnet: str) -> Hypervisor:
        for _attempt in range(ATTEMPTS):
            obj, version = self.get("hypervisors", hypervisor)
            assert isinstance(obj, Hypervisor)
            if subnet not in obj.subnets:
                return obj
            new = replace(obj, subnets={k: v for k, v in obj.subnets.items() if k != subnet})
            try:
                self.update(new, version)
                return new
            except Changed:
                continue
        raise Changed(f"hypervisor {hypervisor}: kept changing")

    # -- guests ---------------------------------------------------------------------------------
    def plan_guest(self, guest: Guest, *, fresh: bool = False) -> GuestPlan:
        """The ops that create ``guest`` whole: its address in its subnet (chosen here if it
        names none: a subnet of its network its hypervisor serves, with a free address), its
        record (with address, MAC and bridge filled in) and its links. Reads, never writes;
        for the caller's own transaction (``commit_guest`` interprets a failure). ``fresh``:
        after such a transaction failed."""
        network = self.find("networks", guest.network)
        if network is None:
            raise UnknownReference(f"network: network {guest.network} does not exist", field="network")
        hv = self.find("hypervisors", guest.hypervisor) if guest.hypervisor else None
        if guest.hypervisor and hv is None:
            raise UnknownReference(f"hypervisor: hypervisor {guest.hypervisor} does not exist", field="hypervisor")
        subnet = self._subnet_for(guest)
        self._step("read")
        bridge = guest.bridge or (hv.subnets.get(subnet.id) if isinstance(hv, Hypervisor) else None)
        reservation = self.ipam.plan_reservation(subnet.id, guest.id, fresh=fresh)
        ip = reservation.address
        full = replace(guest, subnet=subnet.id, ip=ip, mac=guest.mac or mac_for_address(ip), bridge=bridge)
        ops = list(reservation.ops)
        roles = ["address"] * len(ops)
        ops.append(Op("create", self.path("guests", guest.id), _dump(full.to_json())))
        roles.append("object")
        link_ops, link_roles = self._link_ops(full, "guests", full.refs(), True)
        ops += link_ops
        roles += link_roles
        self._step("planned")
        return GuestPlan(full, ops, roles, reservation)

    def _subnet_for(self, guest: Guest) -> Subnet:
        if guest.subnet:
            found = self.find("subnets", guest.subnet)
            if not isinstance(found, Subnet):
                raise UnknownReference(f"subnet: subnet {guest.subnet} does not exist", field="subnet")
            if found.network != guest.network:
                raise NetworkObjectError("subnet", f"subnet {found.id} is in network {found.network}, not {guest.network}")
            if guest.hypervisor and not self.serves(guest.hypervisor, found.id):
                raise NetworkObjectError("subnet", f"subnet {found.id} is not served by hypervisor {guest.hypervisor} "
                                                   f"(it is by {', '.join(self.hypervisors_serving(found.id))})")
            return found
        candidates = self.subnets_of(guest.network)
        if guest.hypervisor:
            candidates = [s for s in candidates if self.serves(guest.hypervisor, s)]
        for sid in sorted(candidates):
            found = self.find("subnets", sid)
            if isinstance(found, Subnet) and self.ipam.has_free(sid):
                return found
        where = f" served by hypervisor {guest.hypervisor}" if guest.hypervisor else ""
        raise NoFreeAddress(guest.network, 0, f"no free IP address in network {guest.network}: no subnet of it{where} has one")

    def explain_guest_failure(self, plan: GuestPlan, exc: TxFailed, offset: int = 0) -> Exception:
        """What the caller's failed transaction with ``plan``'s ops means: Exists,
        UnknownReference (naming the field), or Changed (plan again with ``fresh=True``; the
        allocator has been told to spread out). Only ``plan``'s ops are looked at: pass the
        failures re-indexed to them (``offset``: where its ops began in the transaction)."""
        mine = TxFailed([(i - offset, e) for i, e in exc.failures if offset <= i < offset + len(plan.ops)])
        err = self._explain(mine, plan.roles, f"guest {plan.guest.id}")
        if isinstance(err, Changed) and plan.subnet:
            self.ipam.conflicted(plan.subnet)
        return err

    def create_guest(self, guest: Guest) -> Guest:
        """Create ``guest`` with a fresh address, its record and its links in one transaction
        (all or nothing); returns it as written. NoFreeAddress, Exists, UnknownReference,
        NetworkObjectError."""
        self.ensure()
        if guest.ip is not None:
            raise NetworkObjectError("ip", "a new guest's address is reserved for it: give none")
        fresh = False
        for _attempt in range(ATTEMPTS):
            plan = self.plan_guest(guest, fresh=fresh)
            self._step("commit")
            try:
                transact(self.client, plan.ops)
            except TxFailed as exc:
                err = self.explain_guest_failure(plan, exc)
                if isinstance(err, Changed):
                    fresh = True
                    continue
                raise err from None
            if plan.subnet:
                self.ipam.succeeded(plan.subnet, plan.reservation)
            self._step("committed")
            return plan.guest
        raise Changed(f"guest {guest.id}: kept conflicting while being created")

    def plan_guest_deletion(self, guest_id: str, version: int | None = None) -> tuple[Guest, list[Op]] | None:
        """The ops that delete a guest whole (record at ``version``, or the version read, links,
        address); None if there is no such guest; Changed if it is not at ``version``."""
        try:
            obj, current = self.get("guests", guest_id)
        except NotFound:
            return None
        assert isinstance(obj, Guest)
        if version is not None and version != current:
            raise Changed(f"guest {guest_id} changed since version {version}; read it again")
        ops = [Op("delete", self.path("guests", guest_id), version=current)]
        ops += self._link_ops(obj, "guests", obj.refs(), False)[0]
        if obj.subnet and obj.ip is not None and self.ipam.owner(obj.subnet, obj.ip) == guest_id:
            ops += self.ipam.plan_release(obj.subnet, obj.ip, guest_id)
        return obj, ops

    def delete_guest(self, guest_id: str, version: int | None = None) -> bool:
        """Delete a guest with its links and its address in one transaction (the record at
        ``version`` if given: Changed otherwise, nothing deleted); False if there was none."""
        for _attempt in range(ATTEMPTS):
            planned = self.plan_guest_deletion(guest_id, version)
            if planned is None:
                return False
            self._step("commit")
            try:
                transact(self.client, planned[1])
            except TxFailed:
                # The record at a given version may have changed since: the next plan says so.
                continue
            self._step("committed")
            return True
        raise Changed(f"guest {guest_id}: kept changing while being deleted")

    def audit(self) -> dict[str, list[str]]:
        """What is not whole, all empty when sound: ``unowned`` addresses reserved for an id
        that has no guest record (the API's bare reservations ``POST /subnets/{id}/addresses``
        are such; after a crash of ``create_guest`` there are none), ``links`` naming a guest
        that does not exist, ``guests`` whose address is not theirs in the pool; and each
        subnet's pool audit (``pool:<subnet>:<what>``, ``Ipam.audit``)."""
        guests = {g.id: g for g in self.objects("guests") if isinstance(g, Guest)}
        out: dict[str, list[str]] = {"unowned": [], "links": [], "guests": []}
        for sub in self.objects("subnets"):
            held = self.ipam.addresses(sub.key)
            for ip, owner in sorted(held.items()):
                g = guests.get(owner)
                if g is None or str(g.ip) != ip:
                    out["unowned"].append(f"{sub.key}/{ip} ({owner})")
            for what, items in self.ipam.audit(sub.key).items():
                if items:
                    out[f"pool:{sub.key}:{what}"] = items
        for kind in ("flavors", "subnets", "fwgroups", "vlangroups", "hypervisors"):
            for obj in self.objects(kind):
                for user in self.users(kind, obj.key):
                    if user.startswith("guest:") and user[6:] not in guests:
                        out["links"].append(f"{kind}/{obj.key}/{user}")
        for g in guests.values():
            if g.subnet and g.ip is not None and self.ipam.owner(g.subnet, g.ip) != g.id:
                out["guests"].append(g.id)
        return out

