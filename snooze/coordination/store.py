"""Durable records of virtual clusters in ZooKeeper: tasks, VMs, their specs and addresses.

Layout under the cluster root::

    tasks/<taskId>         a submission: its VM ids, state (PENDING, DONE), timestamps
    vms/<vmId>             a VM's small, often-updated state: status, errorCode, location, ip, mac
    vmspecs/<vmId>         a VM's spec (domain XML, requested capacity): written once
    ipam/<subnet>/<ip>     an address allocation; its data is the VM id

Addresses are allocated by *creating* their znode, inside the same multi-op transaction as the
VM's records, so an address can never be handed out twice, even by two leaders. Writes made by a
leader also ``check`` the epoch znode's version, so a deposed leader's writes fail (fencing).
Transactions are cut into chunks under ZooKeeper's request size limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError, NotEmptyError

from snooze.coordination.zk import CoordinationError, Coordinator

CHUNK_BYTES = 400_000


class StaleEpoch(CoordinationError):
    """A write carried an epoch that is no longer the current one."""


class AlreadyExists(CoordinationError):
    """A VM id or an address is already taken."""


def subnet_key(cidr: str) -> str:
    return cidr.replace("/", "_")


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Store:
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def _p(self, *parts: str) -> str:
        return self.coord.path(*parts)

    # -- transactions --------------------------------------------------------------------
    def _commit(self, ops: list[tuple[str, str, bytes | None]], epoch: int | None) -> None:
        """Run ops ('create'|'set'|'delete', path, data) in size-bounded multi-op chunks."""
        client = self.coord.client
        chunk: list[tuple[str, str, bytes | None]] = []
        size = 0

        def flush() -> None:
            if not chunk:
                return
            tx = client.transaction()
            if epoch is not None:
                tx.check(self._p("epoch"), epoch)
            for op, path, data in chunk:
                if op == "create":
                    tx.create(path, data or b"")
                elif op == "set":
                    tx.set_data(path, data or b"")
                else:
                    tx.delete(path)
            results = tx.commit()
            failures = [r for r in results if isinstance(r, Exception)]
            if failures:
                names = {type(r).__name__ for r in failures}
                if epoch is not None and isinstance(results[0], Exception) and type(results[0]).__name__ == "BadVersionError":
                    raise StaleEpoch(f"epoch {epoch} is no longer current")
                if "NodeExistsError" in names:
                    raise AlreadyExists("a VM id or address is already taken")
                raise CoordinationError(f"transaction failed: {', '.join(sorted(names))}")
            chunk.clear()

        for op in ops:
            weight = len(op[1]) + len(op[2] or b"") + 64
            if size + weight > CHUNK_BYTES:
                flush()
                size = 0
            chunk.append(op)
            size += weight
        flush()

    def _ensure_parents(self, subnet: str | None = None) -> None:
        for name in ("tasks", "vms", "vmspecs"):
            self.coord.client.ensure_path(self._p(name))
        if subnet:
            self.coord.client.ensure_path(self._p("ipam", subnet_key(subnet)))

    # -- submissions ---------------------------------------------------------------------
    async def create_submission(
        self, task: dict[str, Any], vms: list[dict[str, Any]], specs: list[dict[str, Any]], subnet: str, epoch: int
    ) -> None:
        """Create the task, its VMs, their specs and their address allocations, all or nothing."""

        def do() -> None:
            self._ensure_parents(subnet)
            key = subnet_key(subnet)
            vm_ops: list[tuple[str, str, bytes | None]] = []
            for vm, spec in zip(vms, specs, strict=True):
                vm_id = vm["virtualMachineId"]
                if vm.get("ipAddress"):
                    vm_ops.append(("create", self._p("ipam", key, vm["ipAddress"]), vm_id.encode()))
                vm_ops.append(("create", self._p("vms", vm_id), _dump(vm)))
                vm_ops.append(("create", self._p("vmspecs", vm_id), _dump(spec)))
            created: list[str] = []
            try:
                # Committed in chunks; on a failure the chunks already committed are undone.
                for i in range(0, len(vm_ops), 300):
                    part = vm_ops[i : i + 300]
                    self._commit(part, epoch)
                    created.extend(p for _op, p, _d in part)
                self._commit([("create", self._p("tasks", task["taskId"]), _dump(task))], epoch)
            except CoordinationError:
                self._commit([("delete", p, None) for p in reversed(created)], None)
                raise

        await self.coord.call(do, timeout=30)

    async def update_vms(self, vms: Iterable[dict[str, Any]], epoch: int | None) -> None:
        ops = [("set", self._p("vms", vm["virtualMachineId"]), _dump(vm)) for vm in vms]
        if ops:
            await self.coord.call(self._commit, ops, epoch, timeout=30)

    async def set_task(self, task: dict[str, Any], epoch: int | None) -> None:
        await self.coord.call(self._commit, [("set", self._p("tasks", task["taskId"]), _dump(task))], epoch)

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        if not task_id or "/" in task_id:
            return None
        return await self.coord.get_json(self._p("tasks", task_id))  # type: ignore[no-any-return]

    async def task_ids(self) -> list[str]:
        def do() -> list[str]:
            try:
                return list(self.coord.client.get_children(self._p("tasks")))
            except NoNodeError:
                return []

        return await self.coord.call(do)

    # -- VMs -----------------------------------------------------------------------------
    async def get_vm(self, vm_id: str) -> dict[str, Any] | None:
        if not vm_id or "/" in vm_id:
            return None
        return await self.coord.get_json(self._p("vms", vm_id))  # type: ignore[no-any-return]

    async def _get_many(self, folder: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Read many znodes of one folder with pipelined requests (one round trip, not N)."""
        wanted = list(ids)

        def do() -> dict[str, dict[str, Any]]:
            client = self.coord.client
            pending = [(i, client.get_async(self._p(folder, i))) for i in wanted]
            out: dict[str, dict[str, Any]] = {}
            for i, res in pending:
                try:
                    data, _ = res.get(timeout=10)
                except NoNodeError:
                    continue
                out[i] = json.loads(data)
            return out

        return await self.coord.call(do, timeout=30)

    async def get_vms(self, vm_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._get_many("vms", vm_ids)

    async def get_spec(self, vm_id: str) -> dict[str, Any] | None:
        return await self.coord.get_json(self._p("vmspecs", vm_id))  # type: ignore[no-any-return]

    async def get_specs(self, vm_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._get_many("vmspecs", vm_ids)

    async def vm_ids(self) -> list[str]:
        def do() -> list[str]:
            try:
                return sorted(self.coord.client.get_children(self._p("vms")))
            except NoNodeError:
                return []

        return await self.coord.call(do)

    async def delete_vm(self, vm_id: str, subnet: str) -> None:
        """Forget a destroyed VM and return its address to the pool."""

        def do() -> None:
            client = self.coord.client
            try:
                data, _ = client.get(self._p("vms", vm_id))
            except NoNodeError:
                return
            ip = json.loads(data).get("ipAddress")
            ops: list[tuple[str, str, bytes | None]] = [("delete", self._p("vms", vm_id), None)]
            if client.exists(self._p("vmspecs", vm_id)):
                ops.append(("delete", self._p("vmspecs", vm_id), None))
            if ip and client.exists(self._p("ipam", subnet_key(subnet), ip)):
                ops.append(("delete", self._p("ipam", subnet_key(subnet), ip), None))
            try:
                self._commit(ops, None)
            except (CoordinationError, NotEmptyError):
                for _op, path, _d in ops:
                    try:
                        client.delete(path)
                    except NoNodeError:
                        pass

        await self.coord.call(do)

    async def release_addresses(self, vms: list[dict[str, Any]], subnet: str, epoch: int | None) -> None:
        """Return the addresses of VMs that never started to the pool (their records stay)."""
        key = subnet_key(subnet)
        ops: list[tuple[str, str, bytes | None]] = []
        for vm in vms:
            ip = vm.get("ipAddress")
            if ip:
                ops.append(("delete", self._p("ipam", key, ip), None))
                vm.update(ipAddress=None, macAddress=None)
                ops.append(("set", self._p("vms", vm["virtualMachineId"]), _dump(vm)))
        if ops:
            await self.coord.call(self._commit, ops, epoch, timeout=30)

    async def destination(self, lc_id: str) -> dict[str, Any] | None:
        """A local controller as a migration destination: id, address, hypervisorSettings,
        status, and its group manager's id and address (None if it is not in the hierarchy)."""
        if not lc_id or "/" in lc_id:
            return None
        lc = await self.coord.get_json(self._p("localcontrollers", lc_id))
        if not lc:
            return None
        gm_id = lc.get("groupManagerId")
        gm = await self.coord.get_json(self._p("groupmanagers", gm_id)) if gm_id else None
        return {
            "id": lc_id,
            "address": lc.get("controlDataAddress"),
            "hypervisorSettings": lc.get("hypervisorSettings") or {},
            "status": lc.get("status"),
            "groupManagerId": gm_id if gm else None,
            "groupManagerAddress": gm["listenSettings"]["controlDataAddress"] if gm else None,
        }

    # -- wake-ups: where a woken host belongs ---------------------------------------------
    async def mark_wakeup(self, lc_id: str, gm_id: str) -> None:
        def put() -> None:
            path = self._p("wakeups", lc_id)
            try:
                self.coord.client.create(path, gm_id.encode(), makepath=True)
            except NodeExistsError:
                self.coord.client.set(path, gm_id.encode())

        await self.coord.call(put)

    async def woken_by(self, lc_id: str) -> str | None:
        def get() -> str | None:
            try:
                data, _ = self.coord.client.get(self._p("wakeups", lc_id))
            except NoNodeError:
                return None
            return data.decode() or None

        if not lc_id or "/" in lc_id:
            return None
        return await self.coord.call(get, timeout=3)

    async def clear_wakeup(self, lc_id: str) -> None:
        def delete() -> None:
            try:
                self.coord.client.delete(self._p("wakeups", lc_id))
            except NoNodeError:
                pass

        await self.coord.call(delete)

    async def allocated_ips(self, subnet: str) -> set[str]:
        def do() -> set[str]:
            try:
                return set(self.coord.client.get_children(self._p("ipam", subnet_key(subnet))))
            except NoNodeError:
                return set()

        return await self.coord.call(do)


def now() -> float:
    return time.time()
