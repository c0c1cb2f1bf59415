"""The CLI verbs against the fake server: what they send, print, and exit with; and how the
``snooze`` command finds the cluster to talk to (``snooze.cli.target``)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snooze.cli import build_parser, main
from snooze.cli.target import bootstrap_url, record_last_cluster
from snooze.cli.vms import ProgressPrinter
from snooze.client.types import Progress
from tests.unit.client.fake import FakeSnooze, Reply, reply_error, reply_json, vm_meta


@pytest.fixture(autouse=True)
def no_cluster_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Neither this user's environment nor the cluster they started last reaches the tests."""
    monkeypatch.delenv("SNOOZE_URL", raising=False)
    monkeypatch.delenv("SNOOZE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    return tmp_path / "xdg-state"


def parser() -> argparse.ArgumentParser:
    return build_parser()


def run(fake: FakeSnooze, *argv: str) -> int:
    args = parser().parse_args(["--bootstrap", fake.url, *argv])
    return int(args.func(args))


def local_cluster(state: Path, url: str, *, running: bool = True) -> Iterator[Path]:
    """A ``cluster.json`` in ``state`` whose bootstrap is ``url``, recorded as a process that runs
    our config (a sleeper whose command line names it), or has exited when not ``running``."""
    config = state / "config" / "bootstrap-1.toml"
    config.parent.mkdir(parents=True)
    config.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(config)])
    try:
        if not running:
            proc.kill()
            proc.wait()
        (state / "cluster.json").write_text(json.dumps({
            "bootstrapUrl": url, "processes": [{"role": "bootstrap", "id": "bootstrap-1", "pid": proc.pid,
                                                "config": str(config)}]}))
        yield state
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def cluster_dir(fake: FakeSnooze, tmp_path: Path) -> Iterator[Path]:
    yield from local_cluster(tmp_path / "cluster", fake.url)


@pytest.fixture
def stopped_cluster_dir(fake: FakeSnooze, tmp_path: Path) -> Iterator[Path]:
    yield from local_cluster(tmp_path / "stopped", fake.url, running=False)


def snooze(*argv: str) -> int:
    return main(list(argv))


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


def test_submit_with_a_bad_count_is_a_one_line_error(fake: FakeSnooze, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "submit", "--count", "0") == 1
    err = capsys.readouterr().err
    assert err.startswith("snooze: BAD_TEMPLATE: --count must be >= 1") and len(err.splitlines()) == 1
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


EMPTY = reply_json({"virtualMachines": [], "start": 0, "limit": 100, "total": 0})


def test_state_dir_before_or_after_the_verb(fake: FakeSnooze, cluster_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("getVirtualMachineDescriptions", EMPTY)
    fake.on("getCompleteHierarchy", reply_json({"groupLeaderDescription": {"id": "gm-1"}, "groupManagerDescriptions": []}))
    assert snooze("--state-dir", str(cluster_dir), "vms") == 0
    assert snooze("vms", "--state-dir", str(cluster_dir)) == 0
    assert snooze("hierarchy", "--state-dir", str(cluster_dir)) == 0, "the other CLI's verbs: the same rule"
    out, err = capsys.readouterr()
    assert out.count("no virtual machines") == 2 and "group leader gm-1" in out
    assert err == "", "nothing guessed, nothing to say"
    assert len(fake.calls("getVirtualMachineDescriptions")) == 2 and len(fake.calls("getCompleteHierarchy")) == 1


def test_the_environment_chooses_and_the_command_line_wins(fake: FakeSnooze, cluster_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("getVirtualMachineDescriptions", EMPTY)
    monkeypatch.setenv("SNOOZE_STATE_DIR", str(cluster_dir))
    assert snooze("vms") == 0
    monkeypatch.setenv("SNOOZE_STATE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SNOOZE_URL", fake.url)
    assert snooze("vms") == 0, "SNOOZE_URL before SNOOZE_STATE_DIR"
    monkeypatch.setenv("SNOOZE_URL", "http://127.0.0.1:9")
    assert snooze("vms", "--url", fake.url) == 0, "--url before the environment"
    assert snooze("vms", "--state-dir", str(cluster_dir)) == 0, "--state-dir before the environment"
    assert capsys.readouterr().err == ""
    assert len(fake.calls("getVirtualMachineDescriptions")) == 4


def test_the_cluster_started_last_is_used_and_named(fake: FakeSnooze, cluster_dir: Path, tmp_path: Path,
                                                    no_cluster_chosen: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("getVirtualMachineDescriptions", EMPTY)
    record = record_last_cluster(cluster_dir)
    assert record == no_cluster_chosen / "snooze" / "last-cluster"
    assert record.stat().st_mode & 0o777 == 0o600
    monkeypatch.chdir(tmp_path)  # from anywhere, not only the clone
    assert snooze("vms") == 0
    out, err = capsys.readouterr()
    assert out == "no virtual machines\n"
    assert err == f"snooze: using the cluster in {cluster_dir} ({fake.url}), the one you started last; " \
                  "choose another with --state-dir or --url\n"
    assert bootstrap_url(argparse.Namespace(url="http://h:1/", state_dir=None)) == "http://h:1"


def test_no_cluster_is_said_clearly(fake: FakeSnooze, stopped_cluster_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert snooze("vms") == 1
    err = capsys.readouterr().err
    assert err.startswith("snooze: NO_CLUSTER: no cluster to talk to: give --url URL or --state-dir DIR")
    assert len(err.splitlines()) == 1
    assert snooze("vms", "--state-dir", str(tmp_path / "none")) == 1
    assert f"the one in {tmp_path / 'none'} (--state-dir) is not running" in capsys.readouterr().err
    record_last_cluster(stopped_cluster_dir)
    assert snooze("hosts") == 1
    assert f"the cluster you started last, in {stopped_cluster_dir}, is not running (its bootstrap is gone)" \
        in capsys.readouterr().err
    assert fake.requests == [], "never some other cluster's bootstrap, never a default port"


def test_a_reused_pid_is_not_our_bootstrap(fake: FakeSnooze, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded PID runs, but not our bootstrap's command line: the cluster is gone."""
    state = tmp_path / "reused"
    state.mkdir()
    (state / "cluster.json").write_text(json.dumps({"bootstrapUrl": fake.url, "processes": [
        {"role": "bootstrap", "id": "bootstrap-1", "pid": os.getpid(), "config": str(state / "config/bootstrap-1.toml")}]}))
    assert snooze("vms", "--state-dir", str(state)) == 1
    assert "is not running (its bootstrap is gone)" in capsys.readouterr().err
    assert fake.requests == []


def test_submit_without_image_sends_a_diskless_vm_and_help_says_so(fake: FakeSnooze,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("startVirtualCluster", Reply(body=b"t-2", content_type="text/plain"))
    assert run(fake, "submit", "--vcpus", "2", "--name", "bare", "--no-wait") == 0
    assert capsys.readouterr().out == "t-2\n"
    sent = fake.calls("startVirtualCluster")[0].json()["virtualMachineTemplates"]
    assert sent == [{"vcpus": 2, "memory": 262144, "name": "bare",
                     "networkCapacityDemand": {"rxBytes": 12800.0, "txBytes": 12800.0}}]
    with pytest.raises(SystemExit):
        parser().parse_args(["submit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--image ID disk image of sized VMs" in help_text and "(default: none, a VM without a disk)" in help_text


def test_progress_on_a_terminal_redraws_a_bar() -> None:
    stream = io.StringIO()
    show = ProgressPrinter(stream, total=2, tty=True)
    show(Progress("t", "PENDING", 0.1, 1, True))
    show(Progress("t", "PENDING", 0.2, 2, False))
    show(Progress("t", "DONE", 0.3, 3, True, {"a": "RUNNING", "b": "RUNNING"}))
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and "[####################] 2/2  2 RUNNING" in text


def test_only_the_cluster_verbs_load_the_development_tooling() -> None:
    """``snooze vms`` and the other verbs on a cluster never import ``snooze.dev``; ``cluster up``
    and ``cluster down`` import it when they run."""
    code = ("import sys; from snooze.cli import build_parser; build_parser().parse_args(['vms']); "
            "print(sorted(m for m in sys.modules if m.startswith('snooze.dev')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
