"""Which cluster the ``snooze`` command talks to: one rule for every verb, from any directory.

In order, the first that is given wins:

1. ``--url URL`` (alias ``--bootstrap``): that bootstrap;
2. ``--state-dir DIR``: the local cluster whose ``DIR/cluster.json`` records it;
3. ``SNOOZE_URL``, then 4. ``SNOOZE_STATE_DIR``: the same, from the environment;
5. the local cluster this user started last (recorded by ``snooze cluster up`` in
   ``$XDG_STATE_HOME/snooze/last-cluster``, by default ``~/.local/state/snooze/last-cluster``);
   the command then says on stderr which cluster it guessed.

A bootstrap served over https (TLS) is checked against ``--ca FILE``, else ``SNOOZE_CA``, else
the ``caCert`` of the local cluster's ``cluster.json`` (``snooze cluster up --tls``), else the
system's authorities.

Nothing else: there is no silent default address, which once showed another user's cluster.
A local cluster that is named or guessed but no longer runs is an error that says so
(``NO_CLUSTER``), rather than a connection refused further on. ``snooze cluster up`` and
``cluster down`` choose their state dir by the same rule (``new_cluster_state_dir``,
``resolve_state_dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from snooze.cli.errors import CliError
from snooze.client.sync import SyncSnoozeClient
from snooze.codes import ErrorCode
from snooze.procs import running

__all__ = [
    "DEFAULT_STATE_DIR",
    "NO_CLUSTER",
    "Target",
    "add_target_options",
    "bootstrap_url",
    "ca_file",
    "client",
    "last_cluster_file",
    "new_cluster_state_dir",
    "record_last_cluster",
    "resolve",
    "resolve_state_dir",
    "token",
]

# Where ``snooze cluster up`` (and so ``./scripts/run``) keeps a cluster when not told otherwise.
DEFAULT_STATE_DIR = ".state/cluster"
NO_CLUSTER = ErrorCode.NO_CLUSTER

_HOW_TO_CHOOSE = ("give --url URL or --state-dir DIR (or set SNOOZE_URL / SNOOZE_STATE_DIR), "
                  "or start one with ./scripts/run")


@dataclass(frozen=True)
class Target:
    """The cluster chosen: its bootstrap URL, its state dir if it is local, and how it was chosen."""

    url: str
    state_dir: Path | None
    source: str  # "--url", "--state-dir", "SNOOZE_URL", "SNOOZE_STATE_DIR" or "last started"
    ca: str | None = None  # a local cluster's CA file (cluster.json caCert), when it runs TLS

    @property
    def guessed(self) -> bool:
        return self.source == "last started"

    def describe(self) -> str:
        where = f"the cluster in {self.state_dir} ({self.url})" if self.state_dir else self.url
        return f"using {where}, the one you started last; choose another with --state-dir or --url"


def add_target_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """``--state-dir`` and ``--url``, on the top-level parser and again on every subcommand.

    On subcommands the default is SUPPRESS, so a value given before the subcommand is not
    overwritten by the subcommand's default: both ``snooze --state-dir X vms`` and
    ``snooze vms --state-dir X`` work.
    """
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument("--state-dir", metavar="DIR", default=default,
                        help="the local cluster in DIR (its cluster.json); default: $SNOOZE_STATE_DIR, "
                             "else the cluster you started last")
    parser.add_argument("--url", "--bootstrap", dest="url", metavar="URL", default=default,
                        help="the bootstrap at URL, e.g. http://127.0.0.1:5000; default: $SNOOZE_URL")
    parser.add_argument("--token", metavar="TOKEN", default=default,
                        help="the API token to present (snooze token create); default: $SNOOZE_TOKEN, else "
                             "the adminToken of a local cluster started with --auth")
    parser.add_argument("--ca", metavar="FILE", default=default,
                        help="PEM file of the authorities an https bootstrap's certificate is checked against; "
                             "default: $SNOOZE_CA, else the caCert of a local cluster started with --tls, else "
                             "the system's")


def _state_home(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".local" / "state"


def last_cluster_file(env: Mapping[str, str] | None = None) -> Path:
    return _state_home(os.environ if env is None else env) / "snooze" / "last-cluster"


def record_last_cluster(state_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """Remember ``state_dir`` as the cluster this user started last (a private file)."""
    path = last_cluster_file(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(Path(state_dir).resolve()) + "\n")
    tmp.replace(path)
    return path


def _last_started(env: Mapping[str, str]) -> Path | None:
    try:
        text = last_cluster_file(env).read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def new_cluster_state_dir(state_dir: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """Where ``snooze cluster up`` puts a new cluster: ``--state-dir``, ``SNOOZE_STATE_DIR``, else
    ``.state/cluster`` under the current directory (``./scripts/run``: the clone's)."""
    env = os.environ if env is None else env
    return Path(state_dir or env.get("SNOOZE_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def resolve_state_dir(state_dir: str | os.PathLike[str] | None,
                      env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The local cluster's state dir and how it was chosen: ``--state-dir``, ``SNOOZE_STATE_DIR``,
    else the one started last. Raises NO_CLUSTER when there is none to choose."""
    env = os.environ if env is None else env
    if state_dir:
        return Path(state_dir).resolve(), "--state-dir"
    if env.get("SNOOZE_STATE_DIR"):
        return Path(env["SNOOZE_STATE_DIR"]).resolve(), "SNOOZE_STATE_DIR"
    last = _last_started(env)
    if last is not None:
        return last, "last started"
    raise CliError(f"no cluster to talk to: {_HOW_TO_CHOOSE}", NO_CLUSTER)


def _local_url(state_dir: Path, source: str) -> tuple[str, str | None]:
    """The bootstrap URL of the running local cluster in ``state_dir``, and its CA file (TLS)."""
    if source == "last started":
        what, hint = f"the cluster you started last, in {state_dir},", _HOW_TO_CHOOSE
    else:
        what, hint = f"no cluster: the one in {state_dir} ({source})", "start it with ./scripts/run or snooze cluster up"
    manifest = state_dir / "cluster.json"
    try:
        data = json.loads(manifest.read_text())
        url = str(data["bootstrapUrl"])
        ca = str(data["caCert"]) if data.get("caCert") else None
    except FileNotFoundError:
        raise CliError(f"{what} is not running (no cluster.json there); {hint}", NO_CLUSTER) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"cannot read {manifest}: {exc}", NO_CLUSTER) from exc
    bootstrap = next((p for p in data.get("processes", []) if isinstance(p, dict) and p.get("role") == "bootstrap"), None)
    if bootstrap is not None and not running(bootstrap.get("pid"), str(bootstrap.get("config", ""))):
        raise CliError(f"{what} is not running (its bootstrap is gone); {hint}", NO_CLUSTER)
    return url.rstrip("/"), ca


def resolve(url: str | None = None, state_dir: str | os.PathLike[str] | None = None,
            env: Mapping[str, str] | None = None) -> Target:
    """The cluster to talk to, by the rule in this module's docstring."""
    env = os.environ if env is None else env
    if url:
        return Target(url.rstrip("/"), None, "--url")
    if state_dir:
        path = Path(state_dir).resolve()
        url, ca = _local_url(path, "--state-dir")
        return Target(url, path, "--state-dir", ca)
    if env.get("SNOOZE_URL"):
        return Target(env["SNOOZE_URL"].rstrip("/"), None, "SNOOZE_URL")
    path, source = resolve_state_dir(None, env)
    url, ca = _local_url(path, source)
    return Target(url, path, source, ca)


def _target(args: argparse.Namespace) -> Target:
    # ``bootstrap``: the attribute of parsers built before --url (which still accepts --bootstrap).
    url = getattr(args, "url", None) or getattr(args, "bootstrap", None)
    target = resolve(url, getattr(args, "state_dir", None))
    if target.guessed:
        print(f"snooze: {target.describe()}", file=sys.stderr, flush=True)
    return target


def bootstrap_url(args: argparse.Namespace) -> str:
    """The bootstrap that the command's arguments choose, by this module's rule; says so on stderr
    if it was guessed."""
    return _target(args).url


def token(args: argparse.Namespace, target: Target | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The API token: ``--token``, ``SNOOZE_TOKEN``, else the ``adminToken`` of the local
    cluster chosen (one started with ``--auth``); None: no token."""
    env = os.environ if env is None else env
    given = getattr(args, "token", None) or env.get("SNOOZE_TOKEN")
    if given:
        return str(given)
    if target is not None and target.state_dir is not None:
        try:
            value = json.loads((target.state_dir / "cluster.json").read_text()).get("adminToken")
        except (OSError, ValueError, AttributeError):
            return None
        return str(value) if value else None
    return None


def ca_file(args: argparse.Namespace, target: Target | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The CA file an https bootstrap is checked against: ``--ca``, ``SNOOZE_CA``, else the
    ``caCert`` of the local cluster chosen; None: the system's authorities."""
    env = os.environ if env is None else env
    given = getattr(args, "ca", None) or env.get("SNOOZE_CA")
    if given:
        return str(given)
    return target.ca if target is not None else None


def client(args: argparse.Namespace) -> SyncSnoozeClient:
    """A client of the bootstrap that the command's arguments choose, with its token and CA file."""
    target = _target(args)
    return SyncSnoozeClient(target.url, timeout=getattr(args, "http_timeout", 30.0), token=token(args, target),
                            ca=ca_file(args, target))
