"""A private libvirtd host on a machine that lacks the directories libvirt-daemon-system would
have made: it makes its own, inside its mount namespace and its state dir, and nothing outside.

A mount point that does not exist on this machine is added to the host's mounts, so the
overlay path runs here even where /var/lib/libvirt and friends exist from earlier work."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from snooze.dev.sim import libvirtd
from snooze.dev.sim.libvirtd import LibvirtdCluster
from tests.integration.test_qemu_migration import _require_qemu, _short_dir

pytestmark = pytest.mark.integration


def inside(pid: int, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in the mount namespace of ``pid``, under its root (``--root``: without it,
    entering a mount namespace from inside a chroot would look at the machine's real root; ``--wd``:
    nor would the working directory exist there)."""
    return subprocess.run(["nsenter", "--target", str(pid), "--mount", "--root", "--wd", "--", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)


def test_a_host_makes_its_missing_directories_inside_its_namespace_only(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_qemu()
    missing = Path(f"/var/lib/snooze-probe-{uuid.uuid4().hex[:8]}/deeper")
    assert not missing.parent.exists()
    monkeypatch.setattr(libvirtd, "_PRIVATE_DIRS", (*libvirtd._PRIVATE_DIRS, (str(missing), "probe")))
    absent_before = [p for p, _ in libvirtd._PRIVATE_DIRS if not os.path.isdir(p)]

    with LibvirtdCluster(_short_dir(tmp_path_factory, "lvdirs"), count=1) as cluster:
        [host] = cluster.hosts
        # The daemon answered (start() checks its host UUID) and logs into its own /var/log/libvirt.
        assert host.log_file.is_file()
        seen = inside(host.pid, "for d in /var/lib/libvirt /var/cache/libvirt /var/log/libvirt "
                                f"{missing}; do test -d $d || echo missing $d; done; "
                                f"echo written > {missing}/marker")
        assert (seen.returncode, seen.stdout, seen.stderr) == (0, "", "")
        assert (host.state_dir / "probe" / "marker").read_text() == "written\n", \
            "the namespace's directory is the host's state dir"
        for path in absent_before:
            assert not os.path.exists(path), f"{path} was created outside the namespace"
    assert not missing.parent.exists()
