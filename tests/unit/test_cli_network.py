"""The ``snooze network|subnet|flavor|fwgroup|vlan`` verbs' shaping and printing, against a stub
of the client (the integration test ``test_network_api.py`` runs them against a real bootstrap):
create's flags and ``--json FILE`` make the object sent, list and show print tables, a server's
refusal is one line on stderr with exit code 1."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import snooze.cli.network as network_cli
from snooze.cli import main
from snooze.client.errors import SnoozeClientError

SUBNET = {"id": "sub4", "metadata": {}, "network": "net1", "cidr": "10.10.0.0/24", "gateway": "10.10.0.1",
          "start": "10.10.0.10", "end": "10.10.0.250", "dns": ["10.10.0.2", "10.10.0.3"]}
FLAVOR = {"id": "small", "metadata": {}, "image": "tiny", "vcpus": 2, "memory": 2097152, "disk": 0, "rx": 0, "tx": 1000}
WEB = {"id": "web", "metadata": {}, "rules": [
    {"source": "0.0.0.0/0", "group": None, "portStart": 80, "portEnd": 81, "protocol": "tcp", "action": "allow"},
    {"source": None, "group": "admin", "portStart": 0, "portEnd": 0, "protocol": "all", "action": "deny"}]}


class StubApi:
    """What the verbs call on ``SyncSnoozeClient``: records the calls, answers from ``objects``."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]], refuse: SnoozeClientError | None = None) -> None:
        self.objects = objects
        self.refuse = refuse
        self.calls: list[tuple[str, ...] | tuple[Any, ...]] = []

    def _check(self) -> None:
        if self.refuse is not None:
            raise self.refuse

    def list_network_objects(self, kind: str) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        self._check()
        return self.objects.get(kind, [])

    def get_network_object(self, kind: str, key: str) -> tuple[dict[str, Any], int]:
        self.calls.append(("get", kind, key))
        self._check()
        return next(o for o in self.objects[kind] if str(o.get("id", o.get("tag"))) == key), 3

    def create_network_object(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", kind, obj))
        self._check()
        return obj

    def delete_network_object(self, kind: str, key: str) -> bool:
        self.calls.append(("delete", kind, key))
        self._check()
        return True


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StubApi:
    stub = StubApi({"subnets": [SUBNET], "flavors": [FLAVOR], "fwgroups": [WEB], "networks": [{"id": "net1", "metadata": {"a": "b"}}],
                    "vlans": [{"tag": 100, "description": "front"}]})

    @contextmanager
    def client(_args: Any) -> Iterator[StubApi]:
        yield stub

    monkeypatch.setattr(network_cli, "client", client)
    return stub


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["--url", "http://127.0.0.1:9", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_subnet_list_is_a_table(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _err = run(capsys, "subnet", "list")
    assert code == 0
    assert lines[0].split() == ["ID", "NETWORK", "CIDR", "GATEWAY", "START", "END", "DNS"]
    assert lines[1].split() == ["sub4", "net1", "10.10.0.0/24", "10.10.0.1", "10.10.0.10", "10.10.0.250",
                                "10.10.0.2,10.10.0.3"]
    # Columns line up: every cell starts where its header does.
    assert lines[1].index("10.10.0.0/24") == lines[0].index("CIDR")
    assert api.calls == [("list", "subnets")]
    # ``snooze subnet`` alone lists too.
    assert run(capsys, "subnet")[1] == lines


def test_flavor_and_vlan_tables_say_units(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    _c, lines, _e = run(capsys, "flavor")
    assert lines[0].split() == ["ID", "VCPUS", "MEMORY", "DISK", "RX", "TX", "IMAGE"]
    assert "2.0 GiB" in lines[1] and "unlimited" in lines[1] and "1000 KiB/s" in lines[1]
    _c, lines, _e = run(capsys, "vlan", "list")
    assert [line.split() for line in lines] == [["TAG", "DESCRIPTION"], ["100", "front"]]
    _c, lines, _e = run(capsys, "network", "list", "--json")
    assert json.loads("\n".join(lines)) == {"networks": [{"id": "net1", "metadata": {"a": "b"}}]}


def test_show_prints_fields_and_a_groups_rules(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _e = run(capsys, "fwgroup", "show", "web")
    assert code == 0
    assert lines[0].split() == ["FIELD", "VALUE"]
    assert lines[1].split() == ["ID", "web"]
    rules = lines[lines.index("") + 1:]
    assert rules[0].split() == ["#", "ACTION", "PROTOCOL", "PORTS", "FROM"]
    assert rules[1].split() == ["0", "allow", "tcp", "80-81", "0.0.0.0/0"]
    assert rules[2].split() == ["1", "deny", "all", "all", "group", "admin"]
    assert lines[-1] == "version 3"
    _c, lines, _e = run(capsys, "subnet", "show", "sub4")
    assert ["CIDR", "10.10.0.0/24"] in [line.split() for line in lines]


def test_create_sends_the_flags_over_the_json_file(api: StubApi, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, _l, err = run(capsys, "subnet", "create", "s1", "--network", "n1", "--cidr", "10.1.0.0/24", "--dns", "10.1.0.2",
                        "--metadata", "owner=ops")
    assert code == 0, err
    assert api.calls[-1] == ("create", "subnets", {"id": "s1", "network": "n1", "cidr": "10.1.0.0/24", "dns": ["10.1.0.2"],
                                                   "metadata": {"owner": "ops"}})
    body = tmp_path / "fw.json"
    body.write_text(json.dumps({"id": "fromfile", "rules": [], "metadata": {"k": "v"}}))
    code, _l, err = run(capsys, "fwgroup", "create", "--json", str(body), "--rule", "tcp,22,@admin", "--rule",
                        "udp,5000-5010,2001:db8::/32,deny", "--rule", "icmp,,any")
    assert code == 0, err
    assert api.calls[-1] == ("create", "fwgroups", {"id": "fromfile", "metadata": {"k": "v"}, "rules": [
        {"protocol": "tcp", "action": "allow", "portStart": 22, "portEnd": 22, "group": "admin"},
        {"protocol": "udp", "action": "deny", "portStart": 5000, "portEnd": 5010, "source": "2001:db8::/32"},
        {"protocol": "icmp", "action": "allow"}]})
    monkeypatch.setattr("sys.stdin", io.StringIO('{"tag": 7}'))
    code, _l, err = run(capsys, "vlan", "create", "--json", "-", "--description", "seven")
    assert code == 0, err
    assert api.calls[-1] == ("create", "vlans", {"tag": 7, "description": "seven"})
    code, _l, err = run(capsys, "vlan", "create", "8")
    assert code == 0, err
    assert api.calls[-1] == ("create", "vlans", {"tag": 8})


@pytest.mark.parametrize("argv, says", [
    (("network", "create"), "give the network's id"),
    (("fwgroup", "create", "w", "--rule", "tcp,22"), "PROTOCOL,PORTS,FROM"),
    (("fwgroup", "create", "w", "--rule", "tcp,ssh,any"), "ports 'ssh'"),
    (("network", "create", "n", "--metadata", "novalue"), "KEY=VALUE"),
    (("network", "create", "--json", "/nonexistent/x.json"), "--json /nonexistent/x.json"),
])
def test_bad_create_input_is_one_line(api: StubApi, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                      says: str) -> None:
    code, _l, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("snooze: BAD_REQUEST: ") and says in err and err.count("\n") == 1, err
    assert not any(c[0] == "create" for c in api.calls)


def test_a_refusal_is_one_line_with_its_code(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.refuse = SnoozeClientError("NETWORK_OBJECT_IN_USE", "network net1 is in use by subnet:sub4", "id", 409)
    code, lines, err = run(capsys, "network", "delete", "net1")
    assert (code, lines) == (1, [])
    assert err == "snooze: NETWORK_OBJECT_IN_USE: network net1 is in use by subnet:sub4\n"
