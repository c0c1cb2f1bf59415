"""Bearer tokens of the public API, kept hashed in ZooKeeper (``auth/tokens/<id>``).

A token is ``snz_<id>_<secret>``: ``id`` (12 hex digits) names its znode, ``secret`` (43
URL-safe characters, 256 bits) is shown once when the token is made and stored only as its
SHA-256 (a random 256-bit secret needs no slow hash: nothing can be guessed from it). A token
has a ``user`` and a ``role`` (``admin``: everything; ``user``: their own VMs, read-only
hierarchy, and the networks granted to the token, ``networks``, besides the default one).
Revoking deletes the znode: every process holding the tokens in memory follows the
children watch, so a revoked token stops working within the watch's delay (milliseconds).

Checking a token reads no ZooKeeper on the request path: the tokens are mirrored in memory,
and a token whose id is not known yet (made a moment ago, its watch not yet fired) is read once,
at most once a second per id, so garbage ids cannot make ZooKeeper work for every request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from snooze.coordination import CoordinationError, Coordinator
from snooze.ids import InvalidId, check_id
from snooze.network.model import DEFAULT_NETWORK

__all__ = ["Principal", "Role", "TokenRecord", "TokenStore", "make_token", "parse_token"]

log = logging.getLogger(__name__)

PREFIX = "snz"
_TOKEN = re.compile(r"snz_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: How often an unknown token id may be looked up in ZooKeeper.
MISS_INTERVAL = 1.0


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    user: str
    role: Role
    token_id: str = ""
    #: The networks of the network model a user's token may put VMs on and see (an admin's: all).
    networks: frozenset[str] = frozenset()

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_use_network(self, network_id: str) -> bool:
        """An admin may use every network, a user the default one and those granted to the token."""
        return self.admin or network_id == DEFAULT_NETWORK or network_id in self.networks


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user: str
    role: Role
    digest: str  # hex SHA-256 of the secret
    name: str = ""
    created: float = 0.0
    networks: tuple[str, ...] = ()  # granted to a user's token (Principal.networks)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "role": str(self.role), "sha256": self.digest, "name": self.name,
                "created": self.created, "networks": list(self.networks)}

    @classmethod
    def from_json(cls, d: Any) -> TokenRecord:
        return cls(str(d["id"]), str(d["user"]), Role(d["role"]), str(d["sha256"]), str(d.get("name", "")),
                   float(d.get("created", 0.0)), tuple(str(n) for n in d.get("networks") or ()))

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.digest, _digest(secret))

    def principal(self) -> Principal:
        return Principal(self.user, self.role, self.id, frozenset(self.networks))

    def public(self) -> dict[str, Any]:
        """What ``token list`` shows: never the digest."""
        return {"id": self.id, "user": self.user, "role": str(self.role), "name": self.name, "created": self.created,
                "networks": list(self.networks)}


def check_user(user: object) -> str:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise ValueError(f"user {user!r}: 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
    return user


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_networks(networks: object) -> tuple[str, ...]:
    """Network ids to grant (snooze.ids), each once, at most 1,000; ValueError naming the bad one."""
    if not isinstance(networks, (list, tuple)) or len(networks) > 1000:
        raise ValueError("networks must be a list of at most 1000 network ids")
    out: list[str] = []
    for n in networks:
        try:
            out.append(check_id(n, "networks"))
        except InvalidId as exc:
            raise ValueError(str(exc)) from None
    return tuple(dict.fromkeys(out))


def make_token(user: str, role: Role | str, name: str = "", networks: tuple[str, ...] | list[str] = ()) -> tuple[TokenRecord, str]:
    """A new token: its record (to store) and the token string (to show once)."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    rec = TokenRecord(token_id, check_user(user), Role(role), _digest(secret), name[:200], time.time(),
                      check_networks(list(networks)))
    return rec, f"{PREFIX}_{token_id}_{secret}"


def seed_record(value: str) -> TokenRecord:
    """The admin token ``[auth] seed_admin_token`` names: ``ID:SHA256`` (the token's id and the
    hex SHA-256 of its secret, as ``seed_value`` gives them). ValueError if malformed."""
    token_id, _, digest = value.strip().partition(":")
    if not re.fullmatch(r"[0-9a-f]{12}", token_id) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("[auth] seed_admin_token must be ID:SHA256 (12 and 64 hex digits)")
    return TokenRecord(token_id, "admin", Role.ADMIN, digest, "seed_admin_token", 0.0)


def seed_value(rec: TokenRecord) -> str:
    return f"{rec.id}:{rec.digest}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    m = _TOKEN.fullmatch(token.strip())
    return (m.group(1), m.group(2)) if m else None


class TokenStore:
    """The tokens of one cluster: made, listed and revoked in ZooKeeper; checked from memory."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.dir = coord.path("auth", "tokens")
        self.tokens: dict[str, TokenRecord] = {}
        #: Whether the tokens were read at least once (until then a check cannot say no).
        self.loaded = False
        self._misses: dict[str, float] = {}
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the mirror ------------------------------------------------------------------------
    async def watch(self) -> None:
        """Mirror the tokens: now and after every change of the set (made, revoked)."""
        await self.coord.watch_children(self.dir, self._changed)

    def _changed(self, names: list[str]) -> None:
        self._generation += 1
        generation = self._generation
        known = {n: r for n, r in self.tokens.items() if n in names}
        self.tokens = known  # a revoked token is gone at once, before any read
        missing = [n for n in names if n not in known]

        async def load() -> None:
            try:
                got = await self.coord.children_json(self.dir) if missing else {}
            except CoordinationError as exc:
                log.warning("cannot read the tokens: %s", exc)
                return
            if generation != self._generation:
                return  # a newer change reads them again
            for name, value in got.items():
                try:
                    self.tokens[name] = TokenRecord.from_json(value)
                except (KeyError, TypeError, ValueError):
                    log.warning("token %s: unreadable record, ignored", name)
            self.loaded = True

        if missing:
            task = asyncio.get_running_loop().create_task(load(), name="auth.tokens.load")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.loaded = True

    async def _read_one(self, token_id: str) -> TokenRecord | None:
        now = time.monotonic()
        if now - self._misses.get(token_id, -MISS_INTERVAL) < MISS_INTERVAL:
            return None
        if len(self._misses) > 10000:
            self._misses.clear()
        self._misses[token_id] = now
        value = await self.coord.get_json(f"{self.dir}/{token_id}")
        if value is None:
            return None
        rec = TokenRecord.from_json(value)
        self.tokens[token_id] = rec
        return rec

    async def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token, else None. CoordinationError when the
        tokens could never be read (the caller answers 503, not 401)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        rec = self.tokens.get(token_id)
        if rec is None:
            if not self.loaded and not self.coord.connected:
                raise CoordinationError("the tokens cannot be read: ZooKeeper is not connected")
            try:
                rec = await self._read_one(token_id)
            except (KeyError, TypeError, ValueError):
                return None
            if rec is None:
                return None
        return rec.principal() if rec.matches(secret) else None

    # -- management ------------------------------------------------------------------------
    async def create(self, user: str, role: Role | str, name: str = "", networks: tuple[str, ...] | list[str] = ()
                     ) -> tuple[TokenRecord, str]:
        rec, token = make_token(user, role, name, networks)

        def write() -> None:
            self.coord.client.ensure_path(self.dir)
            self.coord.client.create(f"{self.dir}/{rec.id}", _json(rec.to_json()))

        await self.coord.call(write)
        self.tokens[rec.id] = rec
        return rec, token

    async def ensure(self, rec: TokenRecord) -> bool:
        """Create ``rec`` unless a token of its id exists; True if it was created."""

        def write() -> bool:
            self.coord.client.ensure_path(self.dir)
            try:
                self.coord.client.create(f"{self.dir}/{rec.id}", _json(rec.to_json()))
            except NodeExistsError:
                return False
            return True

        return await self.coord.call(write)

    async def list(self) -> list[TokenRecord]:
        out = []
        for value in (await self.coord.children_json(self.dir)).values():
            try:
                out.append(TokenRecord.from_json(value))
            except (KeyError, TypeError, ValueError):
                continue
        return sorted(out, key=lambda r: (r.created, r.id))

    async def revoke(self, token_id: str) -> bool:
        """Delete the token; False if there was none of that id."""
        if not re.fullmatch(r"[0-9a-f]{12}", token_id):
            return False

        def delete() -> bool:
            try:
                self.coord.client.delete(f"{self.dir}/{token_id}")
            except NoNodeError:
                return False
            return True

        done = await self.coord.call(delete)
        self.tokens.pop(token_id, None)
        return done


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
