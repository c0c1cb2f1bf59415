"""Address management on a real ZooKeeper: concurrent allocators in two processes exhaust a range
with every address handed out once and then the explicit NO_FREE_IP_ADDRESS; no duplicate over
1,000 create/delete cycles; an IPv6 /64 allocates without scanning (chunks created lazily; the
time per allocation at the 1st and the 100,000th is printed, not asserted); reservations
committed in the caller's own fenced transaction, planned again after a conflict; today's
``ipam/<cidr>/<ip>`` allocations adopted."""

from __future__ import annotations

import ipaddress
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from kazoo.client import KazooClient

from snooze.codes import ErrorCode
from snooze.coordination import Coordinator
from snooze.coordination.store import AlreadyExists, Changed, Op, Store
from snooze.dev.zookeeper import ZooKeeperServer
from snooze.network.ipam import CHUNK_BITS, Ipam, NoFreeAddress, TxFailed, adopt_ops, transact
from snooze.network.model import Flavor, Guest, Network, Subnet
from snooze.network.store import NetworkStore

pytestmark = pytest.mark.integration
ROOT = "/snooze-test"


@pytest.fixture
def client(kazoo_client: KazooClient) -> KazooClient:
    return kazoo_client


def make_subnet(client: KazooClient, sid: str, cidr: str, **kw: str) -> NetworkStore:
    store = NetworkStore(client, ROOT)
    if store.find("networks", "net1") is None:
        store.create(Network("net1"))
    store.create(Subnet.from_json({"id": sid, "network": "net1", "cidr": cidr, **kw}))
    return store


def _allocate_until_exhausted(address: str, process: int, threads: int) -> list[tuple[str, list[str], str]]:
    """In a child process: ``threads`` allocators, each reserving until the explicit error;
    returns per allocator (its name, its addresses, the error's code)."""
    c = KazooClient(hosts=address, timeout=10)
    c.start(timeout=15)
    out: list[tuple[str, list[str], str]] = []
    lock = threading.Lock()
    go = threading.Barrier(threads)

    def run(t: int) -> None:
        ipam = Ipam(c, ROOT)
        name = f"p{process}-t{t}"
        got: list[str] = []
        go.wait()
        code = ""
        n = 0
        while True:
            try:
                got.append(str(ipam.reserve("sub62", f"{name}-{n}")))
                n += 1
            except NoFreeAddress as exc:
                code = str(exc.code)
                break
        with lock:
            out.append((name, got, code))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    c.stop()
    c.close()
    return out


def test_eight_allocators_in_two_processes_exhaust_62_addresses(zookeeper: ZooKeeperServer, client: KazooClient) -> None:
    store = make_subnet(client, "sub62", "10.30.0.0/26")  # no gateway: .1 to .62
    assert store.ipam.pool("sub62").size == 62
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        started = time.perf_counter()
        results = [r for f in [pool.submit(_allocate_until_exhausted, zookeeper.address, p, 4) for p in (0, 1)]
                   for r in f.result(timeout=120)]
        took = time.perf_counter() - started
    assert len(results) == 8
    every = [ip for _n, got, _c in results for ip in got]
    print(f"8 allocators in 2 processes: {len(every)} addresses in {took:.2f}s (with process start), "
          f"per allocator {sorted(len(got) for _n, got, _c in results)}")
    assert len(every) == 62 and len(set(every)) == 62
    assert set(every) == {f"10.30.0.{i}" for i in range(1, 63)}
    assert all(code == ErrorCode.NO_FREE_IP_ADDRESS for _n, _got, code in results), "each ends on the explicit error"
    assert len(store.ipam.addresses("sub62")) == 62
    assert not any(store.ipam.audit("sub62").values())

    # Explicit, naming the subnet; a release makes room for exactly one.
    with pytest.raises(NoFreeAddress) as exhausted:
        store.ipam.reserve("sub62", "one-more")
    assert "sub62" in str(exhausted.value) and exhausted.value.field == "subnet"
    store.ipam.release("sub62", "10.30.0.17")
    with pytest.raises(NoFreeAddress):
        store.ipam.reserve_many("sub62", ["a", "b"])  # all or none
    assert str(store.ipam.reserve("sub62", "a")) == "10.30.0.17"
    assert not any(store.ipam.audit("sub62").values())


def test_no_duplicate_over_1000_create_delete_cycles(client: KazooClient) -> None:
    store = make_subnet(client, "sub14", "10.31.0.0/28", gateway="10.31.0.1")  # 13 addresses
    store.create(Flavor("f", 1, 1024))
    live: dict[str, str] = {}
    lock = threading.Lock()
    duplicates: list[str] = []
    cycles = [0]
    conflicts: list[int] = []
    errors: list[BaseException] = []

    def run(t: int) -> None:
        own = NetworkStore(client, ROOT)
        held: list[str] = []
        try:
            for n in range(250):
                guest = own.create_guest(Guest(f"g{t}-{n}", "f", "net1"))
                with lock:
                    if str(guest.ip) in live:
                        duplicates.append(f"{guest.ip}: {live[str(guest.ip)]} and {guest.id}")
                    live[str(guest.ip)] = guest.id
                held.append(guest.id)
                if len(held) >= 3 or n == 249:
                    for gid in held:
                        g = own.find("guests", gid)
                        assert isinstance(g, Guest)
                        with lock:
                            del live[str(g.ip)]
                        assert own.delete_guest(gid)
                    held.clear()
                with lock:
                    cycles[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        conflicts.append(own.ipam.conflicts)

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.perf_counter() - started
    assert not errors, errors
    print(f"{cycles[0]} create/delete cycles by 4 threads on 13 addresses in {took:.2f}s; "
          f"conflicts retried: {sum(conflicts)}")
    assert cycles[0] == 1000
    assert duplicates == []
    assert store.ipam.addresses("sub14") == {} and store.objects("guests") == []
    assert not any(store.audit().values())


def test_ipv6_slash_64_allocates_without_scanning(client: KazooClient) -> None:
    store = make_subnet(client, "six", "2001:db8:0:7::/64")
    ipam = store.ipam
    assert ipam.pool("six").size == 2**64 - 1  # all but the subnet-router anycast address ::0

    def timed(n: int, prefix: str) -> float:
        started = time.perf_counter()
        for i in range(n):
            ipam.reserve("six", f"{prefix}-{i}")
        return (time.perf_counter() - started) / n

    first = timed(1, "first")
    early = timed(50, "early")
    # Up to 99,999 in batches of 1,000 per transaction (the same plan path, one commit per batch).
    started = time.perf_counter()
    count = 51
    while count < 99_999:
        batch = [f"bulk-{count + i}" for i in range(min(1000, 99_999 - count))]
        ipam.reserve_many("six", batch)
        count += len(batch)
    bulk = time.perf_counter() - started
    hundred_thousandth = timed(1, "at-100000")
    late = timed(50, "late")
    pool = ipam.pool("six")
    chunks = len(client.get_children(f"{ROOT}/network/pools/six/chunks"))
    print(f"IPv6 /64: 1st allocation {first * 1e3:.2f} ms, mean of the next 50 {early * 1e3:.2f} ms; "
          f"99,949 more in batches of 1,000 in {bulk:.1f}s; the 100,000th {hundred_thousandth * 1e3:.2f} ms, "
          f"mean of the next 50 {late * 1e3:.2f} ms; {chunks} chunks of {CHUNK_BITS} bits created, next {pool.next}")
    # No scan: chunks exist only for what was handed out, in order from the range's start.
    assert chunks == pool.next == -(-100_050 // CHUNK_BITS)
    held = client.get_children(f"{ROOT}/network/pools/six/addresses")
    assert len(held) == 100_050
    top = max(int(ipaddress.ip_address(a)) for a in held)
    assert top - int(ipaddress.ip_address("2001:db8:0:7::1")) == 100_049, "handed out from the start, no gaps"


async def test_reservation_in_the_callers_fenced_transaction(coord: Coordinator) -> None:
    """Phase 2's path: the reservation's ops go into the group leader's own fenced multi-op with
    the VM's record; a conflict is planned again; a stale epoch writes nothing."""
    store = NetworkStore.of(coord)
    await coord.call(make_subnet, coord.client, "sub", "10.32.0.0/24", gateway="10.32.0.1")
    vms = Store(coord)
    await coord.call(coord.client.ensure_path, coord.path("vms"))
    epoch = await coord.bump_epoch()
    a, b = Ipam(coord.client, coord.root), Ipam(coord.client, coord.root)

    # Two leaders' allocators plan from the same state: the second commit fails, nothing of it
    # is written; planned again (fresh) it gets another address.
    plan_a = await coord.call(a.plan_reservation, "sub", "vm-a")
    plan_b = await coord.call(b.plan_reservation, "sub", "vm-b")
    assert plan_a.address == plan_b.address
    record = {"id": "vm-a"}
    await coord.call(vms._tx, [*plan_a.ops, Op("create", coord.path("vms", "vm-a"), repr(record).encode())], epoch)
    with pytest.raises((Changed, AlreadyExists)):
        await coord.call(vms._tx, [*plan_b.ops, Op("create", coord.path("vms", "vm-b"), b"{}")], epoch)
    assert await coord.get_json(coord.path("vms", "vm-b")) is None
    b.conflicted("sub")
    plan_b = await coord.call(b.plan_reservation, "sub", "vm-b", fresh=True)
    await coord.call(vms._tx, [*plan_b.ops, Op("create", coord.path("vms", "vm-b"), b"{}")], epoch)
    held = await coord.call(store.ipam.addresses, "sub")
    assert held == {"10.32.0.2": "vm-a", "10.32.0.3": "vm-b"}

    # A deposed leader: its epoch is stale, the reservation is not written either.
    plan_c = await coord.call(a.plan_reservation, "sub", "vm-c")
    await coord.bump_epoch()
    with pytest.raises(Exception) as stale:
        await coord.call(vms._tx, plan_c.ops, epoch)
    assert stale.value.code is ErrorCode.NOT_GROUP_LEADER  # type: ignore[attr-defined]
    assert "10.32.0.4" not in await coord.call(store.ipam.addresses, "sub")

    # A guest's whole plan in the caller's transaction, its failure explained.
    await coord.call(store.create, Flavor("f", 1, 1024))
    plan = await coord.call(store.plan_guest, Guest("vm-d", "f", "net1"))
    extra = [Op("create", coord.path("vms", "vm-d"), b"{}")]
    await coord.call(transact, coord.client, extra + plan.ops)
    again = await coord.call(store.plan_guest, Guest("vm-d", "f", "net1"))
    with pytest.raises(TxFailed) as failed:
        await coord.call(transact, coord.client, again.ops)
    assert type(store.explain_guest_failure(again, failed.value)).__name__ == "Exists"
    assert not any((await coord.call(store.ipam.audit, "sub")).values())


def test_adopting_todays_allocations(client: KazooClient) -> None:
    store = make_subnet(client, "default", "10.33.0.0/24", gateway="10.33.0.1")
    for ip, vm in {"10.33.0.2": "vm-old", "10.33.0.3": "vm-older", "10.99.0.9": "vm-elsewhere"}.items():
        client.create(f"{ROOT}/ipam/10.33.0.0_24/{ip}", vm.encode(), makepath=True)
    legacy = {n: client.get(f"{ROOT}/ipam/10.33.0.0_24/{n}")[0].decode() for n in client.get_children(f"{ROOT}/ipam/10.33.0.0_24")}
    transact(client, adopt_ops(store.ipam, "default", legacy))
    assert store.ipam.addresses("default") == {"10.33.0.2": "vm-old", "10.33.0.3": "vm-older"}
    assert str(store.ipam.reserve("default", "vm-new")) == "10.33.0.4"
    transact(client, adopt_ops(store.ipam, "default", legacy))  # again: nothing more
    assert len(store.ipam.addresses("default")) == 3
    assert not any(store.ipam.audit("default").values())
    assert client.exists(f"{ROOT}/ipam/10.33.0.0_24/10.33.0.2"), "today's znodes stay readable"
