"""How long the bootstrap waits for the group leader to record a submission: a few session
timeouts, and more for a bigger one (a leader of 2,000 hosts records 5,000 VMs in 4 to 20 s,
after another submission's recording)."""

from __future__ import annotations

from types import SimpleNamespace

from bootstrap.vms import SUBMISSION_SECONDS_PER_VM, VirtualMachineVerbs


def timeout(session: float, templates: int) -> float:
    verbs = SimpleNamespace(b=SimpleNamespace(settings=SimpleNamespace(cluster=SimpleNamespace(session_timeout=session))))
    return VirtualMachineVerbs.submission_timeout(verbs, templates)  # type: ignore[arg-type]


def test_a_small_submission_waits_a_few_sessions_at_least_ten_seconds() -> None:
    assert timeout(10.0, 1) == 30.0 + SUBMISSION_SECONDS_PER_VM
    assert timeout(2.0, 1) == 10.0 + SUBMISSION_SECONDS_PER_VM


def test_the_biggest_submission_gets_more_time_but_less_than_a_clients_slow_call() -> None:
    from snooze.client.aio import SLOW_CALL_TIMEOUT
    from snooze.virtualcluster import MAX_TEMPLATES

    biggest = timeout(10.0, MAX_TEMPLATES)
    assert biggest >= timeout(10.0, 1) + 20.0
    assert biggest < SLOW_CALL_TIMEOUT, "the client must outwait the bootstrap, or it retries what is recording"
