"""The repository's HTTP API on the bootstrap's port: ``/images``.

* ``GET /images`` → ``{"images": [IMG, ...]}`` sorted by id; ``GET /images/{id}`` → IMG.
* ``GET /images/{id}/content`` → the bytes, streamed, with ``Content-Length``,
  ``X-Snooze-Checksum: sha256:HEX`` and ``X-Snooze-Image-Format``.
* ``PUT /images/{name}`` streams an image in (``Content-Length`` required; optional
  ``X-Snooze-Checksum``; ``?format=raw`` for a raw disk) → 201 IMG.
* ``DELETE /images/{id}`` → ``true``; 409 IMAGE_IN_USE while a VM that is not finished names it.

An upload is never read whole into memory, so it bypasses the common error middleware (which
reads every body under one deadline, up to 4 MiB): a middleware placed first hands ``PUT
/images/...`` straight to its handler, which keeps the same rules itself: JSON errors naming
the field, a deadline on the body (``[node] http_body_timeout`` between reads, and
``http_body_timeout + size / [images] min_upload_rate`` in all), the connection closed after an
early refusal so the rest of the body is never read. ``Expect: 100-continue`` is answered only
when the upload would be accepted: a client that waits for it sends nothing of a refused one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bootstrap.openapi import ID
from snooze.auth.guard import GATE
from snooze.codes import FINISHED, ErrorCode
from snooze.coordination import CoordinationError
from snooze.coordination.store import Store
from snooze.http import GUARD, ApiError, bad_request, json_response
from snooze.ids import InvalidId, check_id
from snooze.openapi import (
    Body,
    Operation,
    Param,
    array,
    boolean,
    component,
    describe,
    integer,
    nullable,
    obj,
    ref,
    string,
)
from snooze.records import VMRecord
from snooze.rpc import api_error

from .inspect import FORMATS, InvalidImage, QemuImgError, inspect
from .store import CHUNK, Image, ImageExists, ImageStore, RepositoryUnavailable, Staged

if TYPE_CHECKING:
    from bootstrap.service import Bootstrap

log = logging.getLogger(__name__)

CHECKSUM_HEADER = "X-Snooze-Checksum"
FORMAT_HEADER = "X-Snooze-Image-Format"
CHECKSUM_RE = re.compile(r"sha256:[0-9a-fA-F]{64}")
#: Room kept free on the repository's file system beyond the uploads being received.
SPARE_BYTES = 64 * 1024 * 1024
#: How long a listing's ``usedBy`` may be reused (seconds).
USERS_TTL = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(ErrorCode.IMAGE_REPOSITORY_UNAVAILABLE, f"the image repository cannot be used now: {exc}")


def _image_id(request: web.Request, key: str = "id") -> str:
    try:
        return check_id(request.match_info[key], key)
    except InvalidId as exc:
        raise bad_request(str(exc), field=key, code=ErrorCode.INVALID_ID) from exc


def image_named(vm_image: Any) -> str | None:
    """The image a VM's ``imageId`` names: the id itself, or the last component of a path
    (the 2.1 client sent paths)."""
    if not isinstance(vm_image, str) or not vm_image.strip("/"):
        return None
    return vm_image.rstrip("/").rsplit("/", 1)[-1]


class ImagesApi:
    def __init__(self, bootstrap: Bootstrap) -> None:
        self.b = bootstrap
        self.settings = bootstrap.settings.images
        self.store = ImageStore(self.settings)
        self._uploading: set[str] = set()
        self._users_lock = asyncio.Lock()
        self._users_cache: tuple[float, dict[str, list[str]]] | None = None
        self._reserved = 0
        app = bootstrap.app
        router = app.router
        router.add_get("/images", self.list_images)
        router.add_get("/images/{id}/content", self.get_content)
        router.add_get("/images/{id}", self.get_image)
        router.add_delete("/images/{id}", self.delete_image)
        # Any name (slashes, newlines: '.' would not match those, and the request would find no
        # route and be answered 405), refused 400 by the id check, not by routing.
        self._upload = router.add_route("PUT", r"/images/{name:[\s\S]*}", self.put_image, expect_handler=self._expect)
        app.middlewares.insert(0, self._upload_middleware)
        _describe(app)

    async def start(self) -> None:
        """Prepare the directory (and pool) when possible; a repository that cannot be used
        now is reported, and its requests answered 503, without stopping the bootstrap."""
        if self.store.pool is None and not self.store.directory.exists():
            log.info("image repository in %s (made at the first upload)", self.store.directory)
            return
        try:
            await asyncio.to_thread(self.store.prepare)
        except RepositoryUnavailable as exc:
            log.warning("image repository not available yet: %s", exc)
        else:
            log.info("image repository in %s%s", self.store.directory,
                     f" (libvirt pool {self.settings.pool} at {self.settings.libvirt_uri})" if self.store.pool else "")

    async def stop(self) -> None:
        await asyncio.to_thread(self.store.close)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except RepositoryUnavailable as exc:
            raise _unavailable(exc) from exc

    # -- which VMs use which image ---------------------------------------------------------
    async def users(self) -> dict[str, list[str]]:
        """image id → the VMs (not finished) whose ``imageId`` names it, from ZooKeeper's
        records; CoordinationError when ZooKeeper cannot say. A record that cannot be read
        counts as a user (it might be one)."""
        coord = self.b.coord
        if coord is None or not coord.connected:
            raise CoordinationError("not connected to ZooKeeper")
        store = Store(coord)
        ids = await store.vm_ids()
        if not ids:
            return {}
        specs = await store.get_specs(ids)
        records = await store.read_vms(ids)
        out: dict[str, list[str]] = {}
        for vm_id in ids:
            spec, rec = specs.get(vm_id), records.get(vm_id)
            if rec is None or not isinstance(spec, dict):
                continue
            if isinstance(rec, VMRecord) and rec.status in FINISHED:
                continue
            image = image_named(spec.get("imageId"))
            if image is not None:
                out.setdefault(image, []).append(vm_id)
        return out

    async def _users_or_none(self) -> dict[str, list[str]] | None:
        """``users()`` for a listing: read at most once per USERS_TTL seconds however many
        local controllers ask at once (each VM start looks its image up); None when ZooKeeper
        cannot say. A deletion always reads afresh."""
        async with self._users_lock:
            loop = asyncio.get_running_loop()
            if self._users_cache is not None and loop.time() - self._users_cache[0] < USERS_TTL:
                return self._users_cache[1]
            try:
                users = await self.users()
            except CoordinationError as exc:
                log.info("image listing without usedBy: %s", exc)
                return None
            self._users_cache = (loop.time(), users)
            return users

    def _json(self, img: Image, users: dict[str, list[str]] | None) -> dict[str, Any]:
        return img.to_json(None if users is None else sorted(users.get(img.id, [])))

    # -- reading ---------------------------------------------------------------------------
    async def list_images(self, _request: web.Request) -> web.Response:
        images: list[Image] = await self._run(self.store.list)
        users = await self._users_or_none()
        return json_response({"images": [self._json(i, users) for i in images]})

    async def _get(self, image_id: str) -> Image:
        img: Image | None = await self._run(self.store.get, image_id)
        if img is None:
            raise ApiError(ErrorCode.IMAGE_NOT_FOUND, f"no image {image_id!r}", field="id")
        return img

    async def get_image(self, request: web.Request) -> web.Response:
        img = await self._get(_image_id(request))
        return json_response(self._json(img, await self._users_or_none()))

    async def get_content(self, request: web.Request) -> web.StreamResponse:
        image_id = _image_id(request)
        opened = self.store.open(image_id)
        try:
            f, img = await self._run(opened.__enter__)
        except KeyError:
            raise ApiError(ErrorCode.IMAGE_NOT_FOUND, f"no image {image_id!r}", field="id") from None
        try:
            resp = web.StreamResponse(headers={CHECKSUM_HEADER: img.checksum, FORMAT_HEADER: img.format,
                                               "Content-Type": "application/octet-stream"})
            resp.content_length = img.size
            await resp.prepare(request)
            if request.method != "HEAD":
                left = img.size
                while left > 0:
                    chunk: bytes = await asyncio.to_thread(f.read, min(CHUNK, left))
                    if not chunk:  # the file shrank under us: cut the answer short, never pad it
                        log.warning("image %s shrank while being sent: the download is cut short", image_id)
                        resp.force_close()
                        return resp
                    await resp.write(chunk)
                    left -= len(chunk)
            await resp.write_eof()
            return resp
        finally:
            await asyncio.to_thread(opened.__exit__, None, None, None)

    # -- deleting --------------------------------------------------------------------------
    async def delete_image(self, request: web.Request) -> web.Response:
        image_id = _image_id(request)
        await self._get(image_id)
        try:
            users = (await self.users()).get(image_id, [])
        except CoordinationError as exc:
            raise api_error(exc, "ZooKeeper (needed to know whether a VM uses the image)") from exc
        if users:
            shown = ", ".join(sorted(users)[:20]) + (f" and {len(users) - 20} more" if len(users) > 20 else "")
            raise ApiError(ErrorCode.IMAGE_IN_USE, f"image {image_id} is used by {len(users)} VM(s): {shown}; destroy them first",
                           field="id")
        if not await self._run(self.store.delete, image_id):
            raise ApiError(ErrorCode.IMAGE_NOT_FOUND, f"no image {image_id!r}", field="id")
        log.info("image %s deleted", image_id)
        return json_response(True)

    # -- uploading -------------------------------------------------------------------------
    def _precheck(self, request: web.Request) -> tuple[str, str | None, str | None, int]:
        """What can be refused before the body is read: (name, declared format, expected
        checksum, length), or an ApiError."""
        name = _image_id(request, "name")
        declared = request.query.get("format") or request.headers.get(FORMAT_HEADER) or None
        if declared is not None and declared not in FORMATS:
            raise bad_request(f"format: {declared[:40]!r} is not one of {', '.join(FORMATS)}", field="format",
                              code=ErrorCode.INVALID_IMAGE)
        expected = request.headers.get(CHECKSUM_HEADER)
        if expected is not None:
            if not CHECKSUM_RE.fullmatch(expected.strip()):
                raise bad_request(f"{CHECKSUM_HEADER} must be sha256:<64 hex digits>", field=CHECKSUM_HEADER)
            expected = expected.strip().lower()
        length = request.content_length
        if length is None or "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(ErrorCode.BAD_REQUEST, "an upload needs a Content-Length (no chunked encoding)",
                           field="Content-Length", status=411)
        limit = self.settings.max_upload_bytes
        if length > limit:
            raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"the image is {length} bytes, over [images] max_upload_bytes = {limit}",
                           field="Content-Length")
        if length == 0:
            raise bad_request("the body is empty: no image", field="body", code=ErrorCode.INVALID_IMAGE)
        if name in self._uploading:
            raise ApiError(ErrorCode.IMAGE_EXISTS, f"image {name} is being uploaded by another request", field="name")
        if self.store.exists(name):
            raise ApiError(ErrorCode.IMAGE_EXISTS, f"image {name} exists: delete it first or choose another name", field="name")
        if len(self._uploading) >= self.settings.max_concurrent_uploads:
            raise ApiError(ErrorCode.IMAGE_REPOSITORY_UNAVAILABLE,
                           f"{len(self._uploading)} uploads are under way ([images] max_concurrent_uploads); retry shortly")
        free = self.store.free_bytes() - self._reserved - SPARE_BYTES
        if length > free:
            raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"the image is {length} bytes but the repository has room for {max(free, 0)}",
                           field="Content-Length")
        return name, declared, expected, length

    def _refusal(self, exc: ApiError) -> web.Response:
        resp = json_response(exc.to_json(), exc.status)
        if exc.status in (503, 429):
            resp.headers["Retry-After"] = str(self.b.retry_after(exc.code))
        resp.force_close()  # the rest of the body (if any) is never read
        return resp

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: go on only if the upload would be accepted."""
        if request.version != (1, 1) or request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect', '')[:40]}")
        try:
            gate = request.app.get(GATE)
            if gate is not None:
                await gate.check(request)  # no body is asked of a client that may not send it
            self._precheck(request)
        except ApiError as exc:
            return self._refusal(exc)
        except InvalidId as exc:
            return self._refusal(bad_request(str(exc), field=exc.field, code=ErrorCode.INVALID_ID))
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    @web.middleware
    async def _upload_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "PUT" or request.match_info.route is not self._upload:
            return await handler(request)
        guard = request.app.get(GUARD)
        if guard is not None:
            guard.request_started(request.protocol)  # its headers are in: the header deadline is met
        try:
            return await self.put_image(request)
        except ApiError as exc:
            return self._refusal(exc)
        except InvalidId as exc:
            return self._refusal(bad_request(str(exc), field=exc.field, code=ErrorCode.INVALID_ID))
        except (ConnectionError, web.RequestPayloadError) as exc:
            log.info("upload from %s cut short: %r", request.remote, exc)
            return self._refusal(bad_request("the request body was cut short", field="body", code=ErrorCode.BODY_INCOMPLETE))
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path_qs)
            return self._refusal(ApiError(ErrorCode.INTERNAL_ERROR, "internal error (a bug: see the server's log)"))

    async def put_image(self, request: web.Request) -> web.Response:
        name, declared, expected, length = self._precheck(request)
        self._uploading.add(name)
        self._reserved += length
        try:
            staged: Staged = await self._run(self.store.stage)
            try:
                await self._receive(request, staged, length)
                try:
                    checksum = await asyncio.to_thread(staged.finish)
                except OSError as exc:
                    raise _unavailable(RepositoryUnavailable(f"cannot write the upload: {exc.strerror or exc}")) from exc
                if expected is not None and checksum != expected:
                    raise bad_request(f"the body's checksum is {checksum}, not {expected} as {CHECKSUM_HEADER} says: "
                                      "the upload was damaged or is another file", field=CHECKSUM_HEADER,
                                      code=ErrorCode.IMAGE_CHECKSUM_MISMATCH)
                try:
                    facts = await inspect(staged.path, declared)
                except InvalidImage as exc:
                    raise bad_request(f"not a usable image: {exc}", field="body", code=ErrorCode.INVALID_IMAGE) from exc
                except QemuImgError as exc:
                    raise _unavailable(exc) from exc
                try:
                    img: Image = await self._run(self.store.commit, staged, name, facts.format, facts.capacity, checksum)
                except ImageExists:
                    raise ApiError(ErrorCode.IMAGE_EXISTS, f"image {name} was stored meanwhile by another request",
                                   field="name") from None
            finally:
                await asyncio.to_thread(staged.discard)
        finally:
            self._uploading.discard(name)
            self._reserved -= length
        log.info("image %s stored: %s, %d bytes, %s", name, img.format, img.size, img.checksum)
        return json_response(img.to_json([]), 201)

    async def _write(self, staged: Staged, data: bytearray) -> None:
        try:
            await asyncio.to_thread(staged.write, bytes(data))
        except OSError as exc:  # the disk is full, say: not the client's fault, nothing kept
            raise _unavailable(RepositoryUnavailable(f"cannot write the upload: {exc.strerror or exc}")) from exc

    async def _receive(self, request: web.Request, staged: Staged, length: int) -> None:
        """The body into ``staged``, under the upload deadlines; 408 when too slow, 400 when
        cut short."""
        loop = asyncio.get_running_loop()
        idle = self.b.settings.node.http_body_timeout
        idle = idle if idle > 0 else 60.0
        deadline = loop.time() + idle + length / self.settings.min_upload_rate
        received = 0
        buffer = bytearray()
        while received < length:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(request.content.readany(), min(idle, left))
            except TimeoutError:
                raise ApiError(ErrorCode.REQUEST_TIMEOUT,
                               f"the upload came too slowly: {received} of {length} bytes received in time "
                               f"(at least [images] min_upload_rate = {self.settings.min_upload_rate} bytes/s, "
                               f"and no pause longer than {idle:.0f}s)", field="body", status=408) from None
            if not chunk:
                break
            received += len(chunk)
            buffer += chunk
            if len(buffer) >= CHUNK:
                await self._write(staged, buffer)
                buffer.clear()
        if buffer:
            await self._write(staged, buffer)
        if received < length:
            raise bad_request(f"the body was cut short: {received} of {length} bytes", field="body",
                              code=ErrorCode.BODY_INCOMPLETE)


def _describe(app: web.Application) -> None:
    """This module's part of the OpenAPI document (snooze.openapi)."""
    component(app, "Image", obj({
        "id": string(), "name": string(), "format": string(), "capacity": integer(minimum=0), "allocation": integer(minimum=0),
        "backingStore": nullable(string()), "path": string(), "size": integer(minimum=0), "checksum": string(),
        "usedBy": nullable(array(string(), description="The VMs that use it (null: ZooKeeper could not say)")),
    }, required=("id", "format", "size", "checksum")))
    image = (Body(ref("Image")),)
    by_id = (Param("id", "path", ID, "The image's id"),)
    describe(app, "GET", "/images", Operation(
        "The images, sorted by id", answers={200: (Body(obj({"images": array(ref("Image"))}, required=("images",))),)},
        errors=(503,)))
    describe(app, "GET", "/images/{id}", Operation("One image", params=by_id, answers={200: image}, errors=(404, 503)))
    checksum = string(pattern=r"^sha256:[0-9a-fA-F]{64}$")
    describe(app, "GET", "/images/{id}/content", Operation(
        "The image's bytes, streamed", params=by_id,
        answers={200: (Body(string(contentMediaType="application/octet-stream"), "application/octet-stream",
                            headers={CHECKSUM_HEADER: (checksum, True), FORMAT_HEADER: (string(), True)}),)},
        errors=(404, 503)))
    describe(app, "DELETE", "/images/{id}", Operation(
        "Delete an image (409 while a VM that is not finished uses it)", params=by_id,
        answers={200: (Body(boolean(const=True)),)}, errors=(404, 409, 503)))
    describe(app, "PUT", "/images/{name}", Operation(
        "Upload an image (streamed; a Content-Length is needed)",
        "Refused before the body is read when it cannot be taken (`Expect: 100-continue` is answered only then).",
        request=(Body(string(contentMediaType="application/octet-stream"), "application/octet-stream"),),
        params=(Param("name", "path", ID, "The image's id"), Param("format", "query", string(enum=list(FORMATS)), "raw: a raw disk (else found from the bytes)"),
                Param(CHECKSUM_HEADER, "header", checksum, "The body's checksum: the upload is refused if it differs"),
                Param(FORMAT_HEADER, "header", string(enum=list(FORMATS)), "As ?format")),
        answers={201: image}, errors=(409, 411, 413, 503)))
