"""Which monitoring reports a local controller sends whole, and which as a heartbeat saying the
last one is unchanged (``localcontroller.monitoring.ReportDeltas``)."""

from __future__ import annotations

from typing import Any

from localcontroller.monitoring import ReportDeltas


def sample(vms: dict[str, list[float]] | None = None, at: float = 0.0) -> dict[str, Any]:
    vms = vms or {}
    return {"timestamp": at, "hostUsage": [sum(v[0] for v in vms.values()), 0.0, 0.0, 0.0],
            "virtualMachines": vms, "domains": [{"name": n, "state": "RUNNING"} for n in sorted(vms)]}


def test_the_same_content_goes_as_unchanged_except_every_nth_whatever_the_timestamp() -> None:
    d = ReportDeltas(4)
    assert d.unchanged("gm-1", sample(at=1)) is None  # the first goes whole
    first = d.seq
    forms = [d.unchanged("gm-1", sample(at=t)) for t in range(2, 10)]
    # 3 heartbeats naming it, then a whole one (a new number), 3 naming that one, a whole one.
    assert forms == [first, first, first, None, first + 1, first + 1, first + 1, None]
    assert d.seq == first + 2


def test_a_change_or_another_group_manager_goes_whole_at_once() -> None:
    d = ReportDeltas(10)
    assert d.unchanged("gm-1", sample()) is None
    assert d.unchanged("gm-1", sample()) == d.seq
    assert d.unchanged("gm-1", sample({"vm1": [1.0, 1024.0, 0, 0]})) is None  # a VM came
    assert d.unchanged("gm-1", sample({"vm1": [1.0, 1024.0, 0, 0]})) == d.seq
    assert d.unchanged("gm-1", sample({"vm1": [2.0, 1024.0, 0, 0]})) is None  # its usage changed
    assert d.unchanged("gm-2", sample({"vm1": [2.0, 1024.0, 0, 0]})) is None  # a new manager
    assert d.unchanged("gm-2", sample({"vm1": [2.0, 1024.0, 0, 0]})) == d.seq


def test_after_forget_the_next_goes_whole_and_one_means_always_whole() -> None:
    d = ReportDeltas(10)
    assert d.unchanged("gm-1", sample()) is None
    d.forget()  # the report failed, or the host joined again
    assert d.unchanged("gm-1", sample()) is None
    always = ReportDeltas(1)
    assert [always.unchanged("gm-1", sample()) for _ in range(3)] == [None, None, None]


def test_two_controllers_never_start_from_the_same_number() -> None:
    # A restarted controller must not name a report its group manager kept from before.
    assert len({ReportDeltas(10).seq for _ in range(20)}) > 1
