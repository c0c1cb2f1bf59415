"""The local cluster at scale, planned but not started: local controllers grouped into shared
processes (``--lcs-per-process``), a ZooKeeper ensemble's connection string and record
(``--zookeeper-ensemble``), the per-address connection limit raised with the cluster's size on
127.0.0.1, the options refused, and ``snooze cluster up``'s flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from snooze import config as cfg
from snooze.cli import build_parser
from snooze.dev.localcluster import ClusterError, ClusterOptions, LocalCluster, _manifest_entries
from snooze.dev.ports import free_port
from snooze.dev.zookeeper import ZooKeeperEnsemble, ZooKeeperServer
from tests.support import port_range


def planned(state: Path, ensemble: int = 1, **kw: Any) -> LocalCluster:
    """Prepared and planned (configs written), nothing started."""
    lcs = kw.pop("lcs", 5)
    cluster = LocalCluster(state, ClusterOptions(base_port=port_range(3 + lcs), gms=2, lcs=lcs, ec2=False,
                                                 zookeeper_ensemble=ensemble, **kw))
    cluster.prepare()
    if ensemble > 1:
        cluster.ensemble = ZooKeeperEnsemble(state / "zookeeper", ensemble)  # never started: addresses only
    else:
        cluster.zk = ZooKeeperServer(state / "zookeeper", free_port())
    cluster.processes = cluster.plan()
    cluster.write_manifest()
    return cluster


def test_local_controllers_share_processes_in_groups_of_the_asked_size(tmp_path: Path) -> None:
    c = planned(tmp_path, lcs=5, lcs_per_process=2)
    groups = c.groups()
    assert {name: [m["id"] for m in members] for name, members in groups.items()} == {
        "lcs-1": ["lc-1", "lc-2"], "lcs-2": ["lc-3", "lc-4"], "lcs-3": ["lc-5"]}
    lcs = [p for p in c.processes if p["role"] == "localcontroller"]
    assert len({p["port"] for p in lcs}) == 5 and len({p["config"] for p in lcs}) == 5, "each its own port and config"
    assert {p["log"] for p in groups["lcs-1"]} == {str(c.state_dir / "logs" / "lcs-1.log")}
    for spec in lcs:
        assert cfg.load(spec["config"], "localcontroller").node.id == spec["id"]
    manifest = json.loads(c.manifest_path.read_text())
    assert [g["members"] for g in manifest["localControllerProcesses"]] == [["lc-1", "lc-2"], ["lc-3", "lc-4"], ["lc-5"]]


def test_one_process_each_by_default(tmp_path: Path) -> None:
    c = planned(tmp_path)
    assert c.groups() == {}
    assert "localControllerProcesses" not in json.loads(c.manifest_path.read_text())


def test_an_ensemble_is_given_whole_to_every_role_and_recorded_server_by_server(tmp_path: Path) -> None:
    c = planned(tmp_path, ensemble=3)
    assert c.ensemble is not None
    address = c.zookeeper_address
    assert address.count(",") == 2 and address == c.ensemble.address
    for spec in c.processes:
        assert cfg.load(spec["config"], spec["role"]).cluster.zookeeper == address
    manifest = json.loads(c.manifest_path.read_text())
    assert manifest["zookeeper"] == address and "zookeeperPid" not in manifest
    assert [s["port"] for s in manifest["zookeeperServers"]] == [s.port for s in c.ensemble.servers]
    assert all({"pid", "port"} <= set(s) for s in manifest["zookeeperServers"])
    # Once launched, each server's PID is recorded, with what its command line must hold.
    manifest["zookeeperServers"] = [{**s, "pid": 10_000 + i} for i, s in enumerate(manifest["zookeeperServers"])]
    c.manifest_path.write_text(json.dumps(manifest))
    entries = {name: (pid, marker) for name, pid, marker in _manifest_entries(c.manifest_path)}
    assert entries["zookeeper-2"] == (10_001, str(c.ensemble.servers[1].data_dir))


def test_the_ensembles_ports_keep_clear_of_every_port_the_roles_will_bind(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    c = planned(tmp_path, lcs=5)
    c.options.ec2 = True  # its port, after the roles'
    roles = {port for port, _ in c.ports()}
    assert c.ec2_port in roles
    # A port free now, chosen before the roles bind theirs, may be one of them: the first
    # ports offered are a local controller's and the EC2 API's (a 200-host cluster lost lc-198
    # to a ZooKeeper server's port that way).
    offered = iter([c.options.base_port + 4, c.ec2_port, *range(60_100, 60_200)])
    monkeypatch.setattr("snooze.dev.localcluster.free_port", lambda: next(offered))

    ensemble = ZooKeeperEnsemble(tmp_path / "zk", 3, port=c._spare_port)

    taken = [port for peer in ensemble.servers[0].peers
             for port in (peer.client_port, peer.quorum_port, peer.election_port)]
    assert len(set(taken)) == 9 and not set(taken) & roles, taken


def test_the_per_address_connection_limit_grows_with_a_big_cluster_on_loopback(tmp_path: Path) -> None:
    default = cfg.NodeSettings().http_max_connections_per_client
    small = planned(tmp_path / "small", lcs=4)
    for spec in small.processes:
        assert cfg.load(spec["config"], spec["role"]).node.http_max_connections_per_client == default
    big = planned(tmp_path / "big", lcs=300, lcs_per_process=150)
    limits = {spec["role"]: cfg.load(spec["config"], spec["role"]).node.http_max_connections_per_client
              for spec in big.processes}
    # The group managers (the leader among them) and the bootstrap: every LC may hold one.
    assert limits["groupmanager"] >= 300 + default and limits["bootstrap"] >= 300 + default
    assert limits["localcontroller"] == default
    # --set still wins.
    mine = planned(tmp_path / "set", lcs=300, lcs_per_process=150, extra={"node.http_max_connections_per_client": 0})
    assert {cfg.load(s["config"], s["role"]).node.http_max_connections_per_client for s in mine.processes} == {0}


@pytest.mark.parametrize(("options", "why"), [
    ({"lcs_per_process": 0}, "must be >= 1"),
    ({"lcs_per_process": 10, "energy": True}, "not with"),
    ({"zookeeper_ensemble": 2}, "must be odd"),
    ({"zookeeper_ensemble": 3, "zk_port": 2181}, "not with"),
])
def test_options_that_cannot_work_are_refused_before_anything_starts(tmp_path: Path, options: dict[str, Any], why: str) -> None:
    cluster = LocalCluster(tmp_path, ClusterOptions(base_port=port_range(8), gms=2, lcs=4, ec2=False, **options))
    with pytest.raises(ClusterError, match=why):
        cluster.prepare()
    assert not cluster.manifest_path.exists()


def test_cluster_up_takes_the_scale_flags() -> None:
    args = build_parser().parse_args(["cluster", "up", "--lcs", "2000", "--lcs-per-process", "250", "--gms", "41",
                                      "--zookeeper-ensemble", "3", "--set", "groupmanager.virtual_machine_subnet=10.64.0.0/16"])
    from snooze.cli.cluster import _options

    o = _options(args)
    assert (o.lcs, o.lcs_per_process, o.gms, o.zookeeper_ensemble) == (2000, 250, 41, 3)
    assert o.extra == {"groupmanager.virtual_machine_subnet": "10.64.0.0/16"}
