"""The operator's guide (docs/deploy.md) as the tests read it: its marked shell blocks.

A block the tests run is a fenced ``sh`` block right after a ``<!-- deploy-test: NAME -->``
line, so the guide's commands and what the tests do cannot drift apart. ``run_block`` runs one
with bash, after moving the guide's absolute paths (``/etc/snooze``, ``/opt/snooze/src``,
``/opt/snooze/bin``) to the test's own, and with the guide's variables in its environment.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deploy.md"
UNITS = ROOT / "deploy" / "systemd"
_BLOCK = re.compile(r"^<!-- deploy-test: ([\w-]+) -->\n```sh\n(.*?)^```$", re.M | re.S)


def blocks(text: str | None = None) -> dict[str, str]:
    """Every marked block of the guide, by name."""
    found: dict[str, str] = {}
    for name, body in _BLOCK.findall(GUIDE.read_text() if text is None else text):
        assert name not in found, f"two blocks marked deploy-test: {name}"
        found[name] = body
    return found


def relocate(text: str, etc: Path, bin_dir: Path) -> str:
    """The guide's paths moved to a test's: its /etc/snooze, this clone, this environment's bin."""
    return (text.replace("/etc/snooze", str(etc))
            .replace("/opt/snooze/src", str(ROOT))
            .replace("/opt/snooze/bin", str(bin_dir)))


def run_block(name: str, etc: Path, bin_dir: Path, env: dict[str, str], timeout: float = 30) -> str:
    """Run the guide's block ``name`` as written (paths relocated); its stdout."""
    script = relocate(blocks()[name], etc, bin_dir)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"deploy-test block {name!r} failed ({out.returncode}): {out.stderr}\n{script}"
    return out.stdout


def unit_command(role: str) -> tuple[list[str], str]:
    """The shipped unit's ExecStart (split) and EnvironmentFile for ``role``."""
    exec_start = env_file = ""
    for line in (UNITS / f"snooze-{role}.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key == "ExecStart":
            exec_start = value
        elif sep and key == "EnvironmentFile":
            env_file = value
    assert exec_start and env_file, f"snooze-{role}.service has ExecStart= and EnvironmentFile="
    return exec_start.split(), env_file


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads an EnvironmentFile (no quoting used in ours)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env
