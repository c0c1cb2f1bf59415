"""Many local controllers in one process (``python -m localcontroller.many``), each a whole local
controller with its own id, port, libvirt test host and ZooKeeper session, against a real
cluster: all join, each assigned once, each on its own port; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from snooze.dev.localcluster import host_xml
from tests.support import get, port_range, wait_for

pytestmark = [pytest.mark.integration]

COUNT = 30


def listed(c: Any) -> dict[str, dict[str, Any]]:
    return {lc["id"]: lc for lc in get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]}


def test_thirty_local_controllers_in_one_process_join_and_leave_as_separate_hosts(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=0)
    base = port_range(COUNT)
    argv = [sys.executable, "-m", "localcontroller.many", "--start-concurrency", "10"]
    for i in range(COUNT):
        xml = c.state_dir / "hosts" / f"many-{i}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(host_xml(4, 8 * 1024 * 1024))
        argv += ["--config", str(c._write_config("localcontroller", f"many-{i}", base + i,
                                                 {"localcontroller.hypervisor_uri": f"test://{xml}"}))]
    log = open(c.state_dir / "logs" / "many.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(listed(c)) == COUNT, 60, f"{COUNT} local controllers listed")
        lcs = listed(c)
        assert set(lcs) == {f"many-{i}" for i in range(COUNT)}
        assert {lc["controlDataAddress"]["port"] for lc in lcs.values()} == set(range(base, base + COUNT)), \
            "each on its own port"
        hierarchy = c.hierarchy()
        assert hierarchy is not None
        assigned = [lc["id"] for gm in hierarchy["groupManagerDescriptions"] for lc in gm.get("localControllers") or []]
        assert sorted(assigned) == sorted(lcs), "every local controller assigned to exactly one group manager"
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(lambda: not listed(c), 30, "every local controller gone from the hierarchy")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_a_duplicate_id_is_refused_before_anything_starts(tmp_path: Any) -> None:
    cfg = tmp_path / "lc.toml"
    cfg.write_text('[node]\nid = "twin"\n[localcontroller]\nhypervisor_uri = "test:///default"\n')
    out = subprocess.run([sys.executable, "-m", "localcontroller.many", "--config", str(cfg), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "'twin' given twice" in out.stderr, out
