"""Virtual machines on the network model (issue 12, phase 2): the default network, a
submission's addresses and guests, and what forgetting a VM gives back.

* **The default network.** ``[groupmanager] virtual_machine_subnet`` is network ``default`` with
  one subnet ``default`` (``store.default_objects``), created by the group leader when it takes
  office (``ensure_default``: idempotent; a ``default`` subnet already there is used as it is).
  The addresses older versions handed out (``ipam/<cidr>/<ip>``, data the VM id) are marked
  taken in its pool in the same call (``adopt_ops``), so nothing they hold is handed out again.
* **One address space.** A VM's address is reserved in its subnet's pool (``Ipam``), by ops
  that join the leader's fenced transaction with the VM's records (``Reservations``), so a VM
  and an address reserved through the API (``POST /subnets/{id}/addresses``) never share one.
  Releases (a VM that failed, was lost, destroyed or expired) are ops of the same transaction
  that changes or deletes its record (``VMAddresses``, plugged into
  ``snooze.coordination.store.Store``, which may not import this layer).
* **Guests.** A VM that names a flavor becomes a guest (``network/guests/<vm id>``: flavor,
  network, subnet, address, MAC, firewall group, VLAN group) created with its records, its
  ``hypervisor`` set to its local controller once it runs there (``place_guest``), so a local
  controller's firewall finds its guests. A guest needs a flavor in the model: a VM that names
  none has no guest (docs/networking.md).

Blocking (kazoo's synchronous API): from the loop, through ``Coordinator.call``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from snooze.codes import CodedError, ErrorCode
from snooze.coordination.store import DEFAULT_SUBNET, Changed, Op, Store, subnet_key
from snooze.domainxml import DomainPolicy
from snooze.ids import is_valid_id
from snooze.network.ipam import Ipam, NoFreeAddress, Reservation, TxFailed, adopt_ops, transact
from snooze.network.model import Address, FirewallGroup, Flavor, Guest, Network, Subnet, VLANGroup
from snooze.network.store import Exists, NetworkStore, NotFound, default_objects
from snooze.virtualcluster import InvalidSubmission, VMSpec, apply_flavor

__all__ = ["Reservations", "VMAddresses", "VMNetwork", "ensure_default", "guest_ops", "place_guest", "plan_network",
           "reserve_in_order"]

log = logging.getLogger(__name__)

#: Attempts at creating the default network and adopting the old allocations.
ATTEMPTS = 8
#: Old allocations adopted per transaction.
ADOPT_BATCH = 2000


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class VMAddresses:
    """``snooze.coordination.store.AddressBook``: the pool releases and guest deletions that
    join a VM record's own transaction. A fresh allocator per call: stores run on worker
    threads, and releases read what they write afresh anyway."""

    def __init__(self, client: KazooClient, root: str) -> None:
        self.client = client
        self.root = root.rstrip("/")

    def release_ops(self, owned: dict[str, tuple[str, str]]) -> list[Op]:
        by_subnet: dict[str, dict[str, str]] = defaultdict(dict)
        for vm_id, (subnet, ip) in owned.items():
            if is_valid_id(subnet):
                by_subnet[subnet][ip] = vm_id
        ipam = Ipam(self.client, self.root)
        ops: list[Op] = []
        for subnet, held in sorted(by_subnet.items()):
            ops += ipam.plan_releases(subnet, held)
        return ops

    def guest_deletions(self, vm_ids: Collection[str]) -> dict[str, list[Op]]:
        store = NetworkStore(self.client, self.root)
        wanted = [v for v in vm_ids if is_valid_id(v)]
        pending = [(v, self.client.get_async(store.path("guests", v))) for v in wanted]
        out: dict[str, list[Op]] = {}
        for vm_id, res in pending:
            try:
                data, stat = res.get(timeout=10)
                guest = Guest.from_json(json.loads(data))
            except NoNodeError:
                continue
            except ValueError:
                continue  # not a guest this version can read: left for an operator
            ops = [Op("delete", store.path("guests", vm_id), version=stat.version)]
            ops += [Op("delete", store.link_path(kind, key, "guests", vm_id)) for _f, kind, key in guest.refs()]
            out[vm_id] = ops
        return out


# Every Store of a process that imports this module releases pool addresses and guests.
Store.address_books = lambda coord: VMAddresses(coord.client, coord.root)


def ensure_default(client: KazooClient, root: str, cidr: str) -> Subnet:
    """Network ``default`` and its subnet ``default`` (``cidr``), created if absent, and the
    addresses older versions allocated in ``ipam/<cidr>/`` adopted into its pool; returns the
    subnet as stored (one saved earlier with another CIDR stays: the operator changed the
    setting, the pool cannot follow)."""
    store = NetworkStore(client, root)
    store.ensure()
    network, subnet = default_objects(cidr)
    for obj in (network, subnet):
        if store.find(obj.KIND, obj.key) is None:
            try:
                store.create(obj)
            except Exists:
                pass
    found = store.find("subnets", DEFAULT_SUBNET)
    assert isinstance(found, Subnet)
    legacy = f"{store.root}/ipam/{subnet_key(cidr)}"
    try:
        names = client.get_children(legacy)
    except NoNodeError:
        return found
    pending = [(n, client.get_async(f"{legacy}/{n}")) for n in names]
    taken: dict[str, str] = {}
    for name, res in pending:
        try:
            data, _stat = res.get(timeout=10)
        except NoNodeError:
            continue
        taken[name] = bytes(data).decode(errors="replace")
    ipam = Ipam(client, store.root)
    items = sorted(taken.items())
    for start in range(0, len(items), ADOPT_BATCH):
        batch = dict(items[start:start + ADOPT_BATCH])
        for _attempt in range(ATTEMPTS):
            try:
                transact(client, adopt_ops(ipam, DEFAULT_SUBNET, batch))
                break
            except TxFailed:
                time.sleep(0.01)  # a reservation or release in between: read again
    return found


@dataclass
class Reservations:
    """A submission's addresses: one ``Reservation`` per subnet (``snooze.coordination.store.
    SubmissionAddresses``: its ops in one transaction, or split over a chunked recording's)."""

    ipam: Ipam
    by_subnet: dict[str, Reservation] = field(default_factory=dict)

    def ops_for(self, batches: list[list[str]]) -> list[list[Op]]:
        out: list[list[Op]] = [[] for _ in batches]
        for reservation in self.by_subnet.values():
            for i, ops in enumerate(reservation.split(self.ipam, batches)):
                out[i] += ops
        return out

    def address(self, vm_id: str) -> tuple[str, Address] | None:
        for subnet, reservation in self.by_subnet.items():
            if vm_id in reservation.addresses:
                return subnet, reservation.addresses[vm_id]
        return None

    def succeeded(self) -> None:
        for subnet, reservation in self.by_subnet.items():
            self.ipam.succeeded(subnet, reservation)

    def conflicted(self) -> None:
        for subnet in self.by_subnet:
            self.ipam.conflicted(subnet)


def reserve_in_order(ipam: Ipam, subnet: str, vm_ids: Sequence[str], *, fresh: bool = False) -> Reservation | None:
    """A plan that reserves an address for as many of ``vm_ids`` as ``subnet`` has room for, in
    order (all of them when it can; the rest get none, as the old allocator did: each such VM
    fails NO_FREE_IP_ADDRESS); None if it has no free address at all. NotReserved if there is
    no such pool. A short range costs a few plans (a binary search), never a walk."""
    try:
        return ipam.plan_reservations(subnet, list(vm_ids), fresh=fresh)
    except NoFreeAddress:
        pass
    low, high = 0, len(vm_ids) - 1  # low addresses are known to be free; high at most
    best: Reservation | None = None
    while low < high:
        n = (low + high + 1) // 2
        try:
            best, low = ipam.plan_reservations(subnet, list(vm_ids[:n]), fresh=True), n
        except NoFreeAddress:
            high = n - 1
    if low == 0:
        return None
    if best is None or len(best.addresses) != low:
        best = ipam.plan_reservations(subnet, list(vm_ids[:low]), fresh=True)
    return best


def guest_ops(store: NetworkStore, guest: Guest) -> list[Op]:
    """The ops creating ``guest``'s record and its links (its address is the caller's
    reservation, in the same transaction); a reference to nothing makes that transaction fail."""
    ops = [Op("create", store.path("guests", guest.id), _dump(guest.to_json()))]
    ops += [Op("create", store.link_path(kind, key, "guests", guest.id)) for _f, kind, key in guest.refs()]
    return ops


def place_guest(store: NetworkStore, vm_id: str, hypervisor: str | None) -> bool:
    """Record that ``vm_id``'s guest runs on ``hypervisor`` (its local controller; the link
    moves with it): when it starts, and after a migration. False if it has no guest, or it
    cannot be placed there (logged: the VM runs all the same)."""
    try:
        return _place_guest(store, vm_id, hypervisor)
    except CodedError as exc:
        log.warning("the guest of %s could not be placed on %s: %s", vm_id, hypervisor, exc)
        return False


def _place_guest(store: NetworkStore, vm_id: str, hypervisor: str | None) -> bool:
    for _attempt in range(ATTEMPTS):
        try:
            obj, version = store.get("guests", vm_id)
        except NotFound:
            return False
        assert isinstance(obj, Guest)
        if obj.hypervisor == hypervisor:
            return True
        if hypervisor is not None:
            store.ensure_hypervisor(hypervisor)
        try:
            store.update(replace(obj, hypervisor=hypervisor), version)
            return True
        except Changed:
            continue  # changed meanwhile (a migration): read again
    return False


@dataclass
class VMNetwork:
    """Where a submitted VM's address comes from: its subnet and address, or why it has none
    (a code and a message naming the template's field)."""

    subnet: Subnet | None = None
    ip: Address | None = None
    refused: tuple[ErrorCode, str] | None = None


def plan_network(store: NetworkStore, ipam: Ipam, specs: Sequence[VMSpec], policy: DomainPolicy | None = None, *,
                 fresh: bool = False) -> tuple[dict[str, VMNetwork], Reservations]:
    """Resolve each spec's references (flavor, network, subnet, firewall group, VLAN group:
    read once each), fill in what its flavor gives (``apply_flavor``), choose its subnet (the
    one it names; else the first of its network's with a free address; else the default
    subnet) and plan its address. Reads, never writes: the reservation's ops join the caller's
    transaction. A reference to nothing fails that VM, naming the template's field."""
    found: dict[tuple[str, str], Any] = {}

    def get(kind: str, key: str) -> Any:
        if (kind, key) not in found:
            found[(kind, key)] = store.find(kind, key)
        return found[(kind, key)]

    out: dict[str, VMNetwork] = {}
    wanted: dict[str, list[str]] = defaultdict(list)
    for i, spec in enumerate(specs):
        where = f"virtualMachineTemplates[{i}]"
        result = VMNetwork()
        out[spec.id] = result
        missing = next(((key, value) for key, value in spec.references.items() if key in _KINDS
                        and not isinstance(get(_KINDS[key], value), _CLASSES[key])), None)
        if missing is not None:
            result.refused = (ErrorCode.UNKNOWN_REFERENCE,
                              f"{where}.{missing[0]}: {missing[0]} {missing[1]!r} does not exist; it was not started")
            continue
        if spec.flavor is not None:
            try:
                apply_flavor(spec, get("flavors", spec.flavor), policy)
            except InvalidSubmission as exc:
                result.refused = (ErrorCode.INVALID_TEMPLATE, f"{exc}; it was not started")
                continue
        subnet = _subnet_for(store, ipam, spec, get)
        if isinstance(subnet, tuple):
            result.refused = (subnet[0], f"{where}.{subnet[1]}; it was not started")
            continue
        result.subnet = subnet
        wanted[subnet.id].append(spec.id)
    reservations = Reservations(ipam)
    for subnet_id, vm_ids in wanted.items():
        plan = reserve_in_order(ipam, subnet_id, vm_ids, fresh=fresh)
        if plan is not None:
            reservations.by_subnet[subnet_id] = plan
        for vm_id in vm_ids:
            ip = plan.addresses.get(vm_id) if plan is not None else None
            if ip is None:
                out[vm_id].refused = (ErrorCode.NO_FREE_IP_ADDRESS, f"no free IP address in subnet {subnet_id}")
            else:
                out[vm_id].ip = ip
    return out, reservations


_KINDS = {"flavor": "flavors", "network": "networks", "subnet": "subnets", "fwgroup": "fwgroups",
          "vlangroup": "vlangroups"}
_CLASSES: dict[str, type] = {"flavor": Flavor, "network": Network, "subnet": Subnet, "fwgroup": FirewallGroup,
                             "vlangroup": VLANGroup}


def _subnet_for(store: NetworkStore, ipam: Ipam, spec: VMSpec, get: Any) -> Subnet | tuple[ErrorCode, str]:
    """The subnet a spec's address comes from, or (code, "field: why")."""
    if spec.subnet is not None:
        subnet = get("subnets", spec.subnet)
        if spec.network is not None and subnet.network != spec.network:
            return (ErrorCode.UNKNOWN_REFERENCE, f"subnet: subnet {subnet.id!r} is in network {subnet.network!r}, "
                                                 f"not {spec.network!r}")
        return subnet  # type: ignore[no-any-return]
    if spec.network is None:
        subnet = get("subnets", DEFAULT_SUBNET)
        if not isinstance(subnet, Subnet):
            return (ErrorCode.UNKNOWN_REFERENCE, "network: the default network has no subnet (the group leader creates "
                                                 "it when it takes office)")
        return subnet
    candidates = sorted(store.subnets_of(spec.network))
    if not candidates:
        return (ErrorCode.NO_FREE_IP_ADDRESS, f"network: network {spec.network!r} has no subnet")
    for sid in candidates:
        try:
            if ipam.has_free(sid) and isinstance(get("subnets", sid), Subnet):
                return get("subnets", sid)  # type: ignore[no-any-return]
        except NoFreeAddress:
            continue
    return (ErrorCode.NO_FREE_IP_ADDRESS, f"network: no subnet of network {spec.network!r} has a free address")
