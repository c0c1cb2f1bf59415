"""The per-container record on the host: which container holds a port (Contrail's config file
under ``/var/lib/contrail/ports/vm``), the stale-delete guard's source of truth.

One JSON file per port, ``DIR/KEY.json``, written atomically (a temporary file renamed over
it); ``DIR/KEY.lock`` serialises the ADD, DEL and CHECK of one port (a late DEL of a replaced
container cannot interleave with the ADD of its successor). The agent replays these records
after a restart (``POST /sync``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localcontroller.cni.spec import IO_FAILURE, CniError

__all__ = ["RecordError", "Records"]

#: The fields every record has.
FIELDS = ("key", "containerId", "name", "ifname", "netns", "hostIfname", "network", "ip", "mac")


class RecordError(CniError):
    """A record that cannot be read or written (code 5): never taken for "no record"."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(IO_FAILURE, msg, details)


class Records:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RecordError(f"cannot lock the record of port {key} in {self.dir}", str(exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self, key: str) -> dict[str, Any] | None:
        """The record, None if there is none; RecordError if it exists but cannot be read or is
        not a record (the guard must not guess)."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError(f"cannot read the record of port {key}", str(exc)) from exc
        try:
            rec = json.loads(data)
        except ValueError as exc:
            raise RecordError(f"the record of port {key} is not JSON", str(exc)) from exc
        if not isinstance(rec, dict) or any(not isinstance(rec.get(f), str) for f in ("key", "containerId")):
            raise RecordError(f"the record of port {key} has no key or containerId")
        return rec

    def write(self, rec: dict[str, Any]) -> None:
        key = rec["key"]
        tmp = self.dir / f".{key}.json.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(rec, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise RecordError(f"cannot write the record of port {key}", str(exc)) from exc

    def remove(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise RecordError(f"cannot remove the record of port {key}", str(exc)) from exc

    def all(self) -> list[dict[str, Any]]:
        """Every readable record (unreadable ones skipped: the agent's sync purges their ports
        after its grace period)."""
        out = []
        try:
            names = sorted(p.name for p in self.dir.glob("*.json") if not p.name.startswith("."))
        except OSError:
            return []
        for name in names:
            with contextlib.suppress(RecordError):
                rec = self.read(name[: -len(".json")])
                if rec is not None:
                    out.append(rec)
        return out
