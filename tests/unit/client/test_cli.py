"""The CLI verbs against the fake server: what they send, print, and exit with."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from snooze.client.cli import ProgressPrinter, bootstrap_url, register
from snooze.client.types import Progress
from tests.unit.client.fake import FakeSnooze, Reply, reply_error, reply_json, vm_meta


def parser() -> argparse.ArgumentParser:
    """Like ``snooze/cli.py``'s: global --state-dir and --bootstrap, then the verbs."""
    p = argparse.ArgumentParser(prog="snooze")
    p.add_argument("--state-dir", default=".state/cluster")
    p.add_argument("--bootstrap")
    register(p.add_subparsers(dest="command", required=True))
    return p


def run(fake: FakeSnooze, *argv: str) -> int:
    args = parser().parse_args(["--bootstrap", fake.url, *argv])
    return int(args.func(args))


def test_submit_templates_follows_progress_and_prints_a_table(fake: FakeSnooze, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d1.xml").write_text("<domain><name>debian1</name></domain>")
    (tmp_path / "d2.xml").write_text("<domain><name>debian2</name></domain>")
    fake.on("startVirtualCluster", Reply(body=b"t-1", content_type="text/plain"))
    fake.on("getVirtualClusterResponse", [Reply(), Reply(), reply_json({
        "taskId": "t-1", "errorCode": None,
        "virtualMachineMetaData": [vm_meta("debian1", lc="lc-1"), vm_meta("debian2", lc="lc-2", ip="10.0.0.3")]})])
    code = run(fake, "submit", "--template", str(tmp_path / "d1.xml"), "--template", str(tmp_path / "d2.xml"),
               "--rx", "100", "--poll-interval", "0.01")
    out, err = capsys.readouterr()
    assert code == 0, err
    sent = fake.calls("startVirtualCluster")[0].json()["virtualMachineTemplates"]
    assert [t["networkCapacityDemand"] for t in sent] == [{"rxBytes": 100.0, "txBytes": 12800.0}] * 2
    assert err.splitlines() == ["submitted virtual cluster t-1 (2 VMs)",
                                "task t-1: waiting for the group leader to place 2 VMs",
                                err.splitlines()[2]], "one line per state change, not per poll"
    assert err.splitlines()[2].startswith("task t-1: done in ") and err.endswith(": 2 RUNNING\n")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATUS", "LOCAL", "CONTROLLER", "GROUP", "MANAGER", "IP", "VCPUS", "MEMORY"]
    assert [r.split()[:5] for r in rows] == [["debian1", "RUNNING", "lc-1", "gm-1", "10.0.0.2"],
                                             ["debian2", "RUNNING", "lc-2", "gm-1", "10.0.0.3"]]


def test_submit_sized_vms_with_no_wait_prints_the_task_id(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("startVirtualCluster", Reply(body=b"t-9", content_type="text/plain"))
    assert run(fake, "submit", "--image", "debian", "--vcpus", "2", "--memory-mib", "512", "--count", "2",
               "--name", "web", "--no-wait") == 0
    assert capsys.readouterr().out == "t-9\n"
    sent = fake.calls("startVirtualCluster")[0].json()["virtualMachineTemplates"]
    assert [(t["name"], t["vcpus"], t["memory"], t["imageId"]) for t in sent] == [
        ("web-1", 2, 524288, "debian"), ("web-2", 2, 524288, "debian")]
    assert fake.calls("getVirtualClusterResponse") == []


def test_submit_reports_failed_vms_and_exits_non_zero(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("startVirtualCluster", Reply(body=b"t-1", content_type="text/plain"))
    fake.on("getVirtualClusterResponse", reply_json({"taskId": "t-1", "errorCode": None, "virtualMachineMetaData": [
        vm_meta("a"), dict(vm_meta("b", "ERROR", error="NOT_ENOUGH_CAPACITY", ip=None), message="no host fits")]}))
    assert run(fake, "submit", "--image", "debian", "--count", "2", "--name", "x") == 1
    out, err = capsys.readouterr()
    assert "snooze: NOT_ENOUGH_CAPACITY: virtual machine b did not start: no host fits" in err.splitlines()
    assert "ERROR" in out


def test_submit_without_anything_to_start_is_a_one_line_error(fake: FakeSnooze,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "submit") == 1
    err = capsys.readouterr().err
    assert err.startswith("snooze: BAD_TEMPLATE: ") and len(err.splitlines()) == 1
    assert fake.requests == []


def test_server_errors_are_one_line_on_stderr(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("startVirtualCluster", reply_error(400, "BAD_TEMPLATE", "memory: must be >= 1", "memory"))
    assert run(fake, "submit", "--image", "debian") == 1
    assert capsys.readouterr().err == "snooze: BAD_TEMPLATE: memory: must be >= 1\n"


def test_vms_lists_every_page(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("getVirtualMachineDescriptions", reply_json({"virtualMachines": [vm_meta("a"), vm_meta("b", "PAUSED")],
                                                         "start": 0, "limit": 100, "total": 2}))
    assert run(fake, "vms") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["a", "RUNNING"], ["b", "PAUSED"]]
    assert run(fake, "vms", "--json") == 0
    assert [vm["virtualMachineId"] for vm in json.loads(capsys.readouterr().out)["virtualMachines"]] == ["a", "b"]


def test_vm_shows_location_address_and_usage(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("getVirtualMachineMetaData", lambda r: reply_json(vm_meta(r.text, lc="lc-4")))
    assert run(fake, "vm", "vm7") == 0
    out = capsys.readouterr().out
    assert "id:" in out and "vm7" in out
    assert "lc-4  127.0.0.1:5003" in out and "gm-1  127.0.0.1:5002" in out
    assert "10.0.0.2" in out and "0.5 vcpus" in out and "1 vcpus" in out


@pytest.mark.parametrize("verb,done", [("suspend", "suspended"), ("resume", "resumed"), ("shutdown", "shut down"),
                                       ("reboot", "rebooted"), ("destroy", "destroyed")])
def test_control_verbs(fake: FakeSnooze, capsys: pytest.CaptureFixture[str], verb: str, done: str) -> None:
    fake.on(f"{verb}VirtualMachine", [reply_json(True), reply_json(False),
                                      reply_error(404, "VIRTUAL_MACHINE_NOT_FOUND", "no VM 'vm1'")])
    assert run(fake, verb, "vm1") == 0
    assert capsys.readouterr().out == f"{done} vm1\n"
    assert run(fake, verb, "vm1") == 1
    assert capsys.readouterr().err.startswith("snooze: REFUSED: ")
    assert run(fake, verb, "vm1") == 1
    assert capsys.readouterr().err == "snooze: VIRTUAL_MACHINE_NOT_FOUND: no VM 'vm1'\n"
    assert [r.text for r in fake.calls(f"{verb}VirtualMachine")] == ["vm1"] * 3


def test_migrate(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("migrateVirtualMachine", reply_json(True))
    assert run(fake, "migrate", "vm1", "--to", "lc-2") == 0
    assert capsys.readouterr().out == "migrated vm1 to lc-2\n"
    assert fake.calls("migrateVirtualMachine")[0].json() == {"virtualMachineId": "vm1", "localControllerId": "lc-2"}


def test_unreachable_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parser().parse_args(["--bootstrap", f"http://127.0.0.1:{port}", "vms"])
    assert args.func(args) == 1
    assert capsys.readouterr().err.startswith("snooze: UNREACHABLE: cannot reach http://127.0.0.1:")


def test_the_bootstrap_comes_from_the_local_cluster(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"bootstrapUrl": "http://127.0.0.1:5999"}))
    assert bootstrap_url(parser().parse_args(["--state-dir", str(tmp_path), "vms"])) == "http://127.0.0.1:5999"
    assert bootstrap_url(parser().parse_args(["--state-dir", str(tmp_path / "none"), "vms"])) == "http://127.0.0.1:5000"
    assert bootstrap_url(argparse.Namespace(bootstrap="http://h:1/")) == "http://h:1"


def test_progress_on_a_terminal_redraws_a_bar() -> None:
    stream = io.StringIO()
    show = ProgressPrinter(stream, total=2, tty=True)
    show(Progress("t", "PENDING", 0.1, 1, True))
    show(Progress("t", "PENDING", 0.2, 2, False))
    show(Progress("t", "DONE", 0.3, 3, True, {"a": "RUNNING", "b": "RUNNING"}))
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and "[####################] 2/2  2 RUNNING" in text
