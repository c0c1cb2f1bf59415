"""The deployment description and the console scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests import fixtures

ROOT = Path(__file__).resolve().parents[2]


def test_docker_compose_file_is_valid_and_describes_the_deployment() -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is installed by scripts/setup"
    env = dict(os.environ, SNOOZE_CLUSTER_KEY="test-key")  # the compose file has no default key
    check = subprocess.run([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
    services = subprocess.run([compose, "-f", "docker-compose.yml", "config", "--services"], cwd=ROOT,
                              capture_output=True, text=True, check=True, env=env).stdout.split()
    assert sorted(services) == sorted(
        ["zookeeper", "bootstrap", "groupmanager-1", "groupmanager-2", "groupmanager-3",
         "localcontroller-1", "localcontroller-2", "localcontroller-3"]
    )


def test_role_commands_reject_bad_configuration_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "gm.toml"
    bad.write_text("[heartbeat]\ntimeout = 'soon'\n")
    out = subprocess.run([sys.executable, "-m", "groupmanager", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "configuration error: [heartbeat] timeout: expected float" in out.stderr
    out = subprocess.run([sys.executable, "-m", "localcontroller", "--set", "nonsense"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--set expects SECTION.OPTION=VALUE" in out.stderr
    out = subprocess.run([sys.executable, "-m", "groupmanager", "--set", "groupmanager.placement_policy=nope"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "[groupmanager] placement_policy: unknown placement policy 'nope'" in out.stderr
    assert "first-fit" in out.stderr, "the known policies are listed"


def test_seed_libcloud_lines_work_as_written_in_the_project_environment() -> None:
    # The seed's lines up to the driver, in a fresh interpreter that never imported snooze.
    lines = fixtures.libcloud_migration().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("driver = Snooze("))
    seed = "\n".join(lines[: end + 1]) + "\nprint(type(driver).__name__)\n"
    assert "import snooze" not in seed and "from snooze" not in seed
    out = subprocess.run([sys.executable, "-c", seed], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SnoozeNodeDriver"
