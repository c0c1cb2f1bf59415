"""The cluster keys one process holds: the key it signs with, and every key it accepts.

Outside a rotation a process signs with ``[cluster] key`` and accepts only it. During a
rotation (docs/deploy.md, "Rotating the cluster key") it also accepts ``[cluster] accept_keys``,
so that two keys are valid at once while the processes move from one to the other one by one.

A process's internal endpoint, heartbeat endpoint and RPC client hold the same ``Keyring``:
``replace`` (on SIGHUP, ``snooze.service``) changes all three at once. Keys are never logged or
shown; a key is named by its ``fingerprint``, the first 8 hex digits of its SHA-256, which
``GET /health`` and ``/metrics`` show so that an operator (and ``snooze cluster rotate-key``)
can tell which keys each process holds. Anyone can read those, so a key must be random (e.g.
``openssl rand -hex 32``), never a word a dictionary holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = ["Keyring", "as_keyring", "fingerprint"]


def fingerprint(key: bytes) -> str:
    """The first 8 hex digits of the key's SHA-256: names a key without revealing it
    (``printf %s KEY | sha256sum | cut -c1-8`` gives the same)."""
    return hashlib.sha256(key).hexdigest()[:8]


class Keyring:
    """The signing key and the accepted keys (the signing key first, then the others, each once)."""

    def __init__(self, signing: bytes, accepted: Iterable[bytes] = ()) -> None:
        self.signing = b""
        self.accepted: tuple[bytes, ...] = ()
        self._set(signing, accepted)

    def _set(self, signing: bytes, accepted: Iterable[bytes]) -> None:
        if not signing:
            raise ValueError("the signing key is empty")
        self.signing = bytes(signing)
        others = [bytes(k) for k in accepted if k and bytes(k) != self.signing]
        self.accepted = (self.signing, *dict.fromkeys(others))

    def replace(self, signing: bytes, accepted: Iterable[bytes] = ()) -> list[str]:
        """Take new keys; returns what changed, in words naming fingerprints only (empty: nothing)."""
        before_signing, before = fingerprint(self.signing), [fingerprint(k) for k in self.accepted]
        self._set(signing, accepted)
        after_signing, after = fingerprint(self.signing), [fingerprint(k) for k in self.accepted]
        changes: list[str] = []
        if after_signing != before_signing:
            changes.append(f"signing with key {after_signing} (was {before_signing})")
        if added := [k for k in after if k not in before]:
            changes.append(f"also accepting {', '.join(added)}")
        if dropped := [k for k in before if k not in after]:
            changes.append(f"no longer accepting {', '.join(dropped)}")
        return changes

    def describe(self) -> dict[str, Any]:
        """``{"signing": FINGERPRINT, "accepted": [FINGERPRINT, ...]}`` (the signing key's first)."""
        return {"signing": fingerprint(self.signing), "accepted": [fingerprint(k) for k in self.accepted]}

    def __repr__(self) -> str:
        return f"Keyring({self.describe()})"


def as_keyring(key: bytes | Keyring) -> Keyring:
    """A keyring of its own for one key, or the keyring given (shared, not copied)."""
    return key if isinstance(key, Keyring) else Keyring(key)
