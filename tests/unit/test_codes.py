"""Statuses and error codes are values of one module (``snooze.codes``): no runtime module writes
one as a bare string, each code knows whether it is retryable and its HTTP status, and what
travels between processes keeps the original's values.

The scan reads the source of every runtime package (``snooze`` but its development tooling,
``bootstrap``, ``groupmanager``, ``localcontroller``) and reports each string literal equal to
a status or a code, outside ``snooze/codes.py``. Docstrings, f-string text and log messages are
prose, not codes, and are not reported. A test feeds it a module that compares a status and
assigns a code as strings, and checks that both are reported: the scan can fail.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import msgpack
import pytest

from snooze.codes import STARTED, ErrorCode, TaskState, VMStatus
from snooze.http import ApiError
from snooze.rpc import RpcError, api_error, legacy_refusal

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("snooze", "bootstrap", "groupmanager", "localcontroller")
DEFINING = ROOT / "snooze" / "codes.py"
EXCLUDED = (ROOT / "snooze" / "dev",)  # development tooling, not a runtime package
#: Another vocabulary that shares a word with the VM statuses: the host power-saving actions
#: (SHUTDOWN, SUSPEND_TO_RAM …), defined by the local controller's power saver and named by
#: the configuration's option. Nowhere else may a "SHUTDOWN" appear.
ALLOWED = {
    ("localcontroller/power/saver.py", "SHUTDOWN"),
    ("snooze/config.py", "SHUTDOWN"),
}
VALUES = frozenset({*VMStatus, *TaskState, *ErrorCode})
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def _prose(tree: ast.AST) -> set[int]:
    """ids of the string constants that are not values: docstrings, f-string text, log messages,
    the names in ``__all__``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values if isinstance(v, ast.Constant))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS
              and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger", "logging")):
            skip.update(id(a) for a in node.args if isinstance(a, ast.Constant))
        elif (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
              and isinstance(node.value, (ast.List, ast.Tuple))):
            skip.update(id(e) for e in node.value.elts)  # names of a module's exports, not values
    return skip


def bare_codes(source: str, name: str) -> list[tuple[str, int, str]]:
    """(module, line, value) of each status or code written as a string literal in ``source``."""
    tree = ast.parse(source, name)
    prose = _prose(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VALUES
                and id(node) not in prose and (name, node.value) not in ALLOWED):
            found.append((name, node.lineno, node.value))
    return found


def runtime_modules() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if p != DEFINING and not any(p.is_relative_to(x) for x in EXCLUDED)]


def test_no_runtime_module_writes_a_status_or_an_error_code_as_a_bare_string() -> None:
    modules = runtime_modules()
    assert len(modules) > 80, "the scan must cover the runtime packages"
    found = [hit for p in modules for hit in bare_codes(p.read_text(), p.relative_to(ROOT).as_posix())]
    assert not found, "use snooze.codes (VMStatus, TaskState, ErrorCode) instead of:\n" + "\n".join(
        f"  {name}:{line}: {value!r}" for name, line, value in found)


def test_the_scan_reports_what_it_must_and_only_that() -> None:
    source = '''
"""RUNNING"""
import logging
log = logging.getLogger(__name__)

__all__ = ["ERROR"]

def f(rec, res):
    """ERROR"""
    if rec["status"] == "RUNNING":
        res["errorCode"] = "NOT_ENOUGH_CAPACITY"
    log.warning("ERROR")
    return f"{rec} ERROR", {"PAUSED": 1}, "SHUTDOWN"
'''
    found = {(line, value) for _name, line, value in bare_codes(source, "groupmanager/example.py")}
    assert found == {(10, "RUNNING"), (11, "NOT_ENOUGH_CAPACITY"), (13, "PAUSED"), (13, "SHUTDOWN")}
    # The power-saving action is another word that reads the same, only where it is defined.
    assert bare_codes('STATES = ("SHUTDOWN",)', "localcontroller/power/saver.py") == []


def test_statuses_and_codes_are_their_strings_on_the_wire() -> None:
    body = {"status": VMStatus.RUNNING, "errorCode": ErrorCode.NOT_ENOUGH_CAPACITY, "state": TaskState.DONE}
    assert json.loads(json.dumps(body)) == {"status": "RUNNING", "errorCode": "NOT_ENOUGH_CAPACITY", "state": "DONE"}
    assert msgpack.unpackb(msgpack.packb(body)) == json.loads(json.dumps(body))
    assert f"{ErrorCode.TIMEOUT}" == str(ErrorCode.TIMEOUT) == "TIMEOUT"
    assert {"RUNNING": 1}[VMStatus.RUNNING] == 1 and "PAUSED" in STARTED


def test_a_code_from_a_peer_is_read_whatever_its_case_and_an_unknown_one_is_unknown() -> None:
    assert ErrorCode.parse("stale_epoch") is ErrorCode.STALE_EPOCH  # as versions before sent it
    assert ErrorCode.parse("NOT_JOINED") is ErrorCode.NOT_JOINED
    assert ErrorCode.parse("A_CODE_FROM_THE_FUTURE") is ErrorCode.UNKNOWN
    assert ErrorCode.parse(None) is ErrorCode.UNKNOWN and ErrorCode.parse(42) is ErrorCode.UNKNOWN
    assert RpcError("timeout", "slow").code is ErrorCode.TIMEOUT


def test_temporary_codes_are_the_ones_a_retry_elsewhere_or_later_may_cure() -> None:
    # What the group leader and a group manager send to another host or group manager.
    for code in (ErrorCode.NOT_ENOUGH_CAPACITY, ErrorCode.NOT_ENOUGH_LOCAL_CONTROLLER_CAPACITY,
                 ErrorCode.LOCAL_CONTROLLER_GONE, ErrorCode.GROUP_MANAGER_UNREACHABLE, ErrorCode.UNREACHABLE,
                 ErrorCode.ZOOKEEPER_UNAVAILABLE, ErrorCode.NOT_GROUP_LEADER):
        assert code.retryable, code
    # Bad input, a conflict with the state, or an outcome nobody knows (the order may have run).
    for code in (ErrorCode.INVALID_TEMPLATE, ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, ErrorCode.INVALID_STATE,
                 ErrorCode.TIMEOUT, ErrorCode.LOCAL_CONTROLLER_UNREACHABLE, ErrorCode.HYPERVISOR_ERROR,
                 ErrorCode.MIGRATION_FAILED, ErrorCode.STALE_EPOCH, ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE):
        assert not code.retryable, code
    assert all(100 <= code.http_status < 600 for code in ErrorCode)
    assert ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, "gone").status == 404
    assert ApiError(ErrorCode.NOT_GROUP_LEADER, "ask the leader", status=409).status == 409


@pytest.mark.parametrize(("error", "expected"), [
    # A peer's refusal passes on: its status, code and field.
    (RpcError(ErrorCode.INVALID_STATE, "vm1 is RUNNING", 409, "virtualMachineId"),
     (409, ErrorCode.INVALID_STATE, "virtualMachineId")),
    # A failure the peer named: its code, 503 (the default failure status).
    (RpcError(ErrorCode.HYPERVISOR_ERROR, "libvirt said no", 502), (503, ErrorCode.HYPERVISOR_ERROR, "f")),
    # No answer: 503 with the transport's code.
    (RpcError(ErrorCode.TIMEOUT, "slow"), (503, ErrorCode.TIMEOUT, "f")),
    (RpcError(ErrorCode.INTERNAL_ERROR, "a bug over there", 500), (503, ErrorCode.INTERNAL_ERROR, "f")),
])
def test_one_mapping_from_internal_errors_to_api_errors(error: RpcError, expected: tuple[int, ErrorCode, str]) -> None:
    api = api_error(error, "peer", field="f")
    assert (api.status, api.code, api.field) == expected and api.message.startswith("peer: ")


def test_the_mapping_names_who_did_not_answer_and_keeps_a_local_errors_own_status() -> None:
    from snooze.coordination import CoordinationError
    from snooze.coordination.store import StaleEpoch

    api = api_error(RpcError(ErrorCode.UNREACHABLE, "refused"), unreachable=ErrorCode.LOCAL_CONTROLLER_UNREACHABLE)
    assert (api.status, api.code) == (503, ErrorCode.LOCAL_CONTROLLER_UNREACHABLE)
    api = api_error(RpcError(ErrorCode.HYPERVISOR_ERROR, "no", 502), failure_status=None)
    assert (api.status, api.code) == (502, ErrorCode.HYPERVISOR_ERROR)
    assert (api_error(CoordinationError("lost")).status, api_error(CoordinationError("lost")).code) == (
        503, ErrorCode.ZOOKEEPER_UNAVAILABLE)
    assert api_error(StaleEpoch("replaced")).code is ErrorCode.NOT_GROUP_LEADER


def test_an_older_local_controllers_refusal_reads_as_the_error_it_means() -> None:
    refusal = legacy_refusal({"ok": False, "errorCode": "VIRTUAL_MACHINE_NOT_FOUND", "message": "no domain vm1"})
    assert refusal is not None and (refusal.code, refusal.status, refusal.message) == (
        ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, 404, "no domain vm1")
    assert legacy_refusal({"ok": True}) is None and legacy_refusal({"results": []}) is None
    assert legacy_refusal(["ok", False]) is None
