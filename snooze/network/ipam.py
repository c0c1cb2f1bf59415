"""Address management of subnets: bitmap chunks, a cursor, version-checked writes.

A subnet's pool lives under ``network/pools/<subnet>``::

    network/pools/<subnet>                 the pool: {"subnet", "cidr", "start", "end", "size",
                                           "chunkBits", "next", "open"}
    network/pools/<subnet>/chunks/<n>      bitmap chunk n: CHUNK_BITS bits (little-endian bytes);
                                           bit k set = address start + n*CHUNK_BITS + k is taken
    network/pools/<subnet>/addresses/<ip>  an allocation: its data is the guest's id

Chunks are created lazily, in order: ``next`` is the first chunk not created yet, ``open`` lists
the created chunks that still have a free bit. Every transaction that fills a chunk or frees a
bit of a full one updates the pool in the same transaction, version-checked, so "a created chunk
is open if and only if it has a free bit" always holds. Finding a free address is therefore
O(1): this allocator's cursor chunk if it is open, else any open chunk, else a new chunk at
``next`` (an IPv6 /64 never creates more chunks than it hands out addresses / CHUNK_BITS); and
exhaustion is known, not guessed: no open chunk and ``next`` past the last one (read fresh)
raises ``NoFreeAddress`` naming the subnet.

A reservation writes, in one multi-op transaction: the chunk (set at the version read, or
created), the pool when a chunk opens or fills (set at its version), and the address znode
(created: ZooKeeper itself refuses a second owner). ``plan_reservations`` returns those
operations (``snooze.coordination.store.Op``) without writing them, for the caller to add to
its own transaction with its guest record, its hypervisor link or a VM's records; if that
transaction fails on a version or an existing node, the caller plans again with
``fresh=True``. ``reserve`` does it all alone.

Contention: an allocator keeps to its cursor chunk; after a conflict it opens a new chunk (while
the range has some) or picks another open one at random, so concurrent allocators soon work on
different chunks. An ``Ipam`` instance is one allocator: not to be shared between threads
(the kazoo client may be).
"""

from __future__ import annotations

import ipaddress
import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError, RolledBackError, RuntimeInconsistency

from snooze.codes import CodedError, ErrorCode
from snooze.coordination.store import Changed, Op
from snooze.ids import is_valid_id
from snooze.network.model import Address, Subnet

__all__ = [
    "CHUNK_BITS", "Ipam", "NoFreeAddress", "NotReserved", "PoolState", "Reservation", "TxFailed",
    "adopt_ops", "mac_for_address", "pool_create_ops", "transact",
]

CHUNK_BITS = 256
CHUNK_BYTES = CHUNK_BITS // 8
#: Attempts of ``reserve``/``release`` before a conflict is given up (``Changed``).
ATTEMPTS = 32


class NoFreeAddress(CodedError):
    """Every address of the subnet's range is taken."""

    code = ErrorCode.NO_FREE_IP_ADDRESS

    def __init__(self, subnet: str, size: int, message: str | None = None) -> None:
        super().__init__(message or f"no free IP address in subnet {subnet}: all {size} addresses of its range are taken",
                         field="subnet")
        self.subnet = subnet


class NotReserved(CodedError):
    """The address is not reserved (or not by that guest)."""

    code = ErrorCode.NETWORK_OBJECT_NOT_FOUND


class TxFailed(Exception):
    """A multi-op transaction was refused: ``failures`` are (op index, kazoo exception)."""

    def __init__(self, failures: list[tuple[int, Exception]]) -> None:
        super().__init__(", ".join(f"op {i}: {type(e).__name__}" for i, e in failures))
        self.failures = failures


def transact(client: KazooClient, ops: Sequence[Op]) -> list[Any]:
    """Run ``ops`` as one multi-op transaction: each op's result, or TxFailed naming the ops
    ZooKeeper refused (nothing is written then)."""
    if not ops:
        return []
    tx = client.transaction()
    for op in ops:
        if op.kind == "create":
            tx.create(op.path, op.data)
        elif op.kind == "set":
            tx.set_data(op.path, op.data, version=op.version)
        elif op.kind == "delete":
            tx.delete(op.path, version=op.version)
        else:
            raise ValueError(f"unknown op kind {op.kind!r}")
    results = list(tx.commit())
    failures = [(i, r) for i, r in enumerate(results)
                if isinstance(r, Exception) and not isinstance(r, (RolledBackError, RuntimeInconsistency))]
    if failures:
        raise TxFailed(failures)
    return results


def mac_for_address(ip: Address) -> str:
    """The guest MAC for an address: ``54:56`` then the address's last four bytes (for IPv4 the
    original Snooze's rule, ``snooze.virtualcluster.mac_for_ip``)."""
    tail = ip.packed[-4:]
    return "54:56:" + ":".join(format(b, "02x") for b in tail)


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class PoolState:
    """A subnet's pool as read (``version``: its znode's)."""

    subnet: str
    start: int
    size: int
    version: int
    next: int
    open: list[int]
    raw: dict[str, Any]

    @property
    def chunks(self) -> int:
        return -(-self.size // CHUNK_BITS)

    @property
    def has_free(self) -> bool:
        return bool(self.open) or self.next < self.chunks

    def address(self, offset: int) -> Address:
        return ipaddress.ip_address(self.start + offset)

    def data(self, next_: int, open_: Iterable[int]) -> bytes:
        return _dump({**self.raw, "next": next_, "open": sorted(set(open_))})


def pool_create_ops(base: str, subnet: Subnet) -> list[Op]:
    """The znodes of a new subnet's empty pool (``base``: its ``network/pools/<subnet>`` path)."""
    pool = {"subnet": subnet.id, "cidr": str(subnet.cidr), "start": str(subnet.start), "end": str(subnet.end),
            "size": subnet.size, "chunkBits": CHUNK_BITS, "next": 0, "open": []}
    return [Op("create", base, _dump(pool)), Op("create", f"{base}/chunks"), Op("create", f"{base}/addresses")]


def _parse(ip: Address | str) -> Address:
    if not isinstance(ip, str):
        return ip
    try:
        if "%" in ip:
            raise ValueError(ip)
        return ipaddress.ip_address(ip)
    except ValueError:
        raise NotReserved(f"{ascii(ip)[:80]} is not an IP address", field="ip") from None


def _full_mask(bits: int) -> int:
    return (1 << bits) - 1


def _initial_bits(index: int, size: int) -> int:
    """A new chunk's bitmap: the bits past the end of the range are set (never handed out)."""
    valid = min(CHUNK_BITS, size - index * CHUNK_BITS)
    return _full_mask(CHUNK_BITS) & ~_full_mask(valid)


def _bits(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _chunk_data(bits: int) -> bytes:
    return bits.to_bytes(CHUNK_BYTES, "little")


@dataclass
class Reservation:
    """Addresses planned for guests, and the ops that take them (not yet written)."""

    subnet: str
    addresses: dict[str, Address]  # guest id -> address
    ops: list[Op] = field(default_factory=list)
    #: Each chunk written: index -> (bits, its version once committed).
    chunks_after: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: What the plan started from: the pool as read, and each chunk it writes as read
    #: (index -> (bits, version; None: a chunk to create)), for ``split``.
    pool: PoolState | None = None
    chunks_before: dict[int, tuple[int, int | None]] = field(default_factory=dict)

    def split(self, root: Ipam, batches: Sequence[Sequence[str]]) -> list[list[Op]]:
        """The same reservation as ops for several transactions committed one after the
        other, in order: batch k's ops take the addresses of batch k's guests, each chunk and
        the pool written at the version the previous batches leave (a recording too large for
        one transaction writes each VM's address with its records, in the same chunk). Every
        batch keeps the pool's invariant (a created chunk is open iff it has a free bit), and
        new chunks are created in order since a plan hands out addresses in order, so a stop
        after any batch leaves a sound pool."""
        if self.pool is None:
            return [list(self.ops)] + [[] for _ in batches[1:]]
        pool = self.pool
        chunks = dict(self.chunks_before)
        next_, open_, version = pool.next, set(pool.open), pool.version
        written = (next_, set(open_))
        full = _full_mask(CHUNK_BITS)
        out: list[list[Op]] = []
        for batch in batches:
            touched: dict[int, tuple[int, int | None]] = {}
            mine = [(g, self.addresses[g]) for g in batch if g in self.addresses]
            for _guest, ip in mine:
                index, bit = divmod(int(ip) - pool.start, CHUNK_BITS)
                bits, ver = touched.get(index, chunks[index])
                touched[index] = (bits | (1 << bit), ver)
            ops: list[Op] = []
            for index, (bits, ver) in sorted(touched.items()):
                path = root.chunk_path(self.subnet, index)
                ops.append(Op("create", path, _chunk_data(bits)) if ver is None else Op("set", path, _chunk_data(bits), ver))
                chunks[index] = (bits, 0 if ver is None else ver + 1)
                next_ = max(next_, index + 1)
                if bits == full:
                    open_.discard(index)
                else:
                    open_.add(index)
            if (next_, open_) != written:
                ops.append(Op("set", root.pool_path(self.subnet), pool.data(next_, open_), version))
                version += 1
                written = (next_, set(open_))
            ops += [Op("create", root.address_path(self.subnet, ip), g.encode()) for g, ip in mine]
            out.append(ops)
        return out

    @property
    def address(self) -> Address:
        """The address of a one-guest reservation."""
        if len(self.addresses) != 1:
            raise ValueError("not a one-guest reservation")
        return next(iter(self.addresses.values()))


class _Stale(Exception):
    """The cached pool said a chunk was open or not yet created, and it was not."""


class Ipam:
    """One allocator over every subnet's pool (a cache of pools and a cursor per subnet)."""

    def __init__(self, client: KazooClient, root: str) -> None:
        self.client = client
        self.root = root.rstrip("/")
        self._pools: dict[str, PoolState] = {}
        self._cursor: dict[str, int] = {}
        #: The cursor chunk as this allocator's last commit left it: subnet -> (index, bits,
        #: version), so the next plan need not read it (a stale one fails the transaction).
        self._chunk: dict[str, tuple[int, int, int]] = {}
        self._spread: set[str] = set()
        self.rng = random.Random()
        #: Conflicts met by ``reserve``/``release`` (their retries), for the benchmark.
        self.conflicts = 0

    # -- paths ---------------------------------------------------------------------------------
    def pool_path(self, subnet: str) -> str:
        if not is_valid_id(subnet):
            raise NotReserved(f"no subnet {subnet!r}", field="subnet")
        return f"{self.root}/network/pools/{subnet}"

    def chunk_path(self, subnet: str, index: int) -> str:
        return f"{self.pool_path(subnet)}/chunks/{index}"

    def address_path(self, subnet: str, ip: Address) -> str:
        return f"{self.pool_path(subnet)}/addresses/{ip}"

    # -- reads -----------------------------------------------------------------------------------
    def pool(self, subnet: str, fresh: bool = True) -> PoolState:
        """The pool of ``subnet`` (cached unless ``fresh``); NotReserved if there is none."""
        if not fresh and subnet in self._pools:
            return self._pools[subnet]
        try:
            data, stat = self.client.get(self.pool_path(subnet))
        except NoNodeError:
            self._pools.pop(subnet, None)
            raise NotReserved(f"subnet {subnet} has no address pool (no such subnet)", field="subnet") from None
        raw = json.loads(data)
        state = PoolState(subnet, int(ipaddress.ip_address(raw["start"])), int(raw["size"]), stat.version,
                          int(raw["next"]), [int(i) for i in raw["open"]], raw)
        self._pools[subnet] = state
        return state

    def has_free(self, subnet: str) -> bool:
        """Whether ``subnet`` has a free address now (one read, O(1))."""
        return self.pool(subnet).has_free

    def addresses(self, subnet: str) -> dict[str, str]:
        """Every reserved address of ``subnet``: address -> guest id (pipelined reads)."""
        base = f"{self.pool_path(subnet)}/addresses"
        try:
            names = self.client.get_children(base)
        except NoNodeError:
            raise NotReserved(f"subnet {subnet} has no address pool (no such subnet)", field="subnet") from None
        pending = [(n, self.client.get_async(f"{base}/{n}")) for n in names]
        out: dict[str, str] = {}
        for name, res in pending:
            try:
                data, _stat = res.get(timeout=10)
            except NoNodeError:
                continue
            out[name] = data.decode(errors="replace")
        return out

    def owner(self, subnet: str, ip: Address | str) -> str | None:
        """The guest id ``ip`` is reserved for in ``subnet`` (None: not reserved)."""
        try:
            data, _stat = self.client.get(self.address_path(subnet, _parse(ip)))
        except NoNodeError:
            return None
        return bytes(data).decode(errors="replace")

    # -- reserving ----------------------------------------------------------------------------
    def plan_reservation(self, subnet: str, guest: str, *, fresh: bool = False) -> Reservation:
        """One address of ``subnet`` for ``guest``: the ops that take it (see the module)."""
        return self.plan_reservations(subnet, [guest], fresh=fresh)

    def plan_reservations(self, subnet: str, guests: Sequence[str], *, fresh: bool = False) -> Reservation:
        """An address of ``subnet`` for each of ``guests`` and the ops of one transaction that
        take them all. Reads, never writes. NoFreeAddress if the range cannot hold them all
        (read fresh); ``fresh``: after the caller's transaction failed on these ops."""
        for g in guests:
            if not is_valid_id(g):
                raise NotReserved(f"guest: {g!r} is not a valid id", field="guest")
        if len(set(guests)) != len(guests):
            raise ValueError("a guest is listed twice")
        for _attempt in range(4):
            cached = not fresh and subnet in self._pools
            pool = self.pool(subnet, fresh=fresh)
            try:
                return self._plan(pool, list(guests), cached, fresh)
            except _Stale:
                fresh = True
                self._chunk.pop(subnet, None)
        raise Changed(f"the pool of subnet {subnet} kept changing while being read")

    def _choose(self, pool: PoolState, open_: list[int], next_: int, taken: set[int]) -> int | None:
        """The chunk to take addresses from: the cursor's if open; else after a conflict one at
        random among the open ones and a new one (so that allocators spread over more chunks,
        without all of them racing to create the same new one); else any open one, else a new
        one; None if none is left."""
        usable = [i for i in open_ if i not in taken]
        cursor = self._cursor.get(pool.subnet)
        if cursor is not None and cursor in usable:
            return cursor
        if pool.subnet in self._spread and next_ < pool.chunks and self.rng.randrange(len(usable) + 1) == 0:
            return next_
        if usable:
            return usable[0] if len(usable) == 1 else self.rng.choice(usable)
        if next_ < pool.chunks:
            return next_
        return None

    def _plan(self, pool: PoolState, guests: list[str], cached: bool, fresh: bool = False) -> Reservation:
        open_ = list(pool.open)
        next_ = pool.next
        taken: set[int] = set()  # chunks this plan filled
        chunks: dict[int, tuple[int, int | None]] = {}  # index -> (bits, version; None: new)
        addresses: dict[str, Address] = {}
        before: dict[int, tuple[int, int | None]] = {}
        todo = list(guests)
        while todo:
            index = self._choose(pool, open_, next_, taken)
            if index is None:
                if not self._fresh(pool):
                    raise _Stale()
                if addresses:
                    raise NoFreeAddress(pool.subnet, pool.size, f"no free IP address in subnet {pool.subnet} for "
                                        f"{len(guests)} guests: only {len(addresses)} addresses of its range are free")
                raise NoFreeAddress(pool.subnet, pool.size)
            if index in chunks:
                bits, version = chunks[index]
            elif index >= next_:
                if index != next_:
                    raise _Stale()
                bits, version = _initial_bits(index, pool.size), None
                before[index] = (bits, version)
                next_ += 1
                open_.append(index)
            else:
                known = self._chunk.get(pool.subnet) if not fresh else None
                if known is not None and known[0] == index:
                    bits, version = known[1], known[2]
                else:
                    try:
                        data, stat = self.client.get(self.chunk_path(pool.subnet, index))
                    except NoNodeError:
                        raise _Stale() from None
                    bits, version = _bits(data), stat.version
                if bits == _full_mask(CHUNK_BITS):
                    raise _Stale()  # the pool said open: it filled since
                before[index] = (bits, version)
            full = _full_mask(CHUNK_BITS)
            while todo and bits != full:
                free = ~bits & full
                low = free & -free
                bit = low.bit_length() - 1
                bits |= low
                addresses[todo.pop(0)] = pool.address(index * CHUNK_BITS + bit)
            chunks[index] = (bits, version)
            if bits == full:
                taken.add(index)
                if index in open_:
                    open_.remove(index)
            self._cursor[pool.subnet] = index
        ops: list[Op] = []
        for index, (bits, version) in sorted(chunks.items()):
            path = self.chunk_path(pool.subnet, index)
            ops.append(Op("create", path, _chunk_data(bits)) if version is None else Op("set", path, _chunk_data(bits), version))
        if next_ != pool.next or sorted(open_) != sorted(pool.open):
            if cached:
                raise _Stale()  # the pool is written: at the version ZooKeeper has now
            ops.append(Op("set", self.pool_path(pool.subnet), pool.data(next_, open_), pool.version))
        for guest, ip in addresses.items():
            ops.append(Op("create", self.address_path(pool.subnet, ip), guest.encode()))
        after = {i: (b, 0 if v is None else v + 1) for i, (b, v) in chunks.items()}
        return Reservation(pool.subnet, addresses, ops, after, pool, before)

    def _fresh(self, pool: PoolState) -> bool:
        """Whether ``pool`` is what ZooKeeper has now (read again if it may not be)."""
        now = self.pool(pool.subnet, fresh=True)
        return now.version == pool.version

    def conflicted(self, subnet: str) -> None:
        """The caller's transaction with this allocator's ops failed: spread out (the next plan
        opens a new chunk or picks another) and read the pool again."""
        self.conflicts += 1
        self._spread.add(subnet)
        self._cursor.pop(subnet, None)
        self._chunk.pop(subnet, None)
        self._pools.pop(subnet, None)

    def succeeded(self, subnet: str, reservation: Reservation | None = None) -> None:
        """The caller's transaction with ``reservation``'s ops was committed: the next plan
        starts from what it wrote (no read of the cursor chunk)."""
        self._spread.discard(subnet)
        cursor = self._cursor.get(subnet)
        if reservation is not None and cursor is not None and cursor in reservation.chunks_after:
            bits, version = reservation.chunks_after[cursor]
            self._chunk[subnet] = (cursor, bits, version)
        else:
            self._chunk.pop(subnet, None)

    def reserve(self, subnet: str, guest: str) -> Address:
        """Reserve an address of ``subnet`` for ``guest`` in a transaction of its own."""
        return self.reserve_many(subnet, [guest])[guest]

    def reserve_many(self, subnet: str, guests: Sequence[str]) -> dict[str, Address]:
        """Reserve an address for each of ``guests`` in one transaction (all or none)."""
        fresh = False
        for attempt in range(ATTEMPTS):
            plan = self.plan_reservations(subnet, guests, fresh=fresh)
            try:
                transact(self.client, plan.ops)
            except TxFailed as exc:
                if any(isinstance(e, NoNodeError) for _i, e in exc.failures) and not self._pool_exists(subnet):
                    raise NotReserved(f"subnet {subnet} was deleted", field="subnet") from None
                self.conflicted(subnet)
                fresh = True
                # A short random pause, growing with the attempts: the ones that lost a
                # round do not all come back at the same instant.
                time.sleep(self.rng.uniform(0, 0.0005 * min(attempt + 1, 16)))
                continue
            self.succeeded(subnet, plan)
            return plan.addresses
        raise Changed(f"subnet {subnet}: reservations kept conflicting ({ATTEMPTS} attempts)")

    def _pool_exists(self, subnet: str) -> bool:
        return self.client.exists(self.pool_path(subnet)) is not None

    # -- releasing ----------------------------------------------------------------------------
    def plan_release(self, subnet: str, ip: Address | str, guest: str | None = None) -> list[Op]:
        """The ops that give ``ip`` back (only if ``guest`` holds it, when given): delete its
        address znode at the version read, clear its bit, and reopen its chunk if it was full.
        NotReserved if it is not reserved (by that guest)."""
        address = _parse(ip)
        pool = self.pool(subnet, fresh=True)
        offset = int(address) - pool.start
        if not 0 <= offset < pool.size:
            raise NotReserved(f"{address} is not in the range of subnet {subnet}", field="ip")
        apath = self.address_path(subnet, address)
        try:
            owner, astat = self.client.get(apath)
        except NoNodeError:
            raise NotReserved(f"{address} is not reserved in subnet {subnet}", field="ip") from None
        if guest is not None and bytes(owner).decode(errors="replace") != guest:
            raise NotReserved(f"{address} of subnet {subnet} is not reserved by {guest}", field="ip")
        index, bit = divmod(offset, CHUNK_BITS)
        cpath = self.chunk_path(subnet, index)
        data, cstat = self.client.get(cpath)
        bits = _bits(data)
        ops = [Op("delete", apath, version=astat.version), Op("set", cpath, _chunk_data(bits & ~(1 << bit)), cstat.version)]
        if bits == _full_mask(CHUNK_BITS) or index not in pool.open:
            ops.append(Op("set", self.pool_path(subnet), pool.data(pool.next, [*pool.open, index]), pool.version))
        return ops

    def plan_releases(self, subnet: str, owned: dict[str, str]) -> list[Op]:
        """The ops of one transaction that give back several addresses of ``subnet`` (``owned``:
        address -> the guest that must hold it); an address not reserved, not by that guest, or
        not an address of the range is skipped (nothing to give back). Addresses in one chunk
        share one write of it (separate ``plan_release``s would conflict in one transaction).
        No pool (the subnet is gone): nothing."""
        try:
            pool = self.pool(subnet, fresh=True)
        except NotReserved:
            return []
        wanted: list[tuple[Address, str]] = []
        for text, guest in sorted(owned.items()):
            try:
                address = _parse(text)
            except NotReserved:
                continue
            if 0 <= int(address) - pool.start < pool.size:
                wanted.append((address, guest))
        pending = [(a, g, self.client.get_async(self.address_path(subnet, a))) for a, g in wanted]
        ops: list[Op] = []
        clear: dict[int, int] = {}  # chunk index -> bits to clear
        for address, guest, res in pending:
            try:
                data, stat = res.get(timeout=10)
            except NoNodeError:
                continue
            if bytes(data).decode(errors="replace") != guest:
                continue
            index, bit = divmod(int(address) - pool.start, CHUNK_BITS)
            clear[index] = clear.get(index, 0) | (1 << bit)
            ops.append(Op("delete", self.address_path(subnet, address), version=stat.version))
        if not clear:
            return []
        reopened = False
        for index, mask in sorted(clear.items()):
            data, cstat = self.client.get(self.chunk_path(subnet, index))
            bits = _bits(data)
            ops.append(Op("set", self.chunk_path(subnet, index), _chunk_data(bits & ~mask), cstat.version))
            reopened = reopened or bits == _full_mask(CHUNK_BITS) or index not in pool.open
        if reopened:
            ops.append(Op("set", self.pool_path(subnet), pool.data(pool.next, [*pool.open, *clear]), pool.version))
        self._chunk.pop(subnet, None)  # the cursor chunk may be one written here
        return ops

    def release(self, subnet: str, ip: Address | str, guest: str | None = None) -> None:
        """Give ``ip`` back in a transaction of its own (retried on a conflict)."""
        for attempt in range(ATTEMPTS):
            ops = self.plan_release(subnet, ip, guest)
            try:
                transact(self.client, ops)
                self._chunk.pop(subnet, None)  # it may be the chunk just written
                return
            except TxFailed:
                self.conflicts += 1
                time.sleep(self.rng.uniform(0, 0.0005 * min(attempt + 1, 16)))
                continue
        raise Changed(f"subnet {subnet}: releasing {ip} kept conflicting")

    # -- checking -----------------------------------------------------------------------------
    def audit(self, subnet: str) -> dict[str, list[str]]:
        """What disagrees in ``subnet``'s pool (all empty when sound): ``unrecorded`` bits set
        with no address znode (a leak), ``unmarked`` address znodes whose bit is clear,
        ``misopen``/``unopened`` chunks wrongly in or missing from the open list."""
        pool = self.pool(subnet, fresh=True)
        base = self.pool_path(subnet)
        held = {int(ipaddress.ip_address(n)) - pool.start for n in self.client.get_children(f"{base}/addresses")}
        marked: set[int] = set()
        misopen: list[str] = []
        unopened: list[str] = []
        for name in self.client.get_children(f"{base}/chunks"):
            index = int(name)
            data, _stat = self.client.get(f"{base}/chunks/{name}")
            bits = _bits(data) & ~_initial_bits(index, pool.size)
            for bit in range(CHUNK_BITS):
                if bits >> bit & 1:
                    marked.add(index * CHUNK_BITS + bit)
            full = (_bits(data) == _full_mask(CHUNK_BITS))
            if full and index in pool.open:
                misopen.append(name)
            if not full and index not in pool.open:
                unopened.append(name)
        return {
            "unrecorded": sorted(str(pool.address(o)) for o in marked - held),
            "unmarked": sorted(str(pool.address(o)) for o in held - marked),
            "misopen": misopen, "unopened": unopened,
        }


def adopt_ops(ipam: Ipam, subnet: str, taken: dict[str, str]) -> list[Op]:
    """The ops that mark addresses already taken elsewhere (``taken``: address -> owner, e.g.
    today's ``ipam/<cidr>/<ip>`` allocations of the VM path) as reserved in ``subnet``'s pool;
    addresses outside the range or already reserved are skipped. For phase 2's move of the
    submission path onto this module (docs/networking.md)."""
    pool = ipam.pool(subnet, fresh=True)
    chunks: dict[int, tuple[int, int | None]] = {}
    open_ = set(pool.open)
    next_ = pool.next
    ops: list[Op] = []
    for ip_text, owner in sorted(taken.items()):
        ip = ipaddress.ip_address(ip_text)
        offset = int(ip) - pool.start
        if not 0 <= offset < pool.size or not is_valid_id(owner) or ipam.owner(subnet, ip) is not None:
            continue
        index, bit = divmod(offset, CHUNK_BITS)
        while next_ <= index:  # chunks are created in order
            chunks[next_] = (_initial_bits(next_, pool.size), None)
            open_.add(next_)
            next_ += 1
        if index not in chunks:
            data, stat = ipam.client.get(ipam.chunk_path(subnet, index))
            chunks[index] = (_bits(data), stat.version)
        bits, version = chunks[index]
        chunks[index] = (bits | (1 << bit), version)
        ops.append(Op("create", ipam.address_path(subnet, ip), owner.encode()))
    for index, (bits, _version) in chunks.items():
        if bits == _full_mask(CHUNK_BITS):
            open_.discard(index)
    chunk_ops = [Op("create", ipam.chunk_path(subnet, i), _chunk_data(b)) if v is None
                 else Op("set", ipam.chunk_path(subnet, i), _chunk_data(b), v) for i, (b, v) in sorted(chunks.items())]
    pool_op = [Op("set", ipam.pool_path(subnet), pool.data(next_, open_), pool.version)] if chunks else []
    return chunk_ops + pool_op + ops
