"""The operator's guide (docs/deploy.md) followed on one machine: a real ZooKeeper server, then
1 bootstrap, 3 group managers and 2 local controllers, each a "machine" with its own
/etc/snooze, configured by running the guide's marked blocks on the shipped configs/*.toml and
started with the shipped systemd units' command lines and key file; nothing else is changed.
The hierarchy forms, a VM starts, and every role stops on SIGTERM.

Only what a test on one machine needs differs from the guide: every address is 127.0.0.1
(the guide's ADDRESS), ports are free ones (the guide's PORT), the guide's absolute paths are
moved into the test's directory, and the local controllers use libvirt's test driver with a
host file each (the guide's "test-hypervisor" block).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from snooze import config as cfg
from snooze.dev.localcluster import host_xml
from snooze.dev.zookeeper import ZooKeeperServer
from tests.deploy_doc import environment_file, relocate, run_block, unit_command
from tests.support import http, port_range, wait_for

BIN = Path(sys.executable).parent  # the environment's console scripts stand for /opt/snooze/bin
ROLES = ["bootstrap", "groupmanager", "groupmanager", "groupmanager", "localcontroller", "localcontroller"]


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_a_cluster_deployed_as_the_guide_says_forms_runs_a_vm_and_stops_on_sigterm(
        zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    # The key, made once and copied to every machine, as the guide says.
    key_etc = tmp_path / "first-machine" / "etc" / "snooze"
    run_block("key", key_etc, BIN, {})
    key_file = key_etc / "cluster.env"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = environment_file(key_file)["SNOOZE_CLUSTER_KEY"]
    assert len(key) == 64 and key != cfg.ClusterSettings().key

    base = port_range(len(ROLES))
    procs: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []
    try:
        for n, role in enumerate(ROLES):
            port = base + n
            machine = tmp_path / f"{role}-{port}"
            etc = machine / "etc" / "snooze"
            etc.mkdir(parents=True)
            shutil.copy2(key_file, etc / "cluster.env")  # the guide's scp -p
            run_block("configure", etc, BIN, {"ROLE": role, "ADDRESS": "127.0.0.1",
                                              "ZOOKEEPER": zookeeper.address, "PORT": str(port)})
            if role == "localcontroller":
                host = machine / "host.xml"
                host.write_text(host_xml(8, 16 * 1024 * 1024))
                run_block("test-hypervisor", etc, BIN, {"HOST_FILE": str(host)})
            # The edits took (a shipped config whose keys moved would leave them undone).
            settings = cfg.load(str(etc / f"{role}.toml"), role, {})
            assert (settings.node.listen_address, settings.node.port, settings.cluster.zookeeper) == (
                "127.0.0.1", port, zookeeper.address)
            assert settings.node.id == "" and settings.node.advertise_address == ""
            if role == "localcontroller":
                assert settings.localcontroller.hypervisor_uri == f"test://{host}"

            argv, env_path = unit_command(role)
            argv = [relocate(a, etc, BIN) for a in argv]
            env = environment_file(Path(relocate(env_path, etc, BIN)))
            log = machine / "journal.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
            procs.append((role, port, proc, log))

        def logs() -> str:
            return "".join(f"\n--- {role} :{port}\n" + log.read_text(errors="replace")[-2000:]
                           for role, port, _, log in procs)

        bootstrap = f"127.0.0.1:{base}"
        # The first admin token, as the guide makes it (the API needs one: [auth] is on by default).
        token = run_block("admin-token", tmp_path, BIN, {"ZOOKEEPER": zookeeper.address}).strip()
        assert token.startswith("snz_"), token
        lc_ports = {port for role, port, _, _ in procs if role == "localcontroller"}

        def formed() -> dict[str, Any] | None:
            for role, port, proc, _ in procs:
                assert _alive(proc), f"{role} on {port} exited with {proc.returncode}{logs()}"
            hierarchy: dict[str, Any] = json.loads(run_block("hierarchy", tmp_path, BIN, {"BOOTSTRAP": bootstrap, "SNOOZE_TOKEN": token}))
            gms = hierarchy.get("groupManagerDescriptions", [])
            placed = {lc["controlDataAddress"]["port"]
                      for gm in gms for lc in gm.get("localControllers", [])}
            return hierarchy if placed >= lc_ports else None

        try:
            formed_hierarchy = wait_for(formed, 40, "every local controller under a group manager")
        except AssertionError as exc:
            raise AssertionError(f"{exc}{logs()}") from None
        assert formed_hierarchy is not None
        hierarchy = formed_hierarchy
        leader_port = hierarchy["groupLeaderDescription"]["listenSettings"]["controlDataAddress"]["port"]
        for gm in hierarchy["groupManagerDescriptions"]:
            gm_port = gm["listenSettings"]["controlDataAddress"]["port"]
            assert gm_port != leader_port or not gm.get("localControllers"), "the leader manages no local controller"

        # Each role got the key from the unit's EnvironmentFile and tells peers its listen address.
        for role, port, _, log in procs:
            text = log.read_text(errors="replace")
            assert "insecure development key" not in text, f"{role} on {port} runs with the shipped key"
            assert f"listening on 127.0.0.1 port {port}, advertised to peers as 127.0.0.1" in text, text[-2000:]

        # Every role is healthy by the guide's command.
        for role, port, _, _ in procs:
            health = json.loads(run_block("health", tmp_path, BIN, {"ADDRESS": "127.0.0.1", "PORT": str(port)}))
            assert health["status"] == "ok" and health["role"] == role, health
            assert health["zookeeper"] == "CONNECTED", health

        # A VM starts on one of the local controllers.
        b = f"http://{bootstrap}/bootstrap"
        body = {"virtualMachineTemplates": [{"name": "vm1", "vcpus": 1, "memory": 524288}]}
        status, refused = http("POST", b + "?startVirtualCluster", json.dumps(body))
        assert status == 401, refused  # a deployment's API is not open to anyone
        status, task = http("POST", b + "?startVirtualCluster", json.dumps(body), token=token)
        assert status == 200, task

        def answered() -> dict[str, Any] | None:
            status, got = http("POST", b + "?getVirtualClusterResponse", str(task), token=token)
            assert status == 200, got
            return got or None

        resp = wait_for(answered, 30, "the virtual cluster's response")
        assert resp is not None
        [vm] = resp["virtualMachineMetaData"]
        assert vm["status"] == "RUNNING", vm
        assert vm["virtualMachineLocation"]["localControllerControlDataAddress"]["port"] in lc_ports

        # Every role stops on SIGTERM (what systemctl stop sends), within its unit's TimeoutStopSec.
        for _, _, proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for role, port, proc, _ in procs:
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{role} on {port} still running 30 s after SIGTERM{logs()}") from None
            assert code == 0, f"{role} on {port} exited with {code}{logs()}"
    finally:
        for _, _, proc, _ in procs:
            if _alive(proc):
                proc.kill()
            proc.wait(10)
