"""The deployment artefacts: the systemd units (checked by ``systemd-analyze verify``), the
compose file (checked by ``docker-compose config``) and the operator's guide that describes
them (docs/deploy.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snooze import config as cfg
from tests.deploy_doc import GUIDE, ROOT, UNITS, blocks, unit_command

ROLES = ["bootstrap", "groupmanager", "localcontroller"]


# -- systemd units -------------------------------------------------------------------------------

def _verify(units: list[Path], tmp_path: Path, *, stand_ins: bool = True) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``units`` in a private root: the machine's own unit
    directory (for the targets they name), the units in /etc/systemd/system, and a stand-in
    executable at each ExecStart path (verify refuses a command that does not exist; the project
    is not installed in /opt/snooze here). Needs no running systemd."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd package, which scripts/setup installs"
    root = tmp_path / "root"
    system = Path("/usr/lib/systemd/system")
    assert system.is_dir(), "the systemd package's unit directory"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, etc / unit.name)
        for line in unit.read_text().splitlines():
            if stand_ins and line.startswith("ExecStart="):
                binary = root / line.partition("=")[2].split()[0].lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\n")
                binary.chmod(0o755)
    return subprocess.run([analyze, f"--root={root}", "verify", *(u.name for u in units)],
                          capture_output=True, text=True, timeout=60)


def test_systemd_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    units = sorted(UNITS.glob("*.service"))
    assert [u.name for u in units] == [f"snooze-{r}.service" for r in ROLES]
    out = _verify(units, tmp_path)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: an unknown key, and a command that does not exist, are reported.
    broken = tmp_path / "snooze-broken.service"
    broken.write_text((UNITS / "snooze-groupmanager.service").read_text().replace(
        "Restart=on-failure", "Restart=on-failure\nRestartEvery=2"))
    out = _verify([broken], tmp_path / "a")
    assert "Unknown key" in out.stderr and "RestartEvery" in out.stderr
    out = _verify([UNITS / "snooze-groupmanager.service"], tmp_path / "b", stand_ins=False)
    assert out.returncode != 0 and "/opt/snooze/bin/snooze-groupmanager is not executable" in out.stderr


def _unit(role: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (UNITS / f"snooze-{role}.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            keys.setdefault(key, []).append(value)
    return keys


@pytest.mark.parametrize("role", ROLES)
def test_each_unit_runs_its_role_from_its_config_with_the_key_file_and_restarts_on_failure(role: str) -> None:
    unit = _unit(role)
    argv, env_file = unit_command(role)
    assert argv == [f"/opt/snooze/bin/snooze-{role}", "--config", f"/etc/snooze/{role}.toml"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"snooze-{role}" in scripts, "ExecStart names the project's console script"
    assert env_file == "/etc/snooze/cluster.env"
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2"], "a configuration error (exit 2) is not retried"
    assert "network-online.target" in unit["After"][0].split() and "network-online.target" in unit["Wants"][0].split()
    assert unit["User"] == ["snooze"]
    assert unit["WantedBy"] == ["multi-user.target"]
    if role == "localcontroller":
        assert "libvirtd.service" in unit["After"][0].split()
        assert unit["SupplementaryGroups"] == ["libvirt"], "the LC reaches qemu:///system through the libvirt group"


# -- compose file ----------------------------------------------------------------------------------

def _compose(*args: str, key: str | None = "test-key") -> subprocess.CompletedProcess[str]:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is installed by scripts/setup"
    env = {k: v for k, v in os.environ.items() if k != "SNOOZE_CLUSTER_KEY"}
    if key is not None:
        env["SNOOZE_CLUSTER_KEY"] = key
    return subprocess.run([compose, "-f", "docker-compose.yml", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _compose_config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it, parsed by docker-compose's own Python
    (Debian's docker-compose depends on python3-yaml; the project's environment has no YAML)."""
    out = _compose("config")
    assert out.returncode == 0, out.stderr
    compose = shutil.which("docker-compose")
    assert compose
    python = Path(compose).read_text().splitlines()[0].removeprefix("#!").split()
    parsed = subprocess.run([*python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                            input=out.stdout, capture_output=True, text=True, check=True, timeout=60)
    config: dict[str, Any] = json.loads(parsed.stdout)
    return config


def _options(command: str) -> dict[str, str]:
    """--set SECTION.OPTION=VALUE (and --zookeeper, --id) of a role's command line."""
    words = command.split()
    found: dict[str, str] = {}
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--set":
            k, _, v = value.partition("=")
            found[k] = v
        elif flag in ("--zookeeper", "--id", "--config"):
            found[flag] = value
    return found


def test_compose_file_is_valid_and_needs_a_cluster_key() -> None:
    out = _compose("config", "-q")
    assert out.returncode == 0, out.stderr
    out = _compose("config", "-q", key=None)
    assert out.returncode != 0 and "SNOOZE_CLUSTER_KEY" in out.stderr, "no insecure default key"


def test_compose_ships_3_group_managers_a_zookeeper_health_wait_and_explicit_addresses() -> None:
    services = _compose_config()["services"]
    roles = {name: svc["command"][0] if isinstance(svc["command"], list) else svc["command"].split()[0]
             for name, svc in services.items() if name != "zookeeper"}
    assert sorted(r for r in roles.values()) == sorted(
        ["snooze-bootstrap"] + ["snooze-groupmanager"] * 3 + ["snooze-localcontroller"] * 3)
    # ZooKeeper is healthy once 'srvr' answers with Mode:, and every role waits for that.
    zk = services["zookeeper"]
    assert "srvr" in " ".join(zk["healthcheck"]["test"]) and "Mode:" in " ".join(zk["healthcheck"]["test"])
    assert "srvr" in zk["environment"]["ZOO_4LW_COMMANDS_WHITELIST"]
    zk_ip = zk["networks"]["snooze"]["ipv4_address"]
    advertised: list[str] = []
    for name, role in roles.items():
        svc = services[name]
        assert svc["depends_on"]["zookeeper"]["condition"] == "service_healthy", name
        command = svc["command"] if isinstance(svc["command"], str) else " ".join(svc["command"])
        opts = _options(command)
        assert opts["--zookeeper"] == f"{zk_ip}:2181", name
        assert opts["--config"] == f"/opt/snooze/configs/{role.removeprefix('snooze-')}.toml"
        # Listens everywhere in its container, tells peers its fixed address on the network.
        assert opts["node.listen_address"] == "0.0.0.0", name
        assert opts["node.advertise_address"] == svc["networks"]["snooze"]["ipv4_address"], name
        advertised.append(opts["node.advertise_address"])
    assert len(set(advertised)) == len(advertised)


def test_each_compose_local_controller_simulates_its_own_host() -> None:
    services = _compose_config()["services"]
    mounted: list[Path] = []
    for name, svc in services.items():
        if not name.startswith("localcontroller"):
            continue
        opts = _options(svc["command"] if isinstance(svc["command"], str) else " ".join(svc["command"]))
        uri = opts["localcontroller.hypervisor_uri"]
        assert uri != "test:///default", "each local controller its own host, not one shared default"
        [volume] = svc["volumes"]
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        assert uri == f"test://{target}", name
        host = Path(source)
        assert host.is_file() and host.is_relative_to(ROOT / "deploy/compose/hosts"), host
        conn = libvirt.open(f"test://{host}")  # libvirt's test driver reads it as a host
        try:
            assert conn.getInfo()[2] >= 1
        finally:
            conn.close()
        mounted.append(host)
    assert len(mounted) == 3 and len(set(mounted)) == 3


# -- the guide -------------------------------------------------------------------------------------

def test_guide_has_the_blocks_its_test_runs_and_the_readme_links_it() -> None:
    found = blocks()
    assert {"key", "configure", "test-hypervisor", "health", "admin-token", "hierarchy"} <= set(found)
    # What the configure block changes are real keys of the shipped configs, each on one line.
    for role in ROLES:
        text = (ROOT / "configs" / f"{role}.toml").read_text()
        keys = re.findall(r'"s\|\^(\w+) = \.\*\|', found["configure"])
        assert "listen_address" in keys and "zookeeper" in keys
        for key in keys:
            assert len(re.findall(rf"^{key} = ", text, re.M)) == 1, (role, key)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running roles on their own"):]
    assert "(docs/deploy.md)" in section[:section.index("\n## ", 3)]


def test_guide_names_each_roles_default_port_and_the_other_ports_to_open() -> None:
    text = GUIDE.read_text()
    ports = text[text.index("## Ports to open"):text.index("## systemd units")]
    for port in cfg.DEFAULT_PORTS.values():
        assert re.search(rf"^\| {port} \| TCP and UDP \|", ports, re.M), port
    for needed in ("5353", "2181", "2888", "3888", "16509", "49152", "multicast"):
        assert needed in ports, needed
    for link in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", text):
        assert (GUIDE.parent / link).is_file(), link
    for unit in UNITS.glob("*.service"):
        assert unit.name in text
