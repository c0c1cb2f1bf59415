"""``VMRecord``: the typed ``vms/<id>`` record. It reads what older versions wrote and keeps what
newer ones add, refuses garbage with a reason, writes the same JSON keys as before, and its
changes can be replayed on a fresher copy (what a version-checked write does on a conflict)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from snooze.codes import ErrorCode, VMStatus
from snooze.models import NetworkAddress
from snooze.records import RecordError, VMRecord

# What this project's versions before VMRecord wrote for a VM that started (the dict layout).
OLDER = {
    "virtualMachineId": "web-1", "taskId": "t-1", "status": "RUNNING", "errorCode": None,
    "requestedCapacity": [1, 131072, 12800, 12800], "ipAddress": "10.0.0.2", "macAddress": "54:56:a:0:0:2",
    "localControllerId": "lc-1", "groupManagerId": "gm-1", "submittedAt": 1700000000.5, "message": None,
    "groupManagerControlDataAddress": {"address": "127.0.0.1", "port": 5001},
    "localControllerControlDataAddress": {"address": "127.0.0.1", "port": 5101},
    "adaptations": ["domain type kvm -> test"], "updatedAt": 1700000001.0,
}


def test_an_older_versions_record_is_read_and_written_back_with_the_same_keys() -> None:
    rec = VMRecord.from_json(json.dumps(OLDER).encode(), "web-1", version=3)
    assert (rec.vm_id, rec.status, rec.task_id, rec.version) == ("web-1", VMStatus.RUNNING, "t-1", 3)
    assert rec.requested == (1.0, 131072.0, 12800.0, 12800.0) and rec.lc_address == NetworkAddress("127.0.0.1", 5101)
    assert rec.error_code is None and rec.adaptations == ["domain type kvm -> test"] and rec.extra == {}
    assert rec.to_json() == {k: v for k, v in OLDER.items() if v is not None or k == "errorCode"}


def test_a_minimal_record_takes_the_defaults_of_what_it_does_not_say() -> None:
    rec = VMRecord.from_json({"virtualMachineId": "a", "status": "PENDING"}, "a")
    assert (rec.task_id, rec.ip, rec.lc_id, rec.adaptations, rec.restarts, rec.version) == (None, None, None, [], 0, -1)
    # The keys every record has are written even when empty, as every version did.
    assert rec.to_json() == {"virtualMachineId": "a", "taskId": None, "status": "PENDING", "errorCode": None,
                             "requestedCapacity": None, "ipAddress": None, "macAddress": None,
                             "localControllerId": None, "groupManagerId": None, "submittedAt": None}


def test_a_newer_versions_fields_are_kept_and_an_unknown_error_code_reads_as_unknown() -> None:
    newer = {**OLDER, "status": "ERROR", "errorCode": "QUOTA_EXCEEDED", "placementTrace": {"filters": 3},
             "networkPorts": ["p-1"]}
    rec = VMRecord.from_json(newer, "web-1")
    assert rec.error_code is ErrorCode.UNKNOWN
    assert rec.extra == {"placementTrace": {"filters": 3}, "networkPorts": ["p-1"]}
    out = rec.to_json()
    assert out["placementTrace"] == {"filters": 3} and out["networkPorts"] == ["p-1"], "an older writer drops nothing"


@pytest.mark.parametrize(("data", "problem"), [
    (b"\x00{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'["a", "list"]', "not a JSON object but list"),
    (b"null", "not a JSON object but NoneType"),
    ({"virtualMachineId": "web-2", "status": "RUNNING"}, "virtualMachineId is 'web-2'"),
    ({"virtualMachineId": "web-1", "taskId": "t", "state": "PENDING"}, "it has no status"),  # an older shape
    ({"virtualMachineId": "web-1", "status": "HIBERNATING"}, "status 'HIBERNATING' is not one this version knows"),
    ({"virtualMachineId": "web-1", "status": "PENDING", "taskId": 7}, "taskId is int, not text"),
    ({"virtualMachineId": "web-1", "status": "PENDING", "requestedCapacity": [1, 2]}, "requestedCapacity"),
    ({"virtualMachineId": "web-1", "status": "RUNNING", "localControllerControlDataAddress": "lc-1:5000"},
     "localControllerControlDataAddress is not an address"),
    ({"virtualMachineId": "web-1", "status": "RUNNING", "restarts": "two"}, "restarts is not a whole number"),
    ({"virtualMachineId": "web-1", "status": "RUNNING", "adaptations": "none"}, "adaptations is not a list"),
])
def test_garbage_is_a_record_error_that_says_why(data: Any, problem: str) -> None:
    with pytest.raises(RecordError) as err:
        VMRecord.from_json(data, "web-1", version=5)
    assert problem in err.value.problem and err.value.version == 5 and err.value.vm_id == "web-1"
    assert err.value.code is ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE
    assert isinstance(err.value, ValueError)


def test_an_unreadable_record_is_replaced_by_an_error_record_that_keeps_its_address() -> None:
    with pytest.raises(RecordError) as err:
        VMRecord.from_json({"virtualMachineId": "web-1", "taskId": "t-9", "state": "PENDING", "ipAddress": "10.0.0.9"},
                           "web-1", version=2)
    rec = VMRecord.unreadable(err.value)
    assert (rec.status, rec.error_code, rec.task_id, rec.ip, rec.version) == (
        VMStatus.ERROR, ErrorCode.VIRTUAL_MACHINE_RECORD_UNREADABLE, "t-9", "10.0.0.9", 2)
    assert "no status" in str(rec.message) and rec.dirty, "written whole over the unreadable one"
    from_spec = VMRecord.unreadable(RecordError("x", "not JSON"), "t-1", {"ip": "10.0.0.5", "requested": [1, 2, 0, 0]})
    assert (from_spec.ip, from_spec.requested) == ("10.0.0.5", (1.0, 2.0, 0.0, 0.0))


def test_changes_check_the_state_they_apply_to() -> None:
    rec = VMRecord.pending("a", "t", (1.0, 1024.0, 0.0, 0.0), "10.0.0.2", "54:56:a:0:0:2")
    rec.dispatch_to("gm-1")
    assert (rec.status, rec.gm_id) == (VMStatus.DISPATCHED, "gm-1")
    rec.dispatch_to("gm-2")  # only a PENDING VM is dispatched
    assert rec.gm_id == "gm-1"
    rec.record_result(VMStatus.RUNNING, None, None, "gm-1", None, "lc-1", None, [])
    rec.fail(ErrorCode.NOT_ENOUGH_CAPACITY, "late")  # started: not failed by a late refusal
    rec.release_address()  # runs: keeps its address
    assert (rec.status, rec.ip) == (VMStatus.RUNNING, "10.0.0.2")
    rec.lose("lc-2", "not there", 1.0)  # placed elsewhere: not lost
    assert rec.status is VMStatus.RUNNING
    rec.lose("lc-1", "gone with its host", 2.0)
    assert (rec.status, rec.error_code, rec.ip, rec.released) == (
        VMStatus.ERROR, ErrorCode.VIRTUAL_MACHINE_LOST, None, "10.0.0.2")
    full = VMRecord.pending("b", "t", (1.0, 1.0, 0.0, 0.0), None, None, "10.0.0.0/30")
    assert (full.status, full.error_code, full.message) == (
        VMStatus.ERROR, ErrorCode.NO_FREE_IP_ADDRESS, "subnet 10.0.0.0/30 is full")


def test_a_stale_copys_changes_replayed_on_a_fresh_one_keep_both_writers_changes() -> None:
    base = {"virtualMachineId": "a", "taskId": "t", "status": "DISPATCHED", "groupManagerId": "gm-1",
            "ipAddress": "10.0.0.2"}
    leaders = VMRecord.from_json(base, "a", version=4)
    leaders.record_result(VMStatus.RUNNING, None, "started", "gm-1", None, "lc-1", NetworkAddress("127.0.0.1", 1), [])
    # Meanwhile a group manager moved it (version 5): the leader's write would conflict.
    managers = VMRecord.from_json({**base, "localControllerId": "lc-1"}, "a", version=4)
    managers.move("lc-2", NetworkAddress("127.0.0.1", 2), "gm-1", None, "uuid-1", {"from": "lc-1", "to": "lc-2"})
    fresh = VMRecord.from_json(managers.to_json(), "a", version=5)
    assert leaders.rebase(fresh)
    assert (leaders.status, leaders.message, leaders.lc_id, leaders.version) == (VMStatus.RUNNING, "started", "lc-2", 5)
    assert leaders.dirty and leaders.last_migration == {"from": "lc-1", "to": "lc-2"}
    # A copy whose record was since broken has nothing left to write.
    stale = VMRecord.from_json(base, "a", version=4)
    stale.dispatch_to("gm-2")
    assert not stale.rebase(RecordError("a", "not JSON", None, 6)) and not stale.dirty


def test_metadata_has_the_originals_fields() -> None:
    meta = VMRecord.from_json(OLDER, "web-1").metadata({"xml": "<domain/>", "imageId": "debian.qcow2"},
                                                       live={"usedCapacity": {"cpu": 0.5}})
    assert meta["virtualMachineLocation"] == {
        "virtualMachineId": "web-1", "localControllerId": "lc-1", "groupManagerId": "gm-1",
        "groupManagerControlDataAddress": {"address": "127.0.0.1", "port": 5001},
        "localControllerControlDataAddress": {"address": "127.0.0.1", "port": 5101}}
    assert (meta["status"], meta["errorCode"], meta["xmlRepresentation"], meta["usedCapacity"]) == (
        "RUNNING", None, "<domain/>", {"cpu": 0.5})
    assert json.loads(json.dumps(meta))["requestedCapacity"] == [1.0, 131072.0, 12800.0, 12800.0]
