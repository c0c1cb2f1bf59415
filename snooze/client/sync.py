"""``SyncSnoozeClient``: the blocking client, for scripts, the CLI, the Java-style bindings and libcloud.

It is not a second HTTP implementation: it runs ``SnoozeClient`` on a private event loop in
a daemon thread and waits for each call, so it works the same whether or not the caller has a
loop of its own running (libcloud and Java-style callers are synchronous and may well live
inside an asyncio program).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from snooze.client.aio import BOOTSTRAP, DEFAULT_PAGE, DEFAULT_URL, SnoozeClient
from snooze.client.types import (
    ProgressCallback,
    TaskId,
    VirtualClusterResponseJson,
    VirtualMachineMetaDataJson,
)

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="snooze-client-loop", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("a SyncSnoozeClient cannot be called from its own loop thread")

        async def wrapped() -> T:
            return await coro

        future = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C in the caller: do not leave the call running on the loop behind its back.
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()


def _shutdown(runner: _LoopThread, client: SnoozeClient) -> None:
    # Runs from close(), from garbage collection or at exit: close the HTTP session on its own
    # loop (aiohttp requires it), then stop the loop. Never blocks the loop thread on itself.
    if runner.loop.is_closed() or not runner.thread.is_alive():
        return
    if threading.current_thread() is runner.thread:
        runner.loop.create_task(client.close())
        runner.loop.call_soon(runner.loop.stop)
        return
    try:
        asyncio.run_coroutine_threadsafe(client.close(), runner.loop).result(timeout=5)
    except Exception:  # closing is best effort; the loop is going away regardless
        pass
    runner.stop()


class SyncSnoozeClient:
    """The blocking twin of ``SnoozeClient``: same constructor, same methods, same errors."""

    def __init__(self, base_url: str = DEFAULT_URL, *, prefix: str = BOOTSTRAP, timeout: float = 30.0,
                 token: str | None = None, ca: str | None = None) -> None:
        self._runner = _LoopThread()
        self._client = SnoozeClient(base_url, prefix=prefix, timeout=timeout, token=token, ca=ca)
        self._finalizer = weakref.finalize(self, _shutdown, self._runner, self._client)

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def prefix(self) -> str:
        return self._client.prefix

    def __repr__(self) -> str:
        return f"SyncSnoozeClient({self.base_url!r}, prefix={self.prefix!r})"

    def __enter__(self) -> SyncSnoozeClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def url(self, verb: str) -> str:
        return self._client.url(verb)

    def get_group_leader_description(self) -> dict[str, Any]:
        return self._runner.run(self._client.get_group_leader_description())

    def get_complete_hierarchy(self) -> dict[str, Any]:
        return self._runner.run(self._client.get_complete_hierarchy())

    def get_local_controller_list(self) -> list[dict[str, Any]]:
        return self._runner.run(self._client.get_local_controller_list())

    def start_virtual_cluster(self, templates: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> TaskId:
        return self._runner.run(self._client.start_virtual_cluster(templates))

    def get_virtual_cluster_response(self, task_id: TaskId) -> VirtualClusterResponseJson | None:
        return self._runner.run(self._client.get_virtual_cluster_response(task_id))

    def wait_for_virtual_cluster(self, task_id: TaskId, timeout: float = 300.0, poll_interval: float = 0.5,
                                 progress: ProgressCallback | None = None) -> VirtualClusterResponseJson:
        # ``progress`` runs on the loop thread; it must not call back into this client.
        return self._runner.run(self._client.wait_for_virtual_cluster(task_id, timeout, poll_interval, progress))

    def submit_virtual_cluster(self, templates: Iterable[Mapping[str, Any]] | Mapping[str, Any], *,
                               timeout: float = 300.0, poll_interval: float = 0.5,
                               progress: ProgressCallback | None = None) -> VirtualClusterResponseJson:
        return self._runner.run(self._client.submit_virtual_cluster(
            templates, timeout=timeout, poll_interval=poll_interval, progress=progress))

    def suspend_virtual_machine(self, vm_id: str) -> bool:
        return self._runner.run(self._client.suspend_virtual_machine(vm_id))

    def resume_virtual_machine(self, vm_id: str) -> bool:
        return self._runner.run(self._client.resume_virtual_machine(vm_id))

    def shutdown_virtual_machine(self, vm_id: str) -> bool:
        return self._runner.run(self._client.shutdown_virtual_machine(vm_id))

    def reboot_virtual_machine(self, vm_id: str) -> bool:
        return self._runner.run(self._client.reboot_virtual_machine(vm_id))

    def destroy_virtual_machine(self, vm_id: str) -> bool:
        return self._runner.run(self._client.destroy_virtual_machine(vm_id))

    def migrate_virtual_machine(self, vm_id: str, local_controller_id: str) -> bool:
        return self._runner.run(self._client.migrate_virtual_machine(vm_id, local_controller_id))

    def resize_virtual_machine(self, vm_id: str, *, vcpus: int | None = None, memory: int | None = None,
                               rx: float | None = None, tx: float | None = None) -> VirtualMachineMetaDataJson:
        return self._runner.run(self._client.resize_virtual_machine(vm_id, vcpus=vcpus, memory=memory, rx=rx, tx=tx))

    def get_virtual_machine_meta_data(self, vm_id: str) -> VirtualMachineMetaDataJson:
        return self._runner.run(self._client.get_virtual_machine_meta_data(vm_id))

    def get_virtual_machine_descriptions(self, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        return self._runner.run(self._client.get_virtual_machine_descriptions(start, limit))

    def get_group_manager_descriptions(self, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        return self._runner.run(self._client.get_group_manager_descriptions(start, limit))

    def get_local_controller_descriptions(self, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        return self._runner.run(self._client.get_local_controller_descriptions(start, limit))

    def list_virtual_machines(self, page: int = DEFAULT_PAGE) -> list[VirtualMachineMetaDataJson]:
        return self._runner.run(self._client.list_virtual_machines(page))

    def list_group_managers(self, page: int = DEFAULT_PAGE) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_group_managers(page))

    def list_local_controllers(self, page: int = DEFAULT_PAGE) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_local_controllers(page))

    def list_images(self) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_images())

    def get_image(self, image_id: str) -> dict[str, Any]:
        return self._runner.run(self._client.get_image(image_id))

    def create_token(self, user: str, role: str = "user", name: str = "", networks: list[str] | None = None) -> dict[str, Any]:
        return self._runner.run(self._client.create_token(user, role, name, networks))

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_tokens())

    def revoke_token(self, token_id: str) -> bool:
        return self._runner.run(self._client.revoke_token(token_id))

    def delete_image(self, image_id: str) -> bool:
        return self._runner.run(self._client.delete_image(image_id))

    def upload_image(self, path: str | os.PathLike[str], name: str | None = None, *,
                     image_format: str | None = None) -> dict[str, Any]:
        return self._runner.run(self._client.upload_image(path, name, image_format=image_format))

    # -- the network model ----------------------------------------------------------------------
    def list_network_objects(self, kind: str) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_network_objects(kind))

    def get_network_object(self, kind: str, key: str | int) -> tuple[dict[str, Any], int]:
        return self._runner.run(self._client.get_network_object(kind, key))

    def create_network_object(self, kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._runner.run(self._client.create_network_object(kind, obj))

    def update_network_object(self, kind: str, key: str | int, obj: Mapping[str, Any],
                              version: int) -> tuple[dict[str, Any], int]:
        return self._runner.run(self._client.update_network_object(kind, key, obj, version))

    def delete_network_object(self, kind: str, key: str | int, version: int | None = None) -> bool:
        return self._runner.run(self._client.delete_network_object(kind, key, version))

    def list_addresses(self, subnet: str) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_addresses(subnet))

    def reserve_address(self, subnet: str, guest: str) -> str:
        return self._runner.run(self._client.reserve_address(subnet, guest))

    def release_address(self, subnet: str, address: str) -> bool:
        return self._runner.run(self._client.release_address(subnet, address))

    def list_hypervisors(self) -> list[dict[str, Any]]:
        return self._runner.run(self._client.list_hypervisors())

    def get_hypervisor(self, hypervisor: str) -> dict[str, Any]:
        return self._runner.run(self._client.get_hypervisor(hypervisor))

    def serve_subnet(self, hypervisor: str, subnet: str, bridge: str) -> dict[str, Any]:
        return self._runner.run(self._client.serve_subnet(hypervisor, subnet, bridge))

    def unserve_subnet(self, hypervisor: str, subnet: str) -> dict[str, Any]:
        return self._runner.run(self._client.unserve_subnet(hypervisor, subnet))
