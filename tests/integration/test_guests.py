"""Real guests end to end, on the local QEMU cluster (``snooze cluster up --hypervisor qemu``).

The image ``snooze-tiny`` (built from Debian packages by ``snooze.dev.guestimage``) is uploaded
to the bootstrap's repository; two VMs started from it land on the two QEMU hosts, each on its
own qcow2 overlay of the same backing image, boot under TCG, take the address Snooze gave them
from their NoCloud config drive and answer their own name over HTTP — asked from inside their
host's network namespace, the only place the VM subnet exists. A guest then moves to the other
host by a live migration with its disk (non-shared incremental) and keeps answering; its overlay
is only at the destination afterwards. The image cannot be deleted while VMs use it; once they
are destroyed their overlays are gone and it can.

Needs root, QEMU and the guest image's packages (scripts/install-qemu.sh): without them these
tests fail, they do not skip. Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snooze.client.sync import SyncSnoozeClient
from snooze.dev import guestimage
from snooze.dev.localcluster import GUEST_IMAGE, LocalCluster, guest_answer, start_guests
from snooze.dev.sim.libvirtd import LibvirtdHost
from tests.integration.test_qemu_migration import _require_qemu
from tests.support import fast_options, http, port_range, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTANCES = "/var/lib/snooze/instances"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    _require_qemu()
    image = guestimage.ensure_image()
    c = LocalCluster(tmp_path_factory.mktemp("guests") / "cluster",
                     fast_options(gms=2, lcs=2, hypervisor="qemu", guest_image=False, base_port=port_range(1)))
    try:
        started = time.monotonic()
        c.up(wait=True, timeout=120)
        print(f"\n[figure] QEMU cluster (2 hosts) formed in {time.monotonic() - started:.1f} s")
        with SyncSnoozeClient(c.bootstrap_url) as api:
            started = time.monotonic()
            record = api.upload_image(image, GUEST_IMAGE)
            print(f"[figure] {GUEST_IMAGE} ({record['size'] / 2**20:.1f} MiB) uploaded in {time.monotonic() - started:.2f} s")
            assert record["id"] == GUEST_IMAGE and record["format"] == "qcow2" and record["backingStore"] is None
            assert GUEST_IMAGE in [i["id"] for i in api.list_images()]
        yield c
    finally:
        c.down()


def namespaces(c: LocalCluster) -> dict[str, str]:
    return {p["id"]: p["netns"] for p in c.processes if p["role"] == "localcontroller"}


def host_of(c: LocalCluster, lc_id: str) -> LibvirtdHost:
    assert c.hypervisors is not None
    name = c.process(lc_id)["host"]
    return next(h for h in c.hypervisors.hosts if h.name == name)


def inside(host: LibvirtdHost, *argv: str) -> str:
    """Run ``argv`` in the host's mount namespace: paths are the host's own."""
    done = subprocess.run([*host.enter_argv(), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def files(host: LibvirtdHost) -> list[str]:
    return sorted(inside(host, "ls", "-1", INSTANCES).split())


@pytest.fixture(scope="module")
def guests(cluster: LocalCluster) -> list[dict[str, Any]]:
    started = time.monotonic()
    booted = start_guests(cluster.bootstrap_url, 2, namespaces=namespaces(cluster), prefix="tiny", timeout=240)
    assert all(g["status"] == "RUNNING" for g in booted), booted
    answered = sorted(g["seconds"] for g in booted if g["seconds"] is not None)
    print(f"\n[figure] 2 guests submitted together: answering HTTP after {', '.join(f'{s:.1f}' for s in answered)} s "
          f"(all done in {time.monotonic() - started:.1f} s)")
    return booted


def test_two_guests_boot_from_overlays_of_one_image_and_answer_their_names(cluster: LocalCluster,
                                                                             guests: list[dict[str, Any]]) -> None:
    assert {g["localControllerId"] for g in guests} == {"lc-1", "lc-2"}, "one guest on each QEMU host"
    for guest in guests:
        assert guest["answer"] == guest["id"] + "\n", guest
        # Its address is the one Snooze allocated, and only its host's namespace reaches it.
        other = "lc-2" if guest["localControllerId"] == "lc-1" else "lc-1"
        assert guest_answer(namespaces(cluster)[other], guest["ipAddress"], timeout=1.0) is None

    with SyncSnoozeClient(cluster.bootstrap_url) as api:
        checksum = api.get_image(GUEST_IMAGE)["checksum"]
    backings = []
    for guest in guests:
        host = host_of(cluster, guest["localControllerId"])
        assert files(host) == sorted(f"{guest['id']}{suffix}" for suffix in (".qcow2", "-cidata.img", ".json"))
        chain = json.loads(inside(host, "qemu-img", "info", "-U", "--backing-chain", "--output=json",
                                  f"{INSTANCES}/{guest['id']}.qcow2"))
        assert [layer["format"] for layer in chain] == ["qcow2", "qcow2"], "an overlay on the image, not a copy"
        overlay, backing = chain
        assert overlay["backing-filename"] == backing["filename"] and "backing-filename" not in backing
        assert overlay["actual-size"] < backing["actual-size"]
        # The backing file is the host's cached copy of the repository's image, unchanged.
        digest = inside(host, "sha256sum", backing["filename"]).split()[0]
        assert f"sha256:{digest}" == checksum
        backings.append(backing["filename"])
    assert backings[0] == backings[1], "the same backing file (at the same path on each host)"


def test_console_names_the_hosts_virsh_command(cluster: LocalCluster, guests: list[dict[str, Any]]) -> None:
    guest = guests[0]
    done = subprocess.run([".venv/bin/snooze", "console", "--url", cluster.bootstrap_url, "--print", guest["id"]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    uri = cluster.process(guest["localControllerId"])["hypervisorUri"]
    assert f"virsh -c '{uri}' console {guest['id']}" in done.stdout, done.stdout
    # And the guest has a serial console there (a pty), where the tiny image runs a shell.
    xml = subprocess.run(["virsh", "-c", uri, "dumpxml", guest["id"]], capture_output=True, text=True, timeout=60).stdout
    assert "<serial type='pty'>" in xml, xml


def test_live_migration_with_its_disk_keeps_the_guest_answering(cluster: LocalCluster,
                                                               guests: list[dict[str, Any]]) -> None:
    guest = guests[0]
    source = guest["localControllerId"]
    target = "lc-2" if source == "lc-1" else "lc-1"
    ns = namespaces(cluster)
    answers: list[tuple[float, str | None]] = []
    moving = threading.Event()

    def probe() -> None:
        # From wherever the guest is meant to be: the source until the move returns.
        while not moving.is_set():
            answers.append((time.monotonic(), guest_answer(ns[source], guest["ipAddress"], timeout=1.0)))
            time.sleep(0.2)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    try:
        status, body = http("POST", cluster.bootstrap_url + "/bootstrap?migrateVirtualMachine",
                            json.dumps({"virtualMachineId": guest["id"], "localControllerId": target}), timeout=300)
    finally:
        moving.set()
        prober.join(10)
    took = time.monotonic() - started
    assert (status, body) == (200, True), body
    answered = [a for _, a in answers if a is not None]
    print(f"\n[figure] live migration with disk (non-shared incremental): {took:.1f} s; the guest answered "
          f"{len(answered)} of {len(answers)} probes at the source meanwhile")
    assert answered and all(a == guest["id"] + "\n" for a in answered)

    # It answers at once from its new host, and the old one no longer reaches it.
    assert wait_for(lambda: guest_answer(ns[target], guest["ipAddress"], timeout=1.0), 30,
                    "the guest answering at the destination") == guest["id"] + "\n"
    assert guest_answer(ns[source], guest["ipAddress"], timeout=1.0) is None
    meta = http("POST", cluster.bootstrap_url + "/bootstrap?getVirtualMachineMetaData", guest["id"])[1]
    assert meta["virtualMachineLocation"]["localControllerId"] == target and meta["status"] == "RUNNING"
    # The overlay (and config drive) only at the destination.
    assert not [f for f in files(host_of(cluster, source)) if f.startswith(guest["id"])]
    assert f"{guest['id']}.qcow2" in files(host_of(cluster, target))
    guest["localControllerId"] = target


def test_an_image_in_use_is_not_deleted_and_is_once_its_vms_are_gone(cluster: LocalCluster,
                                                                    guests: list[dict[str, Any]]) -> None:
    url = cluster.bootstrap_url
    status, body = http("DELETE", f"{url}/images/{GUEST_IMAGE}")
    assert status == 409 and body["error"]["code"] == "IMAGE_IN_USE", body
    assert all(g["id"] in body["error"]["message"] for g in guests)

    for guest in guests:
        assert http("POST", url + "/bootstrap?destroyVirtualMachine", guest["id"]) == (200, True)
    assert cluster.hypervisors is not None
    for host in cluster.hypervisors.hosts:
        wait_for(lambda h=host: files(h) == [], 30, f"no VM files left on {host.name}")  # type: ignore[misc]
        cache = inside(host, "du", "-sb", "/var/lib/snooze/cache").split()[0]
        assert int(cache) <= 64 * 2**20, "at most the one small image cached"

    def delete() -> Any:
        status, body = http("DELETE", f"{url}/images/{GUEST_IMAGE}")
        assert status in (200, 409), body  # 409 until the VMs' records are finished
        return status == 200 and body

    assert wait_for(delete, 30, "the image deleted once unused") is True
    assert http("GET", f"{url}/images/{GUEST_IMAGE}")[0] == 404

