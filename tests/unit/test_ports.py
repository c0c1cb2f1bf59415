"""Ports chosen for processes started later lie below the kernel's ephemeral range, where no
outgoing connection can take them in the meantime (CI saw both a local controller and a
simulated BMC lose their port that way)."""

from __future__ import annotations

import socket
from pathlib import Path

from snooze.dev.localcluster import _lines_about
from snooze.dev.ports import (
    LOWEST,
    ephemeral_low,
    free_port,
    free_port_range,
    free_udp_port,
    port_slice,
)


def test_ephemeral_low_is_the_kernels_own() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert ephemeral_low() == max(low, 12000)


def test_a_range_of_two_hundred_lies_below_the_ephemeral_range_and_is_free() -> None:
    base = free_port_range(200)
    assert 10000 <= base and base + 200 <= ephemeral_low()
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 199))


def test_single_ports_too() -> None:
    for port in (free_port(), free_udp_port()):
        assert 10000 <= port < ephemeral_low()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", free_udp_port()))


def test_a_range_that_cannot_fit_is_refused() -> None:
    try:
        free_port_range(ephemeral_low())
    except ValueError as exc:
        assert "no room" in str(exc)
    else:
        raise AssertionError("a range larger than the room below the ephemeral range was given")


def test_a_shared_logs_problems_with_one_controller_are_found(tmp_path: Path) -> None:
    log = tmp_path / "lcs-1.log"
    log.write_text("\n".join([
        "2026-12-02 03:05:03,977 localcontroller INFO snooze.service: localcontroller lc-76 starting",
        "2026-12-02 03:05:04,368 localcontroller ERROR __main__: lc-76 cannot start: Address already in use",
        "2026-12-02 03:05:04,369 localcontroller ERROR __main__: lc-761 cannot start: something else",
        "2026-12-02 03:05:05,000 localcontroller WARNING x: lc-7 slow",
    ]))
    assert _lines_about(str(log), "lc-76") == [
        "2026-12-02 03:05:04,368 localcontroller ERROR __main__: lc-76 cannot start: Address already in use"]
    assert _lines_about(str(tmp_path / "missing.log"), "lc-76") == []


def test_each_test_worker_chooses_in_its_own_slice() -> None:
    low, high = LOWEST, ephemeral_low()
    assert port_slice({}) == (low, high)
    first, second = port_slice({"SNOOZE_PORT_SLICE": "0/2"}), port_slice({"SNOOZE_PORT_SLICE": "1/2"})
    assert first[0] == low and first[1] == second[0] and second[1] <= high and second[1] - second[0] > 5000
    for bad in ("2/2", "x/2", "1", "-1/2"):
        assert port_slice({"SNOOZE_PORT_SLICE": bad}) == (low, high), bad


def test_an_ensemble_never_gives_two_of_its_servers_ports_one_port() -> None:
    # Each pick only checks that its port is free now; a chooser that repeats itself (as two
    # random picks of free_port may) must still give nine different ports.
    from snooze.dev.zookeeper import ZooKeeperEnsemble

    picks = iter([20001, 20001, 20002, 20003, 20002, 20004, 20005, 20006, 20007, 20008, 20009, 20001, 20010])
    ensemble = ZooKeeperEnsemble(Path("/nonexistent/zk"), 3, port=lambda: next(picks))
    ports = [p for server in ensemble.servers for peer in server.peers if peer.server_id == server.server_id
             for p in (peer.client_port, peer.quorum_port, peer.election_port)]
    assert len(ports) == 9 and len(set(ports)) == 9, ports
    assert [s.port for s in ensemble.servers] == [ports[0], ports[3], ports[6]]
