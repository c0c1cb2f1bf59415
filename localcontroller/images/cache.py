"""The local controller's image cache: images of the repository fetched once, kept bounded.

An image is looked up in the repository (``GET /images/{id}``: its checksum and format) and
kept as ``ID.SHA256[:16].FORMAT`` in the cache directory: named by its content, so an image
deleted and uploaded again under the same name never replaces the backing file of a VM that
still runs on the old one. A missing one is downloaded (``GET /images/{id}/content``) to a
temporary file beside the cache, its SHA-256 checked against ``X-Snooze-Checksum``, then renamed
in atomically; concurrent starts of the same image share one download.

The cache is bounded (``image_cache_bytes``): after each fetch the least recently used images
are removed until it fits, never one in use (``in_use``: the backing files of the VMs' overlays
here, given by the caller, and any image being fetched or just handed out). Recently used =
the file's modification time, touched on each use, so the order survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from localcontroller.hypervisor.errors import HypervisorError
from snooze.codes import ErrorCode
from snooze.ids import is_valid_id

log = logging.getLogger(__name__)

__all__ = ["CachedImage", "ImageCache", "ImageNotFound", "RepositoryUnavailable", "InvalidImage"]

_CHECKSUM = re.compile(r"sha256:([0-9a-f]{64})")
_FORMATS = ("qcow2", "raw")
_CHUNK = 1 << 20


class ImageNotFound(HypervisorError):
    code = ErrorCode.IMAGE_NOT_FOUND


class RepositoryUnavailable(HypervisorError):
    code = ErrorCode.IMAGE_REPOSITORY_UNAVAILABLE


class InvalidImage(HypervisorError):
    """The repository sent something that is not the image it described (checksum, format)."""

    code = ErrorCode.IMAGE_CHECKSUM_MISMATCH


@dataclass(frozen=True)
class CachedImage:
    id: str
    path: Path
    format: str
    checksum: str
    size: int
    fetched: bool = False
    """Downloaded by this call (False: it was in the cache already)."""
    seconds: float = 0.0


def cache_name(image_id: str, checksum: str, fmt: str) -> str:
    return f"{image_id}.{checksum.removeprefix('sha256:')[:16]}.{fmt}"


class ImageCache:
    def __init__(self, directory: str | Path, capacity_bytes: int, repository: str, *,
                 in_use: Callable[[], Iterable[str]] = lambda: (), timeout: float = 600.0) -> None:
        self.directory = Path(directory)
        self.capacity = int(capacity_bytes)
        self.repository = repository.rstrip("/")
        self._in_use = in_use
        self._timeout = timeout
        self._fetching: dict[str, asyncio.Future[CachedImage]] = {}
        # Paths handed out and not yet released (a VM being started on it): never evicted.
        self._held: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None
        #: With the cluster's TLS: the authorities an https repository is checked against.
        self.tls: ssl.SSLContext | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout, sock_connect=5),
                                                  connector=aiohttp.TCPConnector(ssl=self.tls if self.tls is not None else True))
        return self._session

    # -- the repository ------------------------------------------------------------------
    async def describe(self, image_id: str) -> dict[str, Any]:
        """The repository's record of ``image_id``: ImageNotFound (404, or not an id),
        RepositoryUnavailable (unreachable, 5xx, unreadable answer)."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f"image {image_id!r} is not a valid image name")
        url = f"{self.repository}/images/{quote(image_id)}"
        try:
            async with self._http().get(url, timeout=aiohttp.ClientTimeout(total=15, sock_connect=5)) as resp:
                if resp.status == 404:
                    raise ImageNotFound(f"no image {image_id!r} in the repository {self.repository}")
                if resp.status != 200:
                    raise RepositoryUnavailable(f"the image repository {self.repository} answered {resp.status} for "
                                                f"{image_id!r}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RepositoryUnavailable(f"the image repository {self.repository} cannot be reached: "
                                        f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict) or not _CHECKSUM.fullmatch(str(body.get("checksum", ""))) or \
                body.get("format") not in _FORMATS:
            raise RepositoryUnavailable(f"the image repository {self.repository} described {image_id!r} "
                                        f"without a sha256 checksum and a format (qcow2 or raw)")
        return body

    # -- the cache -----------------------------------------------------------------------
    def path_for(self, image_id: str, checksum: str, fmt: str) -> Path:
        return self.directory / cache_name(image_id, checksum, fmt)

    async def acquire(self, image_id: str, wait: float | None = None) -> CachedImage:
        """The image in the cache (fetched if missing), held until ``release(path)``. With
        ``wait``: RepositoryUnavailable (temporary) if the fetch takes longer, which goes on in
        the background for the next start (a start order must answer before its sender gives up
        on it, else the VM would start unseen)."""
        meta = await self.describe(image_id)
        checksum, fmt = str(meta["checksum"]), str(meta["format"])
        path = self.path_for(image_id, checksum, fmt)
        key = str(path)
        self._held[key] = self._held.get(key, 0) + 1
        try:
            if path.is_file():
                os.utime(path)
                return CachedImage(image_id, path, fmt, checksum, path.stat().st_size)
            pending = self._fetching.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._fetch(image_id, path, checksum, fmt))
                self._fetching[key] = pending
                pending.add_done_callback(lambda f: self._fetched(key, f))
            try:
                image = await asyncio.wait_for(asyncio.shield(pending), wait)
            except TimeoutError:
                part = self.directory / f".{path.name}.{os.getpid()}.{id(self)}.part"
                done = part.stat().st_size if part.exists() else 0
                raise RepositoryUnavailable(
                    f"image {image_id!r} is still being fetched from {self.repository} ({done >> 20} MiB so far, "
                    f"{wait:g} s): try again shortly") from None
        except BaseException:
            self.release(path)
            raise
        self.evict()
        return image

    def _fetched(self, key: str, future: asyncio.Future[CachedImage]) -> None:
        self._fetching.pop(key, None)
        if not future.cancelled() and future.exception() is not None:
            log.info("fetching %s failed: %s", key, future.exception())

    def release(self, path: str | Path) -> None:
        key = str(path)
        n = self._held.get(key, 0) - 1
        if n > 0:
            self._held[key] = n
        else:
            self._held.pop(key, None)

    async def _fetch(self, image_id: str, path: Path, checksum: str, fmt: str) -> CachedImage:
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        url = f"{self.repository}/images/{quote(image_id)}/content"
        tmp = self.directory / f".{path.name}.{os.getpid()}.{id(self)}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            try:
                async with self._http().get(url) as resp:
                    if resp.status == 404:
                        raise ImageNotFound(f"no image {image_id!r} in the repository {self.repository}")
                    if resp.status != 200:
                        raise RepositoryUnavailable(f"the image repository {self.repository} answered {resp.status} "
                                                    f"for the content of {image_id!r}")
                    sent = resp.headers.get("X-Snooze-Checksum", "")
                    if sent != checksum:
                        # Replaced between the two requests (or a repository that lies): try later.
                        raise RepositoryUnavailable(f"image {image_id!r} changed in the repository while fetched "
                                                    f"({sent or 'no checksum'} instead of {checksum})")
                    out = await asyncio.to_thread(tmp.open, "wb")
                    try:
                        async for chunk in resp.content.iter_chunked(_CHUNK):
                            await asyncio.to_thread(out.write, chunk)
                            digest.update(chunk)
                            size += len(chunk)
                        await asyncio.to_thread(out.flush)
                        await asyncio.to_thread(os.fsync, out.fileno())
                    finally:
                        out.close()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RepositoryUnavailable(f"fetching {image_id!r} from {self.repository} failed: "
                                            f"{type(exc).__name__}: {exc}") from exc
            got = "sha256:" + digest.hexdigest()
            if got != checksum:
                raise InvalidImage(f"image {image_id!r} from {self.repository}: checksum {got}, expected {checksum}")
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        seconds = time.monotonic() - started
        log.info("fetched image %s (%d bytes) into %s in %.2f s", image_id, size, path, seconds)
        return CachedImage(image_id, path, fmt, checksum, size, fetched=True, seconds=seconds)

    def entries(self) -> list[Path]:
        """The cached images, least recently used first."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self) -> list[Path]:
        """Remove least recently used images not in use until the cache fits its bound."""
        entries = self.entries()
        total = sum(p.stat().st_size for p in entries)
        if total <= self.capacity:
            return []
        busy = {os.path.realpath(p) for p in self._in_use()} | {os.path.realpath(p) for p in self._held} | \
            {os.path.realpath(p) for p in self._fetching}
        removed = []
        for p in entries:
            if total <= self.capacity:
                break
            if os.path.realpath(p) in busy:
                continue
            size = p.stat().st_size
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
                total -= size
                log.info("image cache: removed %s (least recently used, %d bytes)", p.name, size)
        return removed
