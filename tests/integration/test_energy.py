"""Energy management over real IPMI: idle hosts are powered down through their local
controller (their simulated BMC then reports chassis power off), and woken over IPMI
(ipmitool's lanplus protocol, pyghmi client) when a submission needs them. Also the ways a
wake-up fails: a bad BMC password, an unreachable BMC, a BMC whose host never comes back."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from snooze.dev.ports import free_port
from snooze.dev.sim.bmc import CallbackPower, SimulatedBMC
from tests.support import get, http, lc_statuses, wait_for
from tests.support import run_virtual_cluster as run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def chassis(port: int, password: str) -> str:
    out = subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", "admin", "-P", password,
                          "chassis", "power", "status"], capture_output=True, text=True, timeout=20)
    return out.stdout.strip()



def test_idle_hosts_power_down_and_are_woken_over_ipmi_when_needed(cluster_factory: Any) -> None:
    c = cluster_factory(gms=2, lcs=3, energy=True, idle_time=1.0, reserved_nodes=1)
    bmc = {p["id"]: p["bmcPort"] for p in c.processes if p.get("bmcPort")}
    asleep = wait_for(lambda: (lambda s: s if sorted(s.values()) == ["ACTIVE", "PASSIVE", "PASSIVE"] else None)(lc_statuses(c)),
                      20, "two idle hosts powered down, one kept on")
    for lc_id, status in asleep.items():
        expected = "Chassis Power is off" if status == "PASSIVE" else "Chassis Power is on"
        wait_for(lambda lc_id=lc_id, expected=expected: chassis(bmc[lc_id], c.options.bmc_password) == expected, 10, f"{lc_id}'s BMC: {expected}")
    assert len(get(c.bootstrap_url + "/bootstrap?getLocalControllerList")["localControllers"]) == 3, "sleeping hosts stay listed"

    resp = run(c, [{"name": f"big-{i}", "vcpus": 6, "memory": 1048576} for i in range(3)])
    metas = resp["virtualMachineMetaData"]
    assert all(m["status"] == "RUNNING" for m in metas), [(m["virtualMachineId"], m["errorCode"], m["message"]) for m in metas]
    assert {m["virtualMachineLocation"]["localControllerId"] for m in metas} == set(bmc), "each VM needed its own host"
    for lc_id, port in bmc.items():
        assert chassis(port, c.options.bmc_password) == "Chassis Power is on", f"{lc_id} woken over IPMI"
    assert set(lc_statuses(c).values()) == {"ACTIVE"}
    time.sleep(2.5)  # more than idle_time (1 s) and several energy-saver checks
    assert set(lc_statuses(c).values()) == {"ACTIVE"}, "hosts running VMs are never powered down"

    b = c.bootstrap_url + "/bootstrap"
    assert http("POST", b + "?suspendEnergySaver", "") == (200, True)
    for m in metas:
        assert http("POST", b + "?destroyVirtualMachine", m["virtualMachineId"]) == (200, True)
    time.sleep(2.5)
    assert set(lc_statuses(c).values()) == {"ACTIVE"}, "a suspended energy saver powers nothing down"
    assert http("POST", b + "?resumeEnergySaver", "") == (200, True)
    wait_for(lambda: sorted(lc_statuses(c).values()) == ["ACTIVE", "PASSIVE", "PASSIVE"], 20, "idle again after resume")


def test_failed_wakeups_are_reported_per_vm(cluster_factory: Any) -> None:
    # One healthy host that stays on, and three sleeping hosts whose wake-up fails each its own way.
    right = SimulatedBMC(CallbackPower(lambda: None, lambda: None, lambda: False), user="admin", password="right")
    booted = {"on": False}
    noboot = SimulatedBMC(CallbackPower(lambda: booted.update(on=True), lambda: booted.update(on=False), lambda: booted["on"]),
                          user="admin", password="pw")
    right.start()
    noboot.start()
    try:
        c = cluster_factory(gms=2, lcs=0, energy=True, idle_time=1.0, reserved_nodes=1, lc_cpus=4,
                            extra={"groupmanager.wakeup_time": 4.0})
        bad = {
            "lc-badpw": f"-I lanplus -H 127.0.0.1 -p {right.port} -U admin -P wrong",
            "lc-nobmc": f"-I lanplus -H 127.0.0.1 -p {free_port()} -U admin -P pw",
            "lc-noboot": f"-I lanplus -H 127.0.0.1 -p {noboot.port} -U admin -P pw",
        }
        for lc_id, options in bad.items():
            c.add_process("localcontroller", lc_id, {"localcontroller.power_test_mode": True,
                                                     "localcontroller.wakeup_driver": "IPMI",
                                                     "localcontroller.wakeup_options": options})
        wait_for(lambda: sorted(lc_statuses(c)) == sorted(bad), 20, "the three hosts joined")
        c.add_process("localcontroller", "lc-ok", {"localcontroller.power_test_mode": True})
        wait_for(lambda: lc_statuses(c) == {"lc-ok": "ACTIVE", **{k: "PASSIVE" for k in bad}}, 30,
                 "the three powered down, lc-ok kept on")

        resp = run(c, [{"name": "fits", "vcpus": 3, "memory": 262144}, {"name": "needs-more", "vcpus": 3, "memory": 262144}])
        by_id = {m["virtualMachineId"]: m for m in resp["virtualMachineMetaData"]}
        assert by_id["fits"]["status"] == "RUNNING"
        failed = by_id["needs-more"]
        assert failed["status"] == "ERROR" and failed["errorCode"] == "LOCAL_CONTROLLER_WAKEUP_FAILED", failed
        for lc_id in bad:
            assert f"waking {lc_id} failed" in failed["message"], failed["message"]
        assert booted["on"], "the BMC of lc-noboot was powered on, but its host never came back"
        assert lc_statuses(c) == {"lc-ok": "ACTIVE", **{k: "PASSIVE" for k in bad}}, "failed hosts stay wakeable"
    finally:
        right.stop()
        noboot.stop()
