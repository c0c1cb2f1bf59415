"""The ``snooze token`` verbs (snooze.auth): ``token create --user U [--role admin|user]
[--name N] [--network ID ...]``, ``token list``, ``token revoke ID``.

Through the bootstrap's ``/tokens`` with an admin's token (``--token``, ``SNOOZE_TOKEN``, or a
local cluster's ``adminToken``); or, with ``--zookeeper HOST:PORT`` (and ``--zk-root``), straight
in ZooKeeper: how a deployment makes its first admin token, from a machine that reaches
ZooKeeper. ``create`` prints the token once: it is kept only hashed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from snooze.cli.errors import CliError, reports_errors
from snooze.cli.output import HelpFormatter, table
from snooze.cli.target import add_target_options, client
from snooze.codes import ErrorCode

__all__ = ["register"]

T = TypeVar("T")


def _in_zookeeper(args: argparse.Namespace, fn: Callable[[Any], Awaitable[T]]) -> T:
    from snooze.auth.tokens import TokenStore
    from snooze.coordination import CoordinationError, Coordinator

    async def run() -> T:
        coord = Coordinator(args.zookeeper, args.zk_root, session_timeout=10.0)
        try:
            await coord.start(wait=10)
            return await fn(TokenStore(coord))
        except CoordinationError as exc:
            raise CliError(f"ZooKeeper at {args.zookeeper}: {exc}", ErrorCode.ZOOKEEPER_UNAVAILABLE) from exc
        finally:
            await coord.stop()

    return asyncio.run(run())


def cmd_create(args: argparse.Namespace) -> int:
    if args.zookeeper:
        async def make(store: Any) -> dict[str, Any]:
            rec, token = await store.create(args.user, args.role, args.name, args.network)
            return {**rec.public(), "token": token}

        try:
            made = _in_zookeeper(args, make)
        except ValueError as exc:
            raise CliError(str(exc), ErrorCode.BAD_REQUEST) from exc
    else:
        with client(args) as api:
            made = api.create_token(args.user, args.role, args.name, args.network)
    print(json.dumps(made, indent=2) if args.json else made["token"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.zookeeper:
        async def read(store: Any) -> list[dict[str, Any]]:
            return [t.public() for t in await store.list()]

        tokens = _in_zookeeper(args, read)
    else:
        with client(args) as api:
            tokens = api.list_tokens()
    if args.json:
        print(json.dumps({"tokens": tokens}, indent=2))
    else:
        rows = [("ID", "USER", "ROLE", "NAME", "NETWORKS")] + [
            (str(t["id"]), str(t["user"]), str(t["role"]), str(t.get("name", "")), ",".join(t.get("networks") or []))
            for t in tokens]
        print(table(rows))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.zookeeper:
        async def revoke(store: Any) -> bool:
            return bool(await store.revoke(args.id))

        if not _in_zookeeper(args, revoke):
            raise CliError(f"no token {args.id!r}", ErrorCode.TOKEN_NOT_FOUND)
    else:
        with client(args) as api:
            api.revoke_token(args.id)
    print(f"{args.id}: revoked")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token`` (create, list, revoke) to the ``snooze`` command's subparsers."""
    top = subparsers.add_parser("token", help="make, list and revoke API tokens", formatter_class=HelpFormatter)
    verbs = top.add_subparsers(dest="token_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_target_options(p, top_level=False)
        p.add_argument("--zookeeper", metavar="HOST:PORT", default="",
                       help="work in this ZooKeeper directly instead of through the bootstrap (the first admin token)")
        p.add_argument("--zk-root", default="/snooze", help="the cluster's root in ZooKeeper (default /snooze)")
        p.add_argument("--json", action="store_true", help="print the answer as JSON")

    create = verbs.add_parser("create", help="make a token and print it (shown only once)", formatter_class=HelpFormatter)
    common(create)
    create.add_argument("--user", required=True, help="who the token is for (their VMs are theirs)")
    create.add_argument("--role", choices=("admin", "user"), default="user",
                        help="admin: everything; user: own VMs and a read only view of the hierarchy")
    create.add_argument("--name", default="", help="a note: what the token is for")
    create.add_argument("--network", action="append", default=[], metavar="ID",
                        help="a network a user's token may put VMs on and see, besides the default one (repeat for more)")
    create.set_defaults(func=reports_errors(cmd_create))
    ls = verbs.add_parser("list", help="list the tokens (never their secrets)")
    common(ls)
    ls.set_defaults(func=reports_errors(cmd_list))
    rm = verbs.add_parser("revoke", help="revoke a token: it stops working within a second")
    common(rm)
    rm.add_argument("id", help="the token's id (the 12 hex digits after snz_)")
    rm.set_defaults(func=reports_errors(cmd_revoke))
