"""What the benchmarks share: a keep-alive client for the bootstrap, free ports, polling, process
CPU/RSS, signal-safe clean-up, submitting a virtual cluster, table printing and the --json/--keep
options. Imported by the scripts next to it, which put the repository and bench/ on
``sys.path``. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from snooze.dev.localcluster import ClusterOptions, LocalCluster, _alive
from snooze.dev.ports import free_port_range

T = TypeVar("T")

HOST = "127.0.0.1"
MIB = 1024 * 1024
# Fast failure detection: heartbeat 0.5 s / timeout 2 s, ZooKeeper session timeout 2 s.
FAST_TIMING: dict[str, Any] = {"heartbeat_interval": 0.5, "heartbeat_timeout": 2.0, "session_timeout": 2.0,
                               "monitoring_interval": 0.5}


class BenchError(RuntimeError):
    """The cluster could not be driven (not a missed target)."""


# -- HTTP to the bootstrap (keep-alive) --------------------------------------------------------
class Bootstrap:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, verb: str, body: str | None = None, timeout: float | None = None) -> tuple[int, bytes]:
        """(status, raw body) of ``METHOD /bootstrap?verb``; retried once on a broken connection.
        ``timeout`` applies when a connection has to be opened."""
        last: Exception | None = None
        for _attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout or self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, f"/bootstrap?{verb}", body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                self.close()
        raise BenchError(f"{method} ?{verb} failed: {last!r}")

    def get_json(self, verb: str) -> Any | None:
        """JSON of ``GET /bootstrap?verb``; None on any error or non-200 answer."""
        try:
            status, raw = self.call("GET", verb)
        except BenchError:
            return None
        if status != 200:
            return None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def leader(self) -> dict[str, Any] | None:
        return self.get_json("getGroupLeaderDescription")

    def hierarchy(self) -> dict[str, Any] | None:
        return self.get_json("getCompleteHierarchy")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


def hierarchy_lcs(h: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(group manager, local controller) descriptions of a ``getCompleteHierarchy`` answer."""
    for gm in h.get("groupManagerDescriptions", []):
        for lc in gm.get("localControllers", []) or []:
            yield gm, lc


# -- the local cluster -------------------------------------------------------------------------
def port_range(count: int, udp: bool = False) -> int:
    """A base port with ``count`` consecutive free ports on 127.0.0.1 (TCP, and UDP too if
    ``udp``), below the ephemeral range."""
    try:
        return free_port_range(count, udp=udp, address=HOST)
    except (RuntimeError, ValueError) as exc:
        raise BenchError(str(exc)) from exc


def public_options(opts: ClusterOptions) -> dict[str, Any]:
    """The cluster options for the JSON results (without the key)."""
    return {k: v for k, v in opts.__dict__.items() if k != "key"}


def role_ids(c: LocalCluster, role: str) -> list[str]:
    return [p["id"] for p in c.processes if p["role"] == role]


def check_running(c: LocalCluster) -> None:
    """BenchError if a process of the cluster has died."""
    for spec in c.processes:
        if not _alive(spec.get("pid")):
            raise BenchError(f"{spec['id']} is not running; see {spec['log']}")


def wait_ready(c: LocalCluster, bs: Bootstrap, timeout: float = 60.0) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Until a leader is known and every LC is assigned to a group manager.
    Returns (leader, hierarchy, seconds)."""
    t0 = time.monotonic()
    want = set(role_ids(c, "localcontroller"))
    why = "no answer"
    while time.monotonic() - t0 < timeout:
        check_running(c)
        gl = bs.leader()
        h = bs.hierarchy() if gl else None
        if gl and h:
            assigned = {lc["id"] for _gm, lc in hierarchy_lcs(h)}
            if assigned >= want:
                return gl, h, time.monotonic() - t0
            why = f"LCs assigned: {sorted(assigned)}"
        time.sleep(0.1)
    raise BenchError(f"the hierarchy did not form within {timeout:.0f}s ({why}); logs in {c.state_dir / 'logs'}")


def usage(pid: int, children: bool = True) -> tuple[float, float] | None:
    """(user+system CPU seconds, RSS MiB) of ``pid`` and (if ``children``) its descendants;
    None if the process is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        cpu, rss = t.user + t.system, float(proc.memory_info().rss)
        for child in proc.children(recursive=True) if children else []:
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                cpu += t.user + t.system
                rss += child.memory_info().rss
    except psutil.Error:
        return None
    return cpu, rss / MIB


def log_time(line: str) -> float | None:
    """The wall-clock time a process log line starts with (``2024-01-31 12:00:00,123``), or None."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


# -- waiting -----------------------------------------------------------------------------------
def poll(fn: Callable[[], T | None], timeout: float, interval: float = 0.1, *, since: float | None = None) -> T | None:
    """``fn()`` every ``interval`` seconds until it returns something truthy, which is returned;
    None once ``timeout`` seconds have passed since ``since`` (a ``time.monotonic()``; default now)."""
    deadline = (time.monotonic() if since is None else since) + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    return None


def wait_until(what: str, timeout: float, fn: Callable[[], T | None], interval: float = 0.1) -> T:
    """Like :func:`poll`, riding over HTTP errors, but BenchError on timeout."""
    last: list[Exception] = []

    def attempt() -> T | None:
        try:
            return fn()
        except (OSError, http.client.HTTPException) as exc:
            last[:] = [exc]
            return None

    value = poll(attempt, timeout, interval)
    if value is None:
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last[0]!r})" if last else ""))
    return value


# -- virtual clusters --------------------------------------------------------------------------
def start_virtual_cluster(bs: Bootstrap, templates: list[dict[str, Any]], timeout: float, *, interval: float = 0.05,
                          start_timeout: float = 30.0, strict: bool = True) -> dict[str, Any]:
    """``?startVirtualCluster``, then ``?getVirtualClusterResponse`` every ``interval`` until it
    answers or ``timeout`` has passed. ``strict``: BenchError on a non-200 or non-JSON answer
    while polling (else keep polling). Returns the task id, ``startedAt``/``finishedAt`` (wall
    clock), ``taskSeconds``, ``responseSeconds`` (None on timeout), ``seconds`` (until the
    return), ``polls`` and the ``response``."""
    body = json.dumps({"virtualMachineTemplates": templates})
    started_at = time.time()
    t0 = time.monotonic()
    status, raw = bs.call("POST", "startVirtualCluster", body, timeout=start_timeout)
    t_task = time.monotonic() - t0
    if status != 200:
        raise BenchError(f"startVirtualCluster answered {status}: {raw[:300]!r}")
    # The original answers the bare task id (text); accept a JSON string as well.
    text = raw.decode("utf-8", "replace").strip()
    try:
        task = json.loads(text)
    except ValueError:
        task = text
    if strict and (not isinstance(task, str) or not task):
        raise BenchError(f"startVirtualCluster answered no task id: {raw[:300]!r}")
    polls = 0
    resp: dict[str, Any] | None = None
    t_done: float | None = None
    while time.monotonic() - t0 < timeout:
        time.sleep(interval)
        polls += 1
        try:
            status, raw = bs.call("POST", "getVirtualClusterResponse", task)
        except BenchError:
            continue  # e.g. the bootstrap was busy; try again
        if status == 200 and raw.strip():
            try:
                resp = json.loads(raw)
            except ValueError as exc:
                if strict:
                    raise BenchError(f"getVirtualClusterResponse answered no JSON: {raw[:300]!r}") from exc
            if resp:
                t_done = time.monotonic() - t0
                break
        elif status != 200 and strict:
            raise BenchError(f"getVirtualClusterResponse answered {status}: {raw[:300]!r}")
    return {"task": task, "startedAt": started_at, "taskSeconds": t_task, "responseSeconds": t_done,
            "polls": polls, "response": resp, "seconds": time.monotonic() - t0, "finishedAt": time.time()}


def vm_metadata(r: dict[str, Any]) -> list[Any]:
    """``virtualMachineMetaData`` of a :func:`start_virtual_cluster` result ([] without a response)."""
    return (r.get("response") or {}).get("virtualMachineMetaData") or []


def warm_up(bs: Bootstrap, template: Callable[[int], dict[str, Any]], within: float, pause: float,
            strict: bool = True) -> tuple[int, dict[str, Any]]:
    """Submit one VM (``template(attempt)``) until it runs: the leader needs a first summary from
    its group manager. Returns (attempts, the last submission)."""
    deadline = time.monotonic() + within
    attempt = 0
    while True:
        attempt += 1
        r = start_virtual_cluster(bs, [template(attempt)], 30, strict=strict)
        meta = vm_metadata(r)
        if meta and meta[0].get("status") == "RUNNING":
            return attempt, r
        if time.monotonic() > deadline:
            raise BenchError(f"the warm-up VM never ran: {meta}")
        time.sleep(pause)


# -- signals and clean-up ----------------------------------------------------------------------
def _interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def interruptible() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt (SIGINT even if started with SIGINT ignored)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def uninterruptible() -> None:
    """Ignore SIGINT and SIGTERM: Ctrl-C during the clean-up must not leave processes behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_cluster(c: LocalCluster) -> None:
    """``LocalCluster.down()`` with SIGINT and SIGTERM ignored, then :func:`interruptible` again."""
    uninterruptible()
    try:
        c.down()
    finally:
        interruptible()


def remove_state_dir(state_dir: Path, remove: bool, prefix: str = "", suffix: str = "") -> None:
    """Remove the state dir, or say on stderr where it was kept."""
    if remove:
        shutil.rmtree(state_dir, ignore_errors=True)
    else:
        print(f"{prefix}state dir (configs, logs) kept in {state_dir}{suffix}", file=sys.stderr)


# -- options and output ------------------------------------------------------------------------
def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The scripts' parser: described by the first paragraph of their docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_options(ap: argparse.ArgumentParser, state: str = "the state dir") -> None:
    """--json [FILE] and --keep."""
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also dump machine-readable results (to FILE, or to stdout after the table)")
    ap.add_argument("--keep", action="store_true", help=f"keep {state} (configs, logs) afterwards")


def write_json(results: dict[str, Any], dest: str | None, default: Callable[[Any], Any] | None = None) -> None:
    """--json: after the table on stdout (``-``), or to a file."""
    if dest == "-":
        print("\n" + json.dumps(results, indent=2, default=default))
    elif dest:
        Path(dest).write_text(json.dumps(results, indent=2, default=default) + "\n")
        print(f"\nJSON results written to {dest}")


def logger(verbose: bool) -> Callable[[str], None]:
    """--verbose: a function that prints its message on stderr, or does nothing."""

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    return log


def fmt_s(v: float | None, places: int = 2, missing: str = "-") -> str:
    """Seconds, or ``missing``."""
    return missing if v is None else f"{v:.{places}f}s"


def table(heads: Sequence[str], rows: Sequence[Sequence[str]], out: Any = sys.stdout, align: str | None = None) -> None:
    """Heads, a rule and the rows, in columns two spaces apart. ``align``: one ``<`` or ``>`` per
    column (default: the first left, the others right)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
    align = align or "<" + ">" * (len(heads) - 1)
    line = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths, strict=True))
    print(line.format(*heads).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line.format(*r).rstrip(), file=out)
