"""A pytest plugin that fails the run when a test opens a file beside the repository.

A clone has nothing beside it, so a test that reads ``../SIBLING/…`` (any sibling of
the repository) passes only on the machine where it was written. This plugin watches the test
process's own file opens and directory listings through an audit hook (``sys.addaudithook``)
and, at the end of the session, fails the run naming each such path and the test (or the
collection) that touched it. Test data belongs under ``tests/fixtures/``.

What counts as "beside the repository": a path inside the repository's parent directory, but
not inside the repository, whose first component below the parent already existed when the
session started. So are exempt: everything the run itself creates there (temporary
directories, when the clone lives in /tmp), pytest's own ``pytest-of-USER`` temporary root,
and, when the parent is the home directory, its hidden per-user files (``~/.cache``,
``~/.config``, …). When the repository sits directly under ``/`` every path is a sibling, and
the check is off.

Under pytest-xdist each worker watches its own opens and hands what it saw to the controller
(``workeroutput``), which fails the run and reports them.

Only opens made by the pytest process are seen; child processes (servers, curl) are not. Paths
are compared as written (made absolute and normalised, symlinks not resolved), which keeps the
hook cheap: it runs on every audit event of the process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

__all__ = ["OutsideReads", "install"]

_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
_REPORT_AT_MOST = 50


class OutsideReads:
    """The audit hook and the pytest hooks that report what it saw."""

    def __init__(self, repository: Path) -> None:
        repo = os.path.normpath(os.path.abspath(repository))
        parent = os.path.dirname(repo)
        self.repository = repo
        self.parent = parent
        self._repo_name = os.path.basename(repo)
        self._parent_prefix = parent.rstrip(os.sep) + os.sep
        home = os.path.normpath(os.path.expanduser("~"))
        self._skip_hidden = parent == home
        self.enabled = parent != os.path.dirname(parent)  # off when the parent is "/"
        self._siblings: frozenset[str] = frozenset()
        if self.enabled:
            with suppress(OSError):
                self._siblings = frozenset(os.listdir(parent)) - {self._repo_name}
        self.current = "(start-up)"
        self.seen: dict[str, list[str]] = {}
        self._hooked = False

    def start(self) -> None:
        """Install the audit hook (once: audit hooks cannot be removed; it checks ``enabled``)."""
        if not self._hooked:
            sys.addaudithook(self._audit)
            self._hooked = True

    def outside(self, path: str) -> bool:
        """True when the absolute, normalised ``path`` is a pre-existing sibling's."""
        if not path.startswith(self._parent_prefix):
            return False
        first = path[len(self._parent_prefix):].split(os.sep, 1)[0]
        if first not in self._siblings or first.startswith("pytest-of-"):
            return False
        return not (self._skip_hidden and first.startswith("."))

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in _EVENTS or not self.enabled:
            return
        try:
            raw = args[0] if args else None
            if raw is None or isinstance(raw, int):
                return
            path = os.fspath(raw)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if not path.startswith(self._parent_prefix):
                if os.path.isabs(path):
                    return
                path = os.path.join(os.getcwd(), path)
            path = os.path.normpath(path)
            if self.outside(path):
                users = self.seen.setdefault(path, [])
                if self.current not in users:
                    users.append(self.current)
        except Exception:  # an audit hook must never break the open it watches
            return

    # pytest hooks ------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectstart(self, collector: pytest.Collector) -> None:
        self.current = f"collection of {collector.nodeid or collector.name}"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self.current = nodeid

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        self.current = "(between tests)"

    def report(self) -> Iterator[str]:
        yield (f"tests read outside the repository {self.repository} "
               f"(a clone has nothing beside it in {self.parent}):")
        for index, (path, users) in enumerate(sorted(self.seen.items())):
            if index == _REPORT_AT_MOST:
                yield f"  … and {len(self.seen) - index} more paths"
                break
            yield f"  {path}  opened by {', '.join(users)}"
        yield "put the data the tests need under tests/fixtures/ instead."

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        output = getattr(session.config, "workeroutput", None)
        if output is not None:  # an xdist worker: the controller reports and fails the run
            output["outside_reads"] = self.seen
            return
        if self.seen and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """An xdist worker finished: what it saw counts as seen here."""
        for path, users in (getattr(node, "workeroutput", None) or {}).get("outside_reads", {}).items():
            mine = self.seen.setdefault(path, [])
            mine.extend(u for u in users if u not in mine)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.seen:
            return
        terminalreporter.section("reads outside the repository", sep="=", red=True, bold=True)
        for line in self.report():
            terminalreporter.line(line, red=True)


def install(config: pytest.Config, repository: Path) -> OutsideReads:
    """Register the check for ``repository`` with this pytest run and start watching."""
    plugin = OutsideReads(repository)
    config.pluginmanager.register(plugin, "outside-reads")
    plugin.start()
    return plugin
