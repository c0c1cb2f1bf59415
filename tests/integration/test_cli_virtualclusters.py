"""The original snoozeclient's commands in the ``snooze`` CLI, against a real local cluster:
define, add, list, start (progress, then a table), info, suspend/resume/destroy of the whole
cluster by name, remove, undefine, and dump (the hierarchy as GraphML)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from snooze.cli import main
from snooze.cli.virtualclusters import GRAPHML_NS

pytestmark = pytest.mark.integration


def test_cluster_definitions_round_trip(cluster_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster_factory(gms=2, lcs=2)
    defs = str(tmp_path / "vcs.json")
    local = ["--definitions", defs]
    remote = [*local, "--url", c.bootstrap_url]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("define", "web", *local)[0] == 0
    assert run("define", "web", *local)[0] == 1  # already defined
    assert run("add", "web", "--count", "2", "--vcpus", "1", "--memory-mib", "128", *local)[0] == 0
    assert run("add", "web", "--vcpus", "2", "--memory-mib", "256", *local)[0] == 0
    code, out, _ = run("list", "--json", *local)
    names = [t["name"] for t in json.loads(out)["virtualClusters"]["web"]["templates"]]
    assert names == ["web-1", "web-2", "web-3"]
    assert run("remove", "web", "web-3", *local)[0] == 0
    assert run("remove", "web", "web-3", *local)[0] == 1

    code, out, err = run("start", "web", *remote)
    assert code == 0, err
    assert "started virtual cluster web" in err and "web-1" in out and "RUNNING" in out
    assert json.loads(Path(defs).read_text())["virtualClusters"]["web"]["vms"] == ["web-1", "web-2"]

    code, out, _ = run("info", "web", "--json", *remote)
    assert code == 0 and {vm["status"] for vm in json.loads(out)} == {"RUNNING"}
    code, out, _ = run("suspend", "web", *remote)
    assert code == 0 and "suspended web-1" in out and "suspended virtual cluster web (2 VMs)" in out
    code, out, _ = run("info", "web", "--json", *remote)
    assert {vm["status"] for vm in json.loads(out)} == {"PAUSED"}
    assert run("resume", "web-2", "--vm", *remote)[0] == 0  # one VM of it, by id

    code, out, _ = run("dump", *remote)
    graph = ET.fromstring(out)
    nodes = {n.get("id"): {d.get("key"): d.text for d in n} for n in graph.iter(f"{{{GRAPHML_NS}}}node")}
    assert {n["type"] for n in nodes.values()} == {"GroupLeader", "GroupManager", "LocalController", "VirtualMachine"}
    assert {"vm:web-1", "vm:web-2"} <= set(nodes)
    edges = {(e.get("source"), e.get("target")) for e in graph.iter(f"{{{GRAPHML_NS}}}edge")}
    assert sum(1 for s, t in edges if t in ("vm:web-1", "vm:web-2") and str(s).startswith("lc:")) == 2

    code, out, _ = run("destroy", "web", *remote)
    assert code == 0 and "destroyed virtual cluster web" in out
    code, out, _ = run("info", "web", "--json", *remote)
    assert {vm["status"] for vm in json.loads(out)} == {"NOT RUNNING"}
    assert run("undefine", "web", *local)[0] == 0
    code, out, _ = run("list", *local)
    assert "no virtual clusters defined" in out
