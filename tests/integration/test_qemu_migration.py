"""Live migration between two real libvirtd + QEMU hosts, and the test driver's non-live move.

Needs root and the packages of scripts/install-qemu.sh: without them these tests fail (CI
installs them), they do not skip. Run with ``-s`` to see the measured timings.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from localcontroller.hypervisor.errors import MigrationFailed, UnsupportedOperation
from localcontroller.hypervisor.migration import (
    MigrationSettings,
    migrate_domain,
)
from snooze.dev.sim.libvirtd import (
    LibvirtdCluster,
    LibvirtdHost,
    missing_components,
    tiny_domain_xml,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE_XML = (
    "<node><cpu><mhz>2400</mhz><model>x86_64</model><active>8</active><total>8</total>"
    "<nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads></cpu>"
    "<memory>16777216</memory></node>"
)


def _require_qemu() -> None:
    missing = missing_components()
    if missing:
        pytest.fail(
            "real migration needs libvirtd and QEMU, missing: "
            + ", ".join(missing)
            + " -- run scripts/install-qemu.sh as root",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("private libvirtd hosts need root", pytrace=False)


def _short_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A state dir whose socket paths fit in sun_path (108 bytes)."""
    path = tmp_path_factory.mktemp(name)
    if len(str(path)) > 60:
        path = Path(tempfile.mkdtemp(prefix=f"snooze-{name}-", dir="/tmp"))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LibvirtdHost]]:
    _require_qemu()
    state_dir = _short_dir(tmp_path_factory, "lv")
    started = time.monotonic()
    with LibvirtdCluster(state_dir, count=2) as running:
        print(f"\n[timing] 2 libvirtd hosts started in {time.monotonic() - started:.2f} s")
        yield running.hosts


def _remove_all(conn: libvirt.virConnect) -> None:
    for domain in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isActive():
                domain.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isPersistent():
                domain.undefine()


@pytest.fixture
def conns(cluster: list[LibvirtdHost]) -> Iterator[tuple[libvirt.virConnect, libvirt.virConnect]]:
    source = libvirt.open(cluster[0].uri)
    destination = libvirt.open(cluster[1].uri)
    try:
        yield source, destination
    finally:
        for conn in (source, destination):
            _remove_all(conn)
            conn.close()


def _start(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    domain = conn.defineXML(tiny_domain_xml(name))
    domain.create()
    return domain


def _names(conn: libvirt.virConnect) -> list[str]:
    return sorted(domain.name() for domain in conn.listAllDomains(0))


def _assert_running(domain: libvirt.virDomain) -> None:
    state, _ = domain.state()
    assert state == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.parametrize("method", ["live", "nonshared-incremental", "nonshared-full"])
def test_migration_moves_the_running_domain(
    cluster: list[LibvirtdHost],
    conns: tuple[libvirt.virConnect, libvirt.virConnect],
    method: str,
) -> None:
    source, destination = conns
    started = time.monotonic()
    domain = _start(source, "vm-move")
    print(f"\n[timing] tiny domain defined and started in {time.monotonic() - started:.2f} s")
    uuid = domain.UUIDString()

    result = migrate_domain(
        domain, cluster[1].uri, cluster[1].migration_uri, MigrationSettings(method=method)
    )
    print(
        f"[timing] {method} migration: {result.duration:.2f} s "
        f"({result.libvirt_seconds:.2f} s in libvirt)"
    )

    arrived = destination.lookupByUUIDString(uuid)
    _assert_running(arrived)
    assert arrived.isPersistent()
    assert _names(source) == []
    assert not result.paused_to_converge
    assert not result.switched_to_post_copy


def test_timeout_pauses_to_converge_and_the_domain_runs_at_the_destination(
    cluster: list[LibvirtdHost], conns: tuple[libvirt.virConnect, libvirt.virConnect]
) -> None:
    source, destination = conns
    domain = _start(source, "vm-pause")

    result = migrate_domain(
        domain, cluster[1].uri, cluster[1].migration_uri, MigrationSettings(timeout=0)
    )

    assert result.paused_to_converge
    _assert_running(destination.lookupByName("vm-pause"))
    assert _names(source) == []


def test_timeout_switches_to_post_copy_when_allowed(
    cluster: list[LibvirtdHost], conns: tuple[libvirt.virConnect, libvirt.virConnect]
) -> None:
    source, destination = conns
    domain = _start(source, "vm-postcopy")

    result = migrate_domain(
        domain,
        cluster[1].uri,
        cluster[1].migration_uri,
        # Capped bandwidth keeps pre-copy running long enough for the switch to be accepted;
        # an idle 32 MiB domain could otherwise finish before post-copy is possible.
        MigrationSettings(timeout=0, post_copy=True, bandwidth_mib=1),
    )

    assert result.switched_to_post_copy
    assert not result.paused_to_converge
    _assert_running(destination.lookupByName("vm-postcopy"))
    assert _names(source) == []


def test_migration_to_a_stopped_daemon_fails_and_the_domain_stays(
    tmp_path_factory: pytest.TempPathFactory,
    cluster: list[LibvirtdHost],
    conns: tuple[libvirt.virConnect, libvirt.virConnect],
) -> None:
    source, _ = conns
    domain = _start(source, "vm-stopped-dest")
    other = LibvirtdCluster(_short_dir(tmp_path_factory, "gone"), count=1)
    with other:
        gone = other.hosts[0]

    with pytest.raises(MigrationFailed):
        migrate_domain(domain, gone.uri, gone.migration_uri, MigrationSettings())

    _assert_running(domain)
    assert domain.isPersistent()


def test_name_clash_at_the_destination_fails_and_touches_nothing(
    cluster: list[LibvirtdHost], conns: tuple[libvirt.virConnect, libvirt.virConnect]
) -> None:
    source, destination = conns
    domain = _start(source, "vm-clash")
    squatter = destination.defineXML(tiny_domain_xml("vm-clash"))

    with pytest.raises(MigrationFailed, match="already exists"):
        migrate_domain(domain, cluster[1].uri, cluster[1].migration_uri, MigrationSettings())

    _assert_running(domain)
    assert [d.UUIDString() for d in destination.listAllDomains(0)] == [squatter.UUIDString()]
    assert not squatter.isActive()


def test_failure_inside_libvirt_leaves_nothing_at_the_destination(
    cluster: list[LibvirtdHost], conns: tuple[libvirt.virConnect, libvirt.virConnect]
) -> None:
    source, destination = conns
    domain = _start(source, "vm-busy-port")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        with pytest.raises(MigrationFailed, match="Address already in use"):
            migrate_domain(domain, cluster[1].uri, f"tcp://127.0.0.1:{port}", MigrationSettings())

    _assert_running(domain)
    assert _names(destination) == []


def test_watchdog_abort_resumes_the_domain_at_the_source(
    cluster: list[LibvirtdHost], conns: tuple[libvirt.virConnect, libvirt.virConnect]
) -> None:
    source, destination = conns
    domain = _start(source, "vm-abort")

    with pytest.raises(MigrationFailed, match="aborted"):
        migrate_domain(
            domain,
            cluster[1].uri,
            cluster[1].migration_uri,
            MigrationSettings(timeout=0, abort_after=0),
        )

    _assert_running(domain)
    assert _names(destination) == []


def test_stopping_the_cluster_kills_its_qemu_processes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    _require_qemu()
    state_dir = _short_dir(tmp_path_factory, "stop")
    cluster = LibvirtdCluster(state_dir, count=1)
    with cluster:
        host = cluster.hosts[0]
        conn = libvirt.open(host.uri)
        try:
            _start(conn, "vm-left-running")
        finally:
            conn.close()
        qemu_pid = int((host.state_dir / "run/libvirt/qemu/vm-left-running.pid").read_text())
        assert Path(f"/proc/{qemu_pid}").exists()

    assert not Path(f"/proc/{qemu_pid}").exists()
    assert not Path(f"/proc/{host.pid}").exists()


@pytest.fixture
def test_driver_hosts(tmp_path: Path) -> Iterator[tuple[libvirt.virConnect, libvirt.virConnect]]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    # Each open() of a custom node file is a separate, fresh simulated host.
    first = libvirt.open(f"test://{node}")
    second = libvirt.open(f"test://{node}")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_test_driver_cannot_live_migrate(
    test_driver_hosts: tuple[libvirt.virConnect, libvirt.virConnect],
) -> None:
    source, _ = test_driver_hosts
    domain = _start(source, "vm-test")

    with pytest.raises(UnsupportedOperation):
        migrate_domain(domain, source.getURI(), None, MigrationSettings())

    _assert_running(domain)
