"""``snooze cluster rotate-key``: a running local cluster's HMAC key replaced, without a restart
and without a message refused.

Three phases, each written into every process's config file (mode 0600) and taken by every
process on SIGHUP (``Service.reload``); the next phase starts only once every running process
shows, on its ``GET /health``, the fingerprints this one asks for:

1. every process also accepts the new key (each still signs with the key it had);
2. every process signs with the new key (and still accepts the old one, so a message sent just
   before its sender's reload is not refused);
3. every process forgets the old key.

Between two phases the cluster is in a state where every message sent is accepted everywhere,
so a rotation that stops half-way (a process that does not confirm: the error names it)
leaves a working cluster; running the command again finishes the job with a newer key (every
key still accepted anywhere is carried to phase 2, and dropped in phase 3).

A process that is not running is not signalled; its config has the phase's keys, which it
takes when it starts. A process of several local controllers (``--lcs-per-process``) is
signalled once, and each of its controllers reads its own config.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from snooze import config as cfg
from snooze.dev import netns
from snooze.procs import running
from snooze.protocol import fingerprint

__all__ = ["RotationError", "rotate_key"]

#: The ``-m MODULE`` of a role's process (what is signalled, not a wrapper such as the BMC's).
ROLE_MODULES = ("bootstrap", "groupmanager", "localcontroller", "localcontroller.many")


class RotationError(RuntimeError):
    pass


@dataclass
class _Process:
    spec: dict[str, Any]
    settings: cfg.Settings

    @property
    def name(self) -> str:
        return str(self.spec["id"])

    @property
    def config(self) -> Path:
        return Path(self.spec["config"])


def rotate_key(state_dir: Path, *, new_key: str | None = None, timeout: float = 30.0,
               say: Callable[[str], None] = print) -> str:
    """Rotate the key of the local cluster in ``state_dir`` (the three phases above); returns the
    new key. RotationError names what did not confirm a phase, or why it cannot start."""
    manifest_path = state_dir / "cluster.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise RotationError(f"no running cluster in {state_dir}: cannot read {manifest_path}: {exc}") from exc
    processes: list[_Process] = []
    for spec in manifest.get("processes", []):
        try:
            processes.append(_Process(spec, cfg.load(spec["config"], spec["role"])))
        except (cfg.ConfigError, KeyError) as exc:
            raise RotationError(f"{spec.get('id')}: {exc}") from exc
    if not processes:
        raise RotationError(f"{manifest_path} records no process")
    ca = manifest.get("caCert")
    context = ssl.create_default_context(cafile=ca) if ca else None
    new = new_key or secrets.token_hex(32)
    # Every key some process signs with or accepts now (a rotation stopped half-way leaves two).
    held = list(dict.fromkeys(k for p in processes for k in (p.settings.cluster.key, *p.settings.cluster.accept_keys)))
    if new in held:
        raise RotationError("the new key is one the cluster already holds")
    say(f"rotating the cluster key of {state_dir}: {', '.join(map(_fp, held))} -> {_fp(new)}")
    phases: list[tuple[str, Callable[[cfg.ClusterSettings], tuple[str, list[str]]]]] = [
        ("every process accepts the new key", lambda c: (c.key, [k for k in [*held, new] if k != c.key])),
        ("every process signs with the new key", lambda _c: (new, held)),
        ("every process forgets the old key", lambda _c: (new, [])),
    ]
    for number, (what, keys) in enumerate(phases, 1):
        t0 = time.monotonic()
        want: dict[str, dict[str, Any]] = {}
        for p in processes:
            key, accept = keys(p.settings.cluster)
            p.settings.cluster.key, p.settings.cluster.accept_keys = key, accept
            _write_config(p)
            want[p.name] = {"signing": _fp(key), "accepted": [_fp(k) for k in dict.fromkeys([key, *accept])]}
        skipped = _signal(processes, context)
        _wait(processes, want, context, timeout, skipped, f"phase {number} ({what})")
        note = f" (not running, its config updated: {', '.join(sorted(skipped))})" if skipped else ""
        say(f"phase {number}/3: {what}: confirmed in {time.monotonic() - t0:.1f}s{note}")
    return new


def _fp(key: str) -> str:
    return fingerprint(key.encode())


def _write_config(p: _Process) -> None:
    """The config, with the phase's keys, replaced at once and readable by its owner only."""
    tmp = p.config.with_name(p.config.name + ".rotating")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(cfg.render_toml(p.settings, p.spec["role"], comments=False))
    tmp.replace(p.config)


def _health(p: _Process, context: ssl.SSLContext | None) -> dict[str, Any] | None:
    """The process's ``GET /health`` answer (200 or 503), or None if it does not answer."""
    url = f"{'https' if context else 'http'}://{p.spec.get('address') or '127.0.0.1'}:{p.spec['port']}/health"

    def get() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=context) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:  # 503: waiting for ZooKeeper, still an answer
            body = exc.read()
        except (OSError, ValueError):
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # With --netns the process listens in its own namespace.
    return netns.call_in(p.spec["netns"], get) if p.spec.get("netns") else get()


def _role_pid(pid: int, config: str) -> int | None:
    """The process that runs the role with ``config``: ``pid`` itself, or a child of it (a local
    controller under a simulated BMC); None if there is none."""
    try:
        candidates = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return None
    for proc in candidates:
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        if len(argv) > 2 and argv[1] == "-m" and argv[2] in ROLE_MODULES and config in argv:
            return int(proc.pid)
    return None


def _signal(processes: list[_Process], context: ssl.SSLContext | None) -> set[str]:
    """SIGHUP to every running process (once per process of several controllers); returns the
    names of those not running. A process is signalled only once it answers /health: by then it
    has its SIGHUP handler (before it, SIGHUP would end it)."""
    skipped: set[str] = set()
    signalled: set[int] = set()
    for p in processes:
        pid = p.spec.get("pid")
        if not pid or not running(pid, str(p.config)) or _health(p, context) is None:
            skipped.add(p.name)
            continue
        target = _role_pid(int(pid), str(p.config))
        if target is None:
            skipped.add(p.name)
            continue
        if target not in signalled:
            os.kill(target, signal.SIGHUP)
            signalled.add(target)
    return skipped


def _wait(processes: list[_Process], want: dict[str, dict[str, Any]], context: ssl.SSLContext | None,
          timeout: float, skipped: set[str], phase: str) -> None:
    """Until every signalled process shows the keys of ``want`` on /health; RotationError after ``timeout``."""
    pending = {p.name: p for p in processes if p.name not in skipped}
    deadline = time.monotonic() + timeout
    shown: dict[str, Any] = {}
    while pending:
        for name, p in list(pending.items()):
            answer = _health(p, context)
            shown[name] = (answer or {}).get("keys")
            if shown[name] == want[name]:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            detail = "; ".join(f"{n}: shows {shown.get(n)}, expected {want[n]} (log: {pending[n].spec.get('log')})"
                               for n in sorted(pending))
            raise RotationError(f"{phase} not confirmed within {timeout:g}s by {detail}. The cluster works as it is; "
                                "run the rotation again once those processes answer")
        time.sleep(0.1)
