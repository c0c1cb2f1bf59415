"""The image files: one per image in ``[images] directory``, named by the image's id.

Beside them, in the same directory (so a link is atomic): ``.staging/`` holds uploads being
received and checked, ``.meta/ID.json`` each image's format, checksum and virtual size (so a
listing never reads a whole image), written right after the image appears (an image without
it, or whose size or mtime changed, has its facts computed from the file). Neither name is a valid
id, so neither is ever taken for an image. An image is put in place with ``link()``, which
fails when the name is taken: two uploads of one name never overwrite each other.

With ``[images] libvirt_uri`` the directory is a libvirt dir storage pool ``[images] pool``
(defined on the directory and started when missing): images are listed (capacity, allocation,
path) and deleted through libvirt's storage API, and the pool is refreshed after each upload.
The upload itself is still a file moved into the directory: libvirt has no atomic
no-overwrite upload. Everything here blocks: the API runs it on worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snooze.config import ImagesSettings
from snooze.ids import is_valid_id

from .inspect import FORMATS, QCOW2_MAGIC

log = logging.getLogger(__name__)

STAGING = ".staging"
META = ".meta"
CHUNK = 1024 * 1024


class RepositoryUnavailable(Exception):
    """The repository's directory or libvirt pool cannot be used now."""


class ImageExists(Exception):
    pass


@dataclass(frozen=True)
class Image:
    id: str
    format: str
    capacity: int
    allocation: int
    path: str
    size: int
    checksum: str
    backing: str | None = None

    def to_json(self, used_by: list[str] | None) -> dict[str, Any]:
        """The original's VirtualMachineImage fields, with ``id``, ``checksum`` and ``usedBy``
        (None when ZooKeeper could not say)."""
        return {"id": self.id, "name": self.id, "format": self.format, "capacity": self.capacity,
                "allocation": self.allocation, "backingStore": self.backing, "path": self.path, "size": self.size,
                "checksum": self.checksum, "usedBy": used_by}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class Staged:
    """An upload being received: a temporary file in ``.staging`` and its running checksum.
    ``discard()`` removes it (idempotent); ``commit`` in the store moves it in."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def finish(self) -> str:
        """Flush to disk; the checksum ``sha256:HEX``."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return "sha256:" + self.hash.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ImageStore:
    def __init__(self, settings: ImagesSettings) -> None:
        self.settings = settings
        self.directory = Path(settings.directory)
        self.staging = self.directory / STAGING
        self.meta = self.directory / META
        self.pool = LibvirtPool(settings.libvirt_uri, settings.pool, self.directory) if settings.libvirt_uri else None
        self._lock = threading.Lock()  # meta writes and commits

    # -- set-up ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Make the directories (and the pool); RepositoryUnavailable if that cannot be done."""
        try:
            for d in (self.directory, self.staging, self.meta):
                d.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryUnavailable(f"[images] directory {self.directory}: {exc.strerror or exc}") from exc
        if self.pool is not None:
            self.pool.ensure()
        # Uploads left half-received by a previous run.
        for leftover in self.staging.glob("upload-*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def stage(self) -> Staged:
        try:
            return Staged(self.staging)
        except FileNotFoundError:
            self.prepare()
            return Staged(self.staging)
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot stage an upload in {self.staging}: {exc.strerror or exc}") from exc

    def free_bytes(self) -> int:
        where = self.directory
        while not where.exists() and where != where.parent:
            where = where.parent  # made at the first upload, with its parents: their file system
        try:
            st = os.statvfs(where)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    # -- reading -----------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        assert is_valid_id(image_id)  # checked at the edge: a path segment never comes from elsewhere
        return self.directory / image_id

    def ids(self) -> list[str]:
        if self.pool is not None:
            return sorted(n for n in self.pool.volume_names() if is_valid_id(n))
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot list {self.directory}: {exc.strerror or exc}") from exc
        return sorted(e.name for e in entries if is_valid_id(e.name) and e.is_file(follow_symlinks=False))

    def list(self) -> list[Image]:
        out = []
        for image_id in self.ids():
            img = self.get(image_id)
            if img is not None:
                out.append(img)
        return out

    def get(self, image_id: str) -> Image | None:
        path = self.image_path(image_id)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not path.is_file() or path.is_symlink():
            return None
        meta = self._meta(image_id, path, st)
        capacity, allocation = meta["capacity"], st.st_blocks * 512
        if self.pool is not None:
            vol = self.pool.volume_info(image_id)
            if vol is None:
                return None
            capacity, allocation = vol
        return Image(id=image_id, format=meta["format"], capacity=capacity, allocation=allocation, path=str(path),
                     size=st.st_size, checksum=meta["checksum"])

    def _meta(self, image_id: str, path: Path, st: os.stat_result) -> dict[str, Any]:
        """The image's recorded facts, recomputed when missing or stale (a file put there by
        hand, or replaced behind our back): format by magic, checksum by reading it."""
        mpath = self.meta / f"{image_id}.json"
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(mpath.read_text())
            if (isinstance(meta, dict) and meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns
                    and meta.get("format") in FORMATS):
                return meta
        with path.open("rb") as f:
            fmt = "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"
            f.seek(24)
            head = f.read(8)
        capacity = int.from_bytes(head, "big") if fmt == "qcow2" and len(head) == 8 else st.st_size
        meta = {"format": fmt, "checksum": sha256_file(path), "capacity": capacity, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}
        with contextlib.suppress(OSError):
            self._write_meta(image_id, meta)
        return meta

    def _write_meta(self, image_id: str, meta: dict[str, Any]) -> None:
        self.meta.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{image_id}.", dir=self.meta)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, self.meta / f"{image_id}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def exists(self, image_id: str) -> bool:
        return os.path.lexists(self.image_path(image_id))

    @contextlib.contextmanager
    def open(self, image_id: str) -> Iterator[tuple[Any, Image]]:
        """The image's file opened for reading, with its facts as of the same file (an image
        deleted meanwhile stays readable through the open file); KeyError if there is none."""
        img = self.get(image_id)
        if img is None:
            raise KeyError(image_id)
        try:
            # O_NOFOLLOW: a symbolic link put in place of the image is not followed out of the store.
            f = os.fdopen(os.open(img.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
        except FileNotFoundError:
            raise KeyError(image_id) from None
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot read {img.path}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(f.fileno())
            if st.st_size != img.size:  # replaced between the two: read its facts again
                img = self.get(image_id)
                if img is None:
                    raise KeyError(image_id)
            yield f, img
        finally:
            f.close()

    # -- writing -----------------------------------------------------------------------
    def commit(self, staged: Staged, image_id: str, fmt: str, capacity: int, checksum: str) -> Image:
        """Move a checked upload in as ``image_id``: its facts first, then the file, linked
        (ImageExists when the name is taken meanwhile: nothing changes)."""
        final = self.image_path(image_id)
        with self._lock:
            try:
                if os.path.lexists(final):
                    raise ImageExists(image_id)
                os.chmod(staged.path, 0o644)
                st = os.stat(staged.path)
                try:
                    os.link(staged.path, final)
                except FileExistsError:
                    raise ImageExists(image_id) from None
                # After the link: a failed one must not touch another image's facts. A reader in
                # between computes the same facts from the file itself.
                self._write_meta(image_id, {"format": fmt, "checksum": checksum, "capacity": capacity,
                                            "size": st.st_size, "mtime_ns": st.st_mtime_ns})
            finally:
                staged.discard()
        if self.pool is not None:
            self.pool.refresh()
        img = self.get(image_id)
        if img is None:
            raise RepositoryUnavailable(f"image {image_id} vanished right after it was stored")
        return img

    def delete(self, image_id: str) -> bool:
        """Remove the image (False if there was none)."""
        path = self.image_path(image_id)
        with self._lock:
            if self.pool is not None:
                gone = self.pool.delete(image_id)
            else:
                try:
                    path.unlink()
                    gone = True
                except FileNotFoundError:
                    gone = False
                except OSError as exc:
                    raise RepositoryUnavailable(f"cannot remove {path}: {exc.strerror or exc}") from exc
            with contextlib.suppress(OSError):
                (self.meta / f"{image_id}.json").unlink()
        return gone

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class LibvirtPool:
    """A libvirt dir storage pool on the repository's directory (one connection, reopened when
    it breaks; calls serialised)."""

    def __init__(self, uri: str, name: str, directory: Path) -> None:
        self.uri = uri
        self.name = name
        self.directory = directory
        self._conn: Any = None
        self._lock = threading.RLock()
        self._ready = False  # ensure() has succeeded once (else it is tried again at each call)

    def _libvirt(self) -> Any:
        try:
            import libvirt
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise RepositoryUnavailable("[images] libvirt_uri is set but libvirt-python is not installed") from exc
        return libvirt

    def _pool(self) -> Any:
        libvirt = self._libvirt()
        with self._lock:
            try:
                if self._conn is None or not self._conn.isAlive():
                    self._conn = libvirt.open(self.uri)
                return self._conn.storagePoolLookupByName(self.name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise LookupError(self.name) from exc
                self._conn = None
                raise RepositoryUnavailable(f"libvirt {self.uri}: {exc.get_error_message()}") from exc

    def _call(self, what: str, fn: Any) -> Any:
        libvirt = self._libvirt()
        with self._lock:
            if not self._ready:
                self.ensure()  # libvirtd was not there at start: define the pool now
            try:
                try:
                    pool = self._pool()
                except LookupError:  # undefined behind our back (pool-undefine): define it again
                    self._ready = False
                    self.ensure()
                    pool = self._pool()
                if not pool.isActive():  # stopped behind our back (pool-destroy): start it again
                    pool.create(0)
                return fn(pool)
            except LookupError as exc:
                raise RepositoryUnavailable(f"libvirt {self.uri} has no storage pool {self.name!r}") from exc
            except libvirt.libvirtError as exc:
                raise RepositoryUnavailable(f"libvirt {self.uri}: {what}: {exc.get_error_message()}") from exc

    def ensure(self) -> None:
        """Define the pool on the directory and start it, unless it exists; an existing pool on
        another directory is refused."""
        libvirt = self._libvirt()
        with self._lock:
            try:
                try:
                    pool = self._pool()
                except LookupError:
                    xml = (f"<pool type='dir'><name>{self.name}</name>"
                           f"<target><path>{_xml_text(str(self.directory))}</path></target></pool>")
                    pool = self._conn.storagePoolDefineXML(xml, 0)
                    log.info("defined libvirt storage pool %s on %s at %s", self.name, self.directory, self.uri)
                    with contextlib.suppress(libvirt.libvirtError):
                        pool.setAutostart(1)
                path = _pool_path(pool.XMLDesc(0))
                if path is not None and os.path.realpath(path) != os.path.realpath(self.directory):
                    raise RepositoryUnavailable(f"libvirt storage pool {self.name!r} at {self.uri} is on {path}, "
                                                f"not on [images] directory {self.directory}: choose another [images] pool")
                if not pool.isActive():
                    pool.create(0)
                pool.refresh(0)
                self._ready = True
            except libvirt.libvirtError as exc:
                self._conn = None
                raise RepositoryUnavailable(f"libvirt {self.uri}: storage pool {self.name}: {exc.get_error_message()}") from exc

    def volume_names(self) -> list[str]:
        return list(self._call("list volumes", lambda p: [v.name() for v in p.listAllVolumes(0)]))

    def volume_info(self, name: str) -> tuple[int, int] | None:
        """(capacity, allocation) of the volume, None if the pool has none of that name."""
        libvirt = self._libvirt()

        def do(pool: Any) -> tuple[int, int] | None:
            try:
                _kind, capacity, allocation = pool.storageVolLookupByName(name).info()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise
            return int(capacity), int(allocation)

        result: tuple[int, int] | None = self._call(f"volume {name}", do)
        return result

    def refresh(self) -> None:
        self._call("refresh", lambda p: p.refresh(0))

    def delete(self, name: str) -> bool:
        libvirt = self._libvirt()

        def do(pool: Any) -> bool:
            try:
                vol = pool.storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            vol.delete(0)
            return True

        gone: bool = self._call(f"delete volume {name}", do)
        return gone

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def _pool_path(xml: str) -> str | None:
    import xml.etree.ElementTree as ET

    try:
        node = ET.fromstring(xml).find("./target/path")
    except ET.ParseError:
        return None
    return node.text if node is not None and node.text else None
