"""The one rule for names and ids that cross a process or become a ZooKeeper path segment.

VM names, task ids, group-manager and local-controller ids, image names: 1 to 63 characters,
ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a digit. So ``.``,
``..``, ``a/b``, ``"a\\n"`` (``$`` would let a trailing newline through: this module matches the
whole string) and lone surrogates are never valid, and a valid id is always a safe znode name,
file name and libvirt domain name. Check ids at the edge, before they reach ZooKeeper.
"""

from __future__ import annotations

import re
from typing import Any

MAX_ID_LENGTH = 63
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
ID_RULE = "1-63 ASCII letters, digits, '.', '_' or '-', starting with a letter or a digit"

__all__ = ["ID_RE", "ID_RULE", "MAX_ID_LENGTH", "InvalidId", "check_id", "is_valid_id"]


class InvalidId(ValueError):
    """An id that breaks the rule; ``field`` names where it came from."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def check_id(value: Any, field: str) -> str:
    """``value`` if it is a valid id, else InvalidId naming ``field`` (the value is shown escaped)."""
    if is_valid_id(value):
        return str(value)
    shown = ascii(value) if isinstance(value, str) else type(value).__name__
    if isinstance(shown, str) and len(shown) > 80:
        shown = shown[:77] + "..."
    raise InvalidId(f"{field}: {shown} is not a valid id ({ID_RULE})", field)
