"""Instruments for partition tests on a ``--netns`` local cluster.

- ``Probe`` asks each process from inside its own network namespace (a thread pool living
  there), so a process whose link is cut is still seen: the cut-off leader's claim is exactly
  what must be caught. Before anything is sent, it checks that each namespace routes the
  process's address through a device of that namespace (never out of the machine).
- ``Sampler`` every 100 ms reads every group manager's ``?getGroupManagerDescription``
  (``isGroupLeader``, ``epoch``), the local controllers each one lists (the internal
  ``gm.describe``, which the leader's hierarchy is made of) and each local controller's own
  idea of its group manager; one ``Round`` per tick, with the links cut at its start.
- ``Submitter`` submits one small VM at a time through the bootstrap's forwarded URL and keeps
  every answer; ``placements`` reads every domain of every local controller (``lc.describe``).
- ``two_leader_rounds``, ``orphan_spells`` and ``leaderless`` turn rounds into the figures.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from snooze.codes import ErrorCode
from snooze.dev import netns
from snooze.dev.localcluster import LocalCluster
from snooze.http import INTERNAL_PATH, MSGPACK
from snooze.protocol import decode, encode, new_nonce

PROBE = "chaos-probe"
DESCRIBE = {"groupmanager": "getGroupManagerDescription", "localcontroller": "getLocalControllerDescription"}


class ProbeError(RuntimeError):
    pass


def _http(method: str, url: str, body: bytes | None, content_type: str, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class Probe:
    """Requests to the cluster's processes, each sent from inside the process's own namespace."""

    def __init__(self, cluster: LocalCluster, timeout: float = 0.5) -> None:
        self.cluster = cluster
        self.key = cluster.options.key.encode()
        self.timeout = timeout
        self.specs = {p["id"]: p for p in cluster.processes if p["role"] in DESCRIBE}
        self.epoch = 0
        self.pools: dict[str, netns.NamespaceExecutor] = {}
        for pid, spec in self.specs.items():
            device = netns.route_device(spec["netns"], spec["address"])
            # Its own address: delivered inside its own namespace (lo), never routed anywhere else.
            if device not in ("lo", "eth0"):
                raise ProbeError(f"{spec['netns']} routes {spec['address']} through {device}")
            self.pools[pid] = netns.NamespaceExecutor(spec["netns"], workers=3)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def url(self, pid: str) -> str:
        spec = self.specs[pid]
        return f"http://{spec['address']}:{spec['port']}"

    def describe(self, pid: str) -> Future[Any]:
        """The process's own HTTP description (a future; its result raises on no answer)."""
        role = self.specs[pid]["role"]
        url = f"{self.url(pid)}/{role}?{DESCRIBE[role]}"

        def call() -> Any:
            status, raw = _http("GET", url, None, "application/json", self.timeout)
            if status != 200:
                raise ProbeError(f"{url}: HTTP {status}")
            return json.loads(raw)

        return self.pools[pid].submit(call)

    def internal(self, pid: str, kind: str, timeout: float | None = None) -> Future[Any]:
        """An internal message with no fields (``gm.describe``, ``lc.describe``), signed with the
        cluster's key; the future's result is the reply's body."""
        url = self.url(pid) + INTERNAL_PATH

        def call() -> Any:
            nonce = new_nonce()
            data = encode(self.key, kind, PROBE, self.epoch, {}, nonce=nonce)
            status, raw = _http("POST", url, data, MSGPACK, timeout or self.timeout)
            env = decode(self.key, raw)
            if env.reply_to != nonce or env.kind == "error":
                raise ProbeError(f"{kind} to {pid}: HTTP {status}, {env.body!r}")
            return env.body

        return self.pools[pid].submit(call)


@dataclass
class Round:
    t: float  # time.monotonic() at the start of the round
    cut: frozenset[str]  # the links cut then
    claims: dict[str, tuple[bool, int] | None]  # group manager -> (isGroupLeader, epoch); None: no answer
    listed: dict[str, frozenset[str] | None]  # group manager -> the LCs it manages (the leader: none); None: no answer
    homes: dict[str, str | None]  # local controller -> its group manager, as it sees it; None: none or no answer

    def leaders(self) -> list[str]:
        return sorted(gm for gm, c in self.claims.items() if c is not None and c[0])

    def homed(self, lc: str) -> bool:
        """Listed by a group manager whose link is up (or, when that one did not say this round
        whom it manages, the LC names it as its own: a slow answer is not an orphan)."""
        for gm, lcs in self.listed.items():
            if gm in self.cut:
                continue
            if lcs is not None and lc in lcs:
                return True
            if lcs is None and self.homes.get(lc) == gm:
                return True
        return False


class Cuts:
    """The links cut right now (the sampler copies them at each round's start)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._cut: set[str] = set()
        self._lock = threading.Lock()

    def now(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._cut)

    def cut(self, pid: str) -> None:
        with self._lock:
            self.cluster.cut(pid)
            self._cut.add(pid)

    def heal(self, pid: str) -> None:
        with self._lock:
            self.cluster.heal(pid)
            self._cut.discard(pid)


class Sampler(threading.Thread):
    def __init__(self, probe: Probe, cuts: Cuts, period: float = 0.1) -> None:
        super().__init__(name="chaos-sampler", daemon=True)
        self.probe = probe
        self.cuts = cuts
        self.period = period
        self.gms = sorted(p for p, s in probe.specs.items() if s["role"] == "groupmanager")
        self.lcs = sorted(p for p, s in probe.specs.items() if s["role"] == "localcontroller")
        self.rounds: list[Round] = []
        self._halt = threading.Event()

    def sample(self) -> Round:
        t, cut = time.monotonic(), self.cuts.now()
        p = self.probe
        claims_f = {gm: p.describe(gm) for gm in self.gms}
        listed_f = {gm: p.internal(gm, "gm.describe") for gm in self.gms}
        homes_f = {lc: p.describe(lc) for lc in self.lcs}
        claims: dict[str, tuple[bool, int] | None] = {}
        for gm, f in claims_f.items():
            try:
                d = f.result(p.timeout + 1)
                epoch = int(d.get("epoch", 0))
                claims[gm] = (d.get("isGroupLeader") is True, epoch)
                p.epoch = max(p.epoch, epoch)
            except Exception:
                claims[gm] = None
        listed: dict[str, frozenset[str] | None] = {}
        for gm, f in listed_f.items():
            try:
                body = f.result(p.timeout + 1)
                listed[gm] = frozenset(lc["id"] for lc in body["groupManager"].get("localControllers") or [])
            except Exception:
                # The leader manages none (it refuses gm.describe); anyone else did not answer.
                claim = claims.get(gm)
                listed[gm] = frozenset() if claim is not None and claim[0] else None
        homes: dict[str, str | None] = {}
        for lc, f in homes_f.items():
            try:
                homes[lc] = f.result(p.timeout + 1).get("groupManagerId")
            except Exception:
                homes[lc] = None
        return Round(t, cut, claims, listed, homes)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            self.rounds.append(self.sample())
            next_at = max(next_at + self.period, time.monotonic())
            self._halt.wait(next_at - time.monotonic())

    def stop(self) -> list[Round]:
        self._halt.set()
        self.join(10)
        return self.rounds


# -- figures ---------------------------------------------------------------------------------
def two_leader_rounds(rounds: list[Round]) -> list[Round]:
    """Rounds in which more than one group manager presented itself as the leader."""
    return [r for r in rounds if len(r.leaders()) > 1]


def leaderless(rounds: list[Round]) -> float:
    """The longest time no group manager presented itself as the leader, in seconds."""
    longest, start = 0.0, None
    for r in rounds:
        if r.leaders():
            if start is not None:
                longest = max(longest, r.t - start)
            start = None
        elif start is None:
            start = r.t
    if start is not None and rounds:
        longest = max(longest, rounds[-1].t - start)
    return longest


@dataclass
class Spell:
    lc: str
    start: float
    end: float | None  # None: never re-homed while sampled

    @property
    def length(self) -> float:
        return (self.end if self.end is not None else float("inf")) - self.start


def orphan_spells(rounds: list[Round], lcs: list[str]) -> list[Spell]:
    """Every spell during which a local controller (its own link up) was listed under no group
    manager whose link was up; it starts at the first round that saw it so."""
    spells: list[Spell] = []
    for lc in lcs:
        start: float | None = None
        for r in rounds:
            if lc in r.cut:
                start = None  # a cut-off LC cannot be re-homed: counted again from the heal
                continue
            if r.homed(lc):
                if start is not None:
                    spells.append(Spell(lc, start, r.t))
                start = None
            elif start is None:
                start = r.t
        if start is not None:
            spells.append(Spell(lc, start, None))
    return spells


# -- submissions -----------------------------------------------------------------------------
@dataclass
class Submission:
    name: str
    t: float
    status: int = 0  # HTTP status of startVirtualCluster; 0: no answer
    task: str | None = None
    error: dict[str, Any] | None = None  # the JSON error of a refused submission
    failure: str | None = None  # no HTTP answer at all (the bug to catch)
    response: dict[str, Any] | None = None  # the final getVirtualClusterResponse
    waited: float = 0.0  # seconds until startVirtualCluster answered

    @property
    def vm_status(self) -> str | None:
        if self.response is None:
            return None
        vms = self.response.get("virtualMachineMetaData") or []
        return str(vms[0].get("status")) if vms else None


def error_code(body: Any) -> ErrorCode | None:
    """The code of a JSON error answer, if it is one."""
    try:
        return ErrorCode.parse(body["error"]["code"])
    except (KeyError, TypeError, ValueError):
        return None


class Submitter(threading.Thread):
    """Submits one small VM every ``interval`` seconds through the bootstrap (root namespace,
    127.0.0.1, the forwarder), each on its own thread as independent clients would (one held
    up does not hold the next back), until stopped; then ``settle`` waits for every task's answer."""

    def __init__(self, bootstrap_url: str, prefix: str, interval: float = 0.7, timeout: float = 15.0) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.url = bootstrap_url + "/bootstrap"
        self.prefix = prefix
        self.interval = interval
        self.timeout = timeout
        self.submissions: list[Submission] = []
        self._halt = threading.Event()
        self._clients: list[threading.Thread] = []

    def submit_one(self) -> Submission:
        name = f"{self.prefix}-{len(self.submissions) + 1}"
        s = Submission(name, time.monotonic())
        self.submissions.append(s)
        client = threading.Thread(target=self._submit, args=(s,), name=f"chaos-submit-{name}", daemon=True)
        self._clients.append(client)
        client.start()
        return s

    def _submit(self, s: Submission) -> None:
        name = s.name
        body = json.dumps({"virtualMachineTemplates": [{"name": name, "vcpus": 1, "memory": 65536, "imageId": "chaos.qcow2"}]})
        try:
            s.status, raw = _http("POST", self.url + "?startVirtualCluster", body.encode(), "application/json", self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            s.failure = f"no answer to startVirtualCluster: {exc!r}"
            return
        finally:
            s.waited = time.monotonic() - s.t
        text = raw.decode("utf-8", "replace")
        if s.status == 200:
            s.task = text.strip()
        else:
            try:
                s.error = json.loads(text)
            except ValueError:
                s.failure = f"HTTP {s.status}, not JSON: {text[:200]!r}"

    def run(self) -> None:
        while not self._halt.is_set():
            self.submit_one()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """No more submissions; returns once every one sent has its answer or has timed out."""
        self._halt.set()
        self.join(self.timeout + 5)
        for client in self._clients:
            client.join(self.timeout + 5)

    def settle(self, timeout: float = 45.0) -> None:
        """Until every accepted task has its answer (or ``timeout``: then its failure says so)."""
        deadline = time.monotonic() + timeout
        pending = [s for s in self.submissions if s.task and s.response is None]
        while pending and time.monotonic() < deadline:
            for s in pending:
                try:
                    status, raw = _http("POST", self.url + "?getVirtualClusterResponse", (s.task or "").encode(),
                                        "application/json", 5)
                except (OSError, http.client.HTTPException):
                    continue
                if status == 200 and raw.strip():
                    s.response = json.loads(raw)
            pending = [s for s in pending if s.response is None]
            if pending:
                time.sleep(0.3)
        for s in pending:
            s.failure = f"task {s.task} never answered within {timeout}s"


def placements(probe: Probe, lcs: list[str]) -> dict[str, list[str]]:
    """Every domain of every local controller: name -> the LCs it is defined on."""
    where: dict[str, list[str]] = {}
    for lc in lcs:
        body = probe.internal(lc, "lc.describe", timeout=5).result(10)
        for d in body.get("domains") or []:
            where.setdefault(str(d["name"]), []).append(lc)
    return where


@dataclass
class CaseReport:
    case: str
    target: str
    role: str
    seconds: float
    rounds: int = 0
    two_leaders: int = 0
    longest_orphan: float = 0.0
    orphan_lc: str = ""
    leaderless: float = 0.0
    submissions: int = 0
    slowest_answer: float = 0.0
    refused: dict[str, int] = field(default_factory=dict)
    vm_errors: dict[str, int] = field(default_factory=dict)
    ghosts: list[str] = field(default_factory=list)  # answered as not started, yet defined on a host

    def line(self) -> str:
        orphan = "none" if not self.orphan_lc else f"{self.longest_orphan:.2f}s ({self.orphan_lc})"
        return (f"{self.case:<18} cut {self.role} {self.target} for {self.seconds:g}s: two-leader samples "
                f"{self.two_leaders}/{self.rounds}, longest orphan {orphan}, longest leaderless "
                f"{self.leaderless:.2f}s, submissions {self.submissions} (slowest answer {self.slowest_answer:.1f}s; refused: {self.refused or 'none'}; "
                f"VM errors: {self.vm_errors or 'none'}; answered failed yet on a host: {self.ghosts or 'none'})")
