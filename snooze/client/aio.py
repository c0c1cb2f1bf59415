"""``SnoozeClient``: the asynchronous client of the Snooze HTTP API, and the one place that speaks HTTP.

Every other client (the blocking ``SyncSnoozeClient``, the Java-style bindings, the libcloud
driver, the CLI verbs) goes through this class, so the wire format — the original's
``/bootstrap?verb`` paths, bare-id bodies, empty "not yet" answers — is written down once.
It is also the boundary to aiohttp: no aiohttp exception leaves this module; each becomes a
``SnoozeClientError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import aiohttp

from snooze.client.errors import (
    BAD_REQUEST,
    BAD_RESPONSE,
    TASK_TIMEOUT,
    TIMEOUT,
    UNREACHABLE,
    SnoozeClientError,
)
from snooze.client.templates import submission_request
from snooze.client.types import (
    Progress,
    ProgressCallback,
    TaskId,
    VirtualClusterResponseJson,
    VirtualMachineMetaDataJson,
)
from snooze.codes import TaskState
from snooze.tls import TlsError, client_context

DEFAULT_URL = "http://127.0.0.1:5000"
BOOTSTRAP = "bootstrap"
GROUP_MANAGER = "groupmanager"
# Enough for a page of VMs; the server pages anything longer.
DEFAULT_PAGE = 100
# Calls the server serves by waiting on a group manager or the leader (60 s for submissions and
# VM actions, 300 s for a live migration): the client waits a little longer than the server,
# so that a slow call ends with the server's own error rather than a client-side TIMEOUT.
SLOW_CALL_TIMEOUT = 90.0
MIGRATION_TIMEOUT = 330.0
# An upload's answer comes after the server has checked the image (qemu-img check).
UPLOAD_READ_TIMEOUT = 600.0


def normalise_url(base_url: str) -> str:
    """``host:port`` or ``http://host:port/`` → ``http://host:port`` (no trailing slash)."""
    url = base_url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


class SnoozeClient:
    """Calls one Snooze endpoint — a bootstrap by default, or a group leader (``prefix="groupmanager"``).

    ``base_url`` is ``http://HOST:PORT`` (or ``https://`` for a cluster with TLS); methods are
    the API's verbs in snake_case and return the decoded JSON in the original's shapes. Use as
    ``async with SnoozeClient(url) as c:`` or call ``close()``; a caller-provided ``session`` is
    left open.
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, prefix: str = BOOTSTRAP, timeout: float = 30.0,
                 session: aiohttp.ClientSession | None = None, token: str | None = None,
                 ca: str | None = None) -> None:
        self.base_url = normalise_url(base_url)
        #: The bearer token every call presents (snooze.auth); default: $SNOOZE_TOKEN.
        self.token = token if token is not None else os.environ.get("SNOOZE_TOKEN") or None
        #: The PEM file of the authorities an https bootstrap's certificate is checked against
        #: (a local cluster's: cluster.json's caCert); default: $SNOOZE_CA, else the system's.
        self.ca = ca if ca is not None else os.environ.get("SNOOZE_CA") or None
        self.prefix = prefix.strip("/")
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"SnoozeClient({self.base_url!r}, prefix={self.prefix!r})"

    async def __aenter__(self) -> SnoozeClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, verb: str) -> str:
        return f"{self.base_url}/{self.prefix}?{verb}"

    # -- the transport ------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _session_for_call(self) -> aiohttp.ClientSession:
        # Created on first use so that the session belongs to the loop that runs the calls.
        if self._session is None or self._session.closed:
            context: ssl.SSLContext | bool = True  # https: the system's authorities
            if self.ca:
                try:
                    context = client_context(self.ca, option="the CA file (--ca, SNOOZE_CA)")
                except TlsError as exc:
                    raise SnoozeClientError(BAD_REQUEST, str(exc), "ca") from exc
            # Timeouts are per request (see request()).
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
            self._owns_session = True
        return self._session

    def _unreachable(self, exc: aiohttp.ClientError) -> SnoozeClientError:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            hint = ("give the authority that signed it with --ca FILE or SNOOZE_CA (a local cluster's: its "
                    "cluster.json caCert)" if not self.ca else f"it is not signed by an authority of {self.ca}")
            return SnoozeClientError(UNREACHABLE, f"cannot reach {self.base_url}: its certificate cannot be "
                                     f"verified ({exc.certificate_error}); {hint}")
        return SnoozeClientError(UNREACHABLE, f"cannot reach {self.base_url}: {exc}")

    async def request(self, method: str, verb: str, *, params: Mapping[str, Any] | None = None,
                      json_body: Any = None, text_body: str | None = None,
                      timeout: float | None = None) -> tuple[int, str, bytes]:
        """One call; returns ``(status, content type, body)`` of a 2xx, raises for anything else.

        ``timeout`` (s) raises the client's timeout for this call; it never lowers it.
        """
        url = self.url(verb)
        total = max(self.timeout, timeout or 0.0)
        if params:
            url += "".join(f"&{k}={v}" for k, v in params.items())
        headers = {"Accept": "application/json, text/plain", **self.auth_headers()}
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif text_body is not None:
            # The seed's curl sends a bare id labelled application/json; so do we, for fidelity.
            data = text_body.encode()
            headers["Content-Type"] = "application/json"
        try:
            async with self._session_for_call().request(method, url, data=data, headers=headers,
                                                        timeout=aiohttp.ClientTimeout(total=total)) as resp:
                body = await resp.read()
                status, ctype = resp.status, resp.content_type
        except TimeoutError as exc:
            raise SnoozeClientError(TIMEOUT, f"no answer from {url} within {total:g}s") from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        if status >= 300:
            raise _error_from_response(status, body, url)
        return status, ctype, body

    async def _json(self, method: str, verb: str, **kw: Any) -> Any:
        _, _, body = await self.request(method, verb, **kw)
        return _decode(body, verb)

    async def _rest(self, method: str, path: str, *, data: Any = None, headers: Mapping[str, str] | None = None,
                    params: Mapping[str, str] | None = None, timeout: aiohttp.ClientTimeout | None = None) -> Any:
        """One call to a REST path of the API (``/images/...``): its decoded JSON answer."""
        return (await self._rest_with_headers(method, path, data=data, headers=headers, params=params,
                                              timeout=timeout))[0]

    async def _rest_with_headers(self, method: str, path: str, *, data: Any = None,
                                 headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
                                 timeout: aiohttp.ClientTimeout | None = None) -> tuple[Any, Mapping[str, str]]:
        """``_rest``, with the answer's headers (a network object's ``ETag``: its version)."""
        url = f"{self.base_url}{path}"
        try:
            async with self._session_for_call().request(
                    method, url, data=data, params=params, headers={"Accept": "application/json", **self.auth_headers(), **(headers or {})},
                    timeout=timeout or aiohttp.ClientTimeout(total=self.timeout)) as resp:
                body = await resp.read()
                status = resp.status
                answer_headers = dict(resp.headers)
        except TimeoutError as exc:
            raise SnoozeClientError(TIMEOUT, f"no answer from {url} in time") from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        if status >= 300:
            raise _error_from_response(status, body, url)
        return _decode(body, path), answer_headers

    # -- the hierarchy --------------------------------------------------------------------

    async def get_group_leader_description(self) -> dict[str, Any]:
        return cast(dict[str, Any], _expect(await self._json("GET", "getGroupLeaderDescription"), dict,
                                            "getGroupLeaderDescription"))

    async def get_complete_hierarchy(self) -> dict[str, Any]:
        return cast(dict[str, Any], _expect(await self._json("GET", "getCompleteHierarchy"), dict,
                                            "getCompleteHierarchy"))

    async def get_local_controller_list(self) -> list[dict[str, Any]]:
        data = _expect(await self._json("GET", "getLocalControllerList"), dict, "getLocalControllerList")
        return cast(list[dict[str, Any]], _expect(data.get("localControllers", []), list, "getLocalControllerList"))

    # -- virtual clusters ---------------------------------------------------------------------

    async def start_virtual_cluster(self, templates: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> TaskId:
        """Submit a virtual cluster; returns the task id to follow.

        ``templates`` is a list of templates (see ``snooze.client.templates``) or a whole
        ``{"virtualMachineTemplates": [...]}`` request.
        """
        body = dict(templates) if isinstance(templates, Mapping) else submission_request(templates)
        _, ctype, raw = await self.request("POST", "startVirtualCluster", json_body=body, timeout=SLOW_CALL_TIMEOUT)
        text = raw.decode("utf-8", "replace").strip()
        # The answer is the bare id as text/plain (the seed's curl prints it); accept a JSON
        # string or {"taskId": …} too, so a server that wraps it does not break clients.
        if ctype == "application/json" or text.startswith(("{", '"')):
            value = _decode(raw, "startVirtualCluster")
            if isinstance(value, dict):
                value = value.get("taskId")
            text = value if isinstance(value, str) else ""
        if not text or any(c.isspace() for c in text):
            raise SnoozeClientError(BAD_RESPONSE, f"startVirtualCluster answered no task id: {raw[:200]!r}")
        return text

    async def get_virtual_cluster_response(self, task_id: TaskId) -> VirtualClusterResponseJson | None:
        """The response of a submitted virtual cluster, or None while the leader is still placing it."""
        _, _, raw = await self.request("POST", "getVirtualClusterResponse", text_body=task_id)
        if not raw.strip():
            return None
        value = _expect(_decode(raw, "getVirtualClusterResponse"), dict, "getVirtualClusterResponse")
        return cast(VirtualClusterResponseJson, value)

    async def wait_for_virtual_cluster(self, task_id: TaskId, timeout: float = 300.0, poll_interval: float = 0.5,
                                       progress: ProgressCallback | None = None) -> VirtualClusterResponseJson:
        """Poll ``getVirtualClusterResponse`` until it is done; raises ``TASK_TIMEOUT`` after ``timeout`` s.

        ``progress`` is called after every poll (see ``Progress``). A transient failure to reach
        the server (a leader fail-over, say) does not end the wait; the deadline does.
        """
        start = time.monotonic()
        polls = 0
        last_state: str | None = None
        last_error: SnoozeClientError | None = None
        while True:
            polls += 1
            try:
                response = await self.get_virtual_cluster_response(task_id)
                last_error = None
            except SnoozeClientError as exc:
                if exc.code not in (UNREACHABLE, TIMEOUT) and not (exc.status or 0) >= 500:
                    raise
                response, last_error = None, exc
            state = TaskState.PENDING if response is None else TaskState.DONE
            if progress is not None:
                statuses = {} if response is None else statuses_of(response)
                progress(Progress(task_id, state, time.monotonic() - start, polls, state != last_state, statuses))
            last_state = state
            if response is not None:
                return response
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                why = f" (last error: {last_error.message})" if last_error else ""
                raise SnoozeClientError(TASK_TIMEOUT, f"virtual cluster {task_id} not done after {timeout:g}s{why}",
                                        "taskId")
            await asyncio.sleep(min(poll_interval, remaining))

    async def submit_virtual_cluster(self, templates: Iterable[Mapping[str, Any]] | Mapping[str, Any], *,
                                     timeout: float = 300.0, poll_interval: float = 0.5,
                                     progress: ProgressCallback | None = None) -> VirtualClusterResponseJson:
        """``start_virtual_cluster`` then ``wait_for_virtual_cluster``."""
        task_id = await self.start_virtual_cluster(templates)
        return await self.wait_for_virtual_cluster(task_id, timeout, poll_interval, progress)

    # -- virtual machines (bootstrap) ------------------------------------------------------------

    async def _control(self, verb: str, vm_id: str) -> bool:
        value = await self._json("POST", verb, text_body=vm_id, timeout=SLOW_CALL_TIMEOUT)
        return bool(_expect(value, bool, verb))

    async def suspend_virtual_machine(self, vm_id: str) -> bool:
        return await self._control("suspendVirtualMachine", vm_id)

    async def resume_virtual_machine(self, vm_id: str) -> bool:
        return await self._control("resumeVirtualMachine", vm_id)

    async def shutdown_virtual_machine(self, vm_id: str) -> bool:
        return await self._control("shutdownVirtualMachine", vm_id)

    async def reboot_virtual_machine(self, vm_id: str) -> bool:
        return await self._control("rebootVirtualMachine", vm_id)

    async def destroy_virtual_machine(self, vm_id: str) -> bool:
        return await self._control("destroyVirtualMachine", vm_id)

    async def migrate_virtual_machine(self, vm_id: str, local_controller_id: str) -> bool:
        """Live-migrate a virtual machine to the local controller ``local_controller_id``."""
        value = await self._json("POST", "migrateVirtualMachine",
                                 json_body={"virtualMachineId": vm_id, "localControllerId": local_controller_id},
                                 timeout=MIGRATION_TIMEOUT)
        return bool(_expect(value, bool, "migrateVirtualMachine"))

    async def resize_virtual_machine(self, vm_id: str, *, vcpus: int | None = None, memory: int | None = None,
                                     rx: float | None = None, tx: float | None = None) -> VirtualMachineMetaDataJson:
        """Resize a running VM live (``memory`` in KiB; what is not given is kept): the
        original's ResizeRequest; answers the VM's new metadata."""
        keep = -1
        body = {"virtualMachineLocation": {"virtualMachineId": vm_id},
                "resizedCapacity": [keep if v is None else v for v in (vcpus, memory, rx, tx)]}
        value = await self._json("POST", "resizeVirtualMachine", json_body=body, timeout=SLOW_CALL_TIMEOUT)
        return cast(VirtualMachineMetaDataJson, _expect(value, dict, "resizeVirtualMachine"))

    async def get_virtual_machine_meta_data(self, vm_id: str) -> VirtualMachineMetaDataJson:
        value = await self._json("POST", "getVirtualMachineMetaData", text_body=vm_id)
        return cast(VirtualMachineMetaDataJson, _expect(value, dict, "getVirtualMachineMetaData"))

    async def _page(self, verb: str, start: int, limit: int) -> dict[str, Any]:
        # v=2: the paged object ({KEY: [...], "start", "limit", "total"}, start an offset); the
        # original's form answers bare arrays and takes an id as start.
        value = await self._json("GET", verb, params={"start": int(start), "limit": int(limit), "v": 2})
        return cast(dict[str, Any], _expect(value, dict, verb))

    async def get_virtual_machine_descriptions(self, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """One page: ``{"virtualMachines": [...], "start", "limit", "total"}``."""
        return await self._page("getVirtualMachineDescriptions", start, limit)

    async def get_group_manager_descriptions(self, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """One page: ``{"groupManagers": [...], "start", "limit", "total"}``."""
        return await self._page("getGroupManagerDescriptions", start, limit)

    async def get_local_controller_descriptions(self, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """One page: ``{"localControllers": [...], "start", "limit", "total"}``."""
        return await self._page("getLocalControllerDescriptions", start, limit)

    async def _all(self, verb: str, key: str, page: int) -> AsyncIterator[dict[str, Any]]:
        start = 0
        while True:
            data = await self._page(verb, start, page)
            items = _expect(data.get(key, []), list, verb)
            for item in items:
                yield item
            start += len(items)
            total = data.get("total")
            # Stop on a short or empty page too: a server without "total" must not loop forever.
            if not items or len(items) < page or (isinstance(total, int) and start >= total):
                return

    async def list_virtual_machines(self, page: int = DEFAULT_PAGE) -> list[VirtualMachineMetaDataJson]:
        """Every virtual machine, following the pages."""
        return [cast(VirtualMachineMetaDataJson, vm)
                async for vm in self._all("getVirtualMachineDescriptions", "virtualMachines", page)]

    async def list_group_managers(self, page: int = DEFAULT_PAGE) -> list[dict[str, Any]]:
        return [gm async for gm in self._all("getGroupManagerDescriptions", "groupManagers", page)]

    async def list_local_controllers(self, page: int = DEFAULT_PAGE) -> list[dict[str, Any]]:
        return [lc async for lc in self._all("getLocalControllerDescriptions", "localControllers", page)]


    # -- the image repository (/images) ------------------------------------------------------

    # -- API tokens (admins; snooze.auth) -----------------------------------------------------
    async def create_token(self, user: str, role: str = "user", name: str = "",
                           networks: list[str] | None = None) -> dict[str, Any]:
        """A new token ``{id, token, user, role, name, created, networks}``: the token is shown
        only here. ``networks``: those of the network model a user's token may use."""
        body: dict[str, Any] = {"user": user, "role": role, "name": name}
        if networks:
            body["networks"] = list(networks)
        value = await self._rest("POST", "/tokens", data=json.dumps(body), headers=_JSON)
        return cast(dict[str, Any], _expect(value, dict, "/tokens"))

    async def list_tokens(self) -> list[dict[str, Any]]:
        data = _expect(await self._rest("GET", "/tokens"), dict, "/tokens")
        return cast(list[dict[str, Any]], _expect(data.get("tokens", []), list, "/tokens"))

    async def revoke_token(self, token_id: str) -> bool:
        return bool(_expect(await self._rest("DELETE", f"/tokens/{quote(token_id, safe='')}"), bool, "/tokens/ID"))

    async def list_images(self) -> list[dict[str, Any]]:
        """Every image of the repository (``GET /images``), sorted by id."""
        data = _expect(await self._rest("GET", "/images"), dict, "/images")
        return cast(list[dict[str, Any]], _expect(data.get("images", []), list, "/images"))

    async def get_image(self, image_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], _expect(await self._rest("GET", f"/images/{quote(image_id, safe='')}"), dict, "/images/ID"))

    async def delete_image(self, image_id: str) -> bool:
        """Remove an image; refused (``IMAGE_IN_USE``) while a VM uses it."""
        return bool(_expect(await self._rest("DELETE", f"/images/{quote(image_id, safe='')}"), bool, "/images/ID"))

    async def upload_image(self, path: str | os.PathLike[str], name: str | None = None, *,
                           image_format: str | None = None) -> dict[str, Any]:
        """Upload the qcow2 (or, with ``image_format="raw"``, raw) disk at ``path`` as ``name``
        (default: the file's name), streamed, with its SHA-256 for the server to check; the
        repository's record of the image."""
        file = Path(path)
        name = file.name if name is None else name
        try:
            size, checksum = await asyncio.to_thread(_size_and_checksum, file)
        except OSError as exc:
            raise SnoozeClientError(BAD_REQUEST, f"cannot read {file}: {exc.strerror or exc}", "path") from exc
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size),
                   "X-Snooze-Checksum": checksum}
        params = {"format": image_format} if image_format else None
        # No total deadline: a big image takes its time; each read waits at most UPLOAD_READ_TIMEOUT
        # (the server checks the image after the last byte, which takes a while for a big one).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=max(self.timeout, UPLOAD_READ_TIMEOUT))
        try:
            body = await asyncio.to_thread(file.open, "rb")
        except OSError as exc:
            raise SnoozeClientError(BAD_REQUEST, f"cannot read {file}: {exc.strerror or exc}", "path") from exc
        try:
            value = await self._rest("PUT", f"/images/{quote(name, safe='')}", data=body, headers=headers,
                                     params=params, timeout=timeout)
        finally:
            body.close()
        return cast(dict[str, Any], _expect(value, dict, "/images/NAME"))

    # -- the network model (/networks, /subnets, /flavors, /fwgroups, /vlans, /vlangroups, /guests) --

    def _object_path(self, kind: str, key: str | int | None = None) -> str:
        if kind not in NETWORK_KINDS:
            raise SnoozeClientError(BAD_REQUEST, f"{kind!r} is not one of {', '.join(NETWORK_KINDS)}", "kind")
        return f"/{kind}" if key is None else f"/{kind}/{quote(str(key), safe='')}"

    async def list_network_objects(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind`` (``networks``, ``subnets`` … ``guests``), sorted by id."""
        path = self._object_path(kind)
        data = _expect(await self._rest("GET", path), dict, path)
        return cast(list[dict[str, Any]], _expect(data.get(kind, []), list, path))

    async def get_network_object(self, kind: str, key: str | int) -> tuple[dict[str, Any], int]:
        """An object (a VLAN by its tag) and its version, for ``update_network_object``."""
        path = self._object_path(kind, key)
        value, headers = await self._rest_with_headers("GET", path)
        return cast(dict[str, Any], _expect(value, dict, path)), _version_of(headers, path)

    async def create_network_object(self, kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object (refused, ``NETWORK_OBJECT_EXISTS``, if its id is taken); a guest
        gets its address, MAC and bridge filled in."""
        path = self._object_path(kind)
        value = await self._rest("POST", path, data=json.dumps(dict(obj)), headers=_JSON)
        return cast(dict[str, Any], _expect(value, dict, path))

    async def update_network_object(self, kind: str, key: str | int, obj: Mapping[str, Any],
                                    version: int) -> tuple[dict[str, Any], int]:
        """Replace an object read at ``version`` (``CONFLICT`` if it changed since); the saved
        object and its new version."""
        path = self._object_path(kind, key)
        value, headers = await self._rest_with_headers("PUT", path, data=json.dumps(dict(obj)),
                                                       headers={**_JSON, "If-Match": f'"{int(version)}"'})
        return cast(dict[str, Any], _expect(value, dict, path)), _version_of(headers, path)

    async def delete_network_object(self, kind: str, key: str | int, version: int | None = None) -> bool:
        """Delete an object (at ``version`` if given); ``NETWORK_OBJECT_IN_USE`` names its users."""
        path = self._object_path(kind, key)
        headers = {"If-Match": f'"{int(version)}"'} if version is not None else None
        return bool(_expect(await self._rest("DELETE", path, headers=headers), bool, path))

    async def list_addresses(self, subnet: str) -> list[dict[str, Any]]:
        """The addresses reserved in ``subnet``: ``[{"address", "guest"}]``, in address order."""
        path = self._object_path("subnets", subnet) + "/addresses"
        data = _expect(await self._rest("GET", path), dict, path)
        return cast(list[dict[str, Any]], _expect(data.get("addresses", []), list, path))

    async def reserve_address(self, subnet: str, guest: str) -> str:
        """Reserve an address of ``subnet`` for ``guest``; ``NO_FREE_IP_ADDRESS`` when it is full."""
        path = self._object_path("subnets", subnet) + "/addresses"
        data = _expect(await self._rest("POST", path, data=json.dumps({"guest": guest}), headers=_JSON), dict, path)
        return str(_expect(data.get("address"), str, path))

    async def release_address(self, subnet: str, address: str) -> bool:
        path = self._object_path("subnets", subnet) + f"/addresses/{quote(address, safe='')}"
        return bool(_expect(await self._rest("DELETE", path), bool, path))

    async def list_hypervisors(self) -> list[dict[str, Any]]:
        """The local controllers as Loch Ness hypervisors (``alive``, ``subnets`` → bridge …)."""
        data = _expect(await self._rest("GET", "/hypervisors"), dict, "/hypervisors")
        return cast(list[dict[str, Any]], _expect(data.get("hypervisors", []), list, "/hypervisors"))

    async def get_hypervisor(self, hypervisor: str) -> dict[str, Any]:
        path = f"/hypervisors/{quote(hypervisor, safe='')}"
        return cast(dict[str, Any], _expect(await self._rest("GET", path), dict, path))

    async def serve_subnet(self, hypervisor: str, subnet: str, bridge: str) -> dict[str, Any]:
        """Say that ``hypervisor`` serves ``subnet`` on ``bridge`` (a subnet no host serves is served by all)."""
        path = f"/hypervisors/{quote(hypervisor, safe='')}/subnets/{quote(subnet, safe='')}"
        value = await self._rest("PUT", path, data=json.dumps({"bridge": bridge}), headers=_JSON)
        return cast(dict[str, Any], _expect(value, dict, path))

    async def unserve_subnet(self, hypervisor: str, subnet: str) -> dict[str, Any]:
        path = f"/hypervisors/{quote(hypervisor, safe='')}/subnets/{quote(subnet, safe='')}"
        return cast(dict[str, Any], _expect(await self._rest("DELETE", path), dict, path))


#: The network model's kinds with the five generic endpoints (the API's paths).
NETWORK_KINDS = ("networks", "subnets", "flavors", "fwgroups", "vlans", "vlangroups", "guests")
_JSON = {"Content-Type": "application/json"}


def _version_of(headers: Mapping[str, str], path: str) -> int:
    """An object's version, from the ``ETag`` the network API answers (``"3"``)."""
    tag = next((v for k, v in headers.items() if k.lower() == "etag"), "").strip().removeprefix("W/").strip('"')
    if not (tag.isascii() and tag.isdigit()):
        raise SnoozeClientError(BAD_RESPONSE, f"{path} answered no version (ETag {tag[:40]!r})")
    return int(tag)


def _size_and_checksum(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, "sha256:" + digest.hexdigest()


def statuses_of(response: VirtualClusterResponseJson) -> dict[str, str]:
    return {str(vm.get("virtualMachineId") or vm.get("virtualMachineLocation", {}).get("virtualMachineId")):
            str(vm.get("status")) for vm in response.get("virtualMachineMetaData") or []}


def _decode(body: bytes, verb: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnoozeClientError(BAD_RESPONSE, f"{verb} answered something that is not JSON: {body[:200]!r}") from exc


def _expect(value: Any, kind: type, verb: str) -> Any:
    if not isinstance(value, kind):
        raise SnoozeClientError(BAD_RESPONSE, f"{verb} answered a {type(value).__name__}, expected a {kind.__name__}")
    return value


def _error_from_response(status: int, body: bytes, url: str) -> SnoozeClientError:
    """The server's ``{"error": {...}}`` as an exception; anything else keeps its HTTP status."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, UnicodeDecodeError, AttributeError):
        err = None
    if isinstance(err, dict) and err.get("code"):
        field = err.get("field")
        return SnoozeClientError(str(err["code"]), str(err.get("message") or ""),
                                 str(field) if field is not None else None, status)
    text = body.decode("utf-8", "replace").strip()[:200]
    return SnoozeClientError(f"HTTP_{status}", f"{url} answered {status}" + (f": {text}" if text else ""),
                             None, status)
