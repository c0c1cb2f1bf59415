"""The chaos figures on made-up sample rounds: the checks of ``test_partitions`` can fail."""

from __future__ import annotations

from tests.chaos.helpers import Round, leaderless, orphan_spells, two_leader_rounds

GMS = ("gm-1", "gm-2", "gm-3")


def rnd(t: float, leaders: dict[str, int], listed: dict[str, set[str]], cut: frozenset[str] | set[str] = frozenset(),
        homes: dict[str, str | None] | None = None, silent: frozenset[str] | set[str] = frozenset()) -> Round:
    """A round: ``leaders`` claim (with their epoch), the others list ``listed``; ``silent`` ones
    did not answer."""
    claims: dict[str, tuple[bool, int] | None] = {
        gm: None if gm in silent else (gm in leaders, leaders.get(gm, 1)) for gm in GMS}
    return Round(t, frozenset(cut), claims,
                 {gm: None if gm in silent else frozenset(listed.get(gm, ())) for gm in GMS},
                 homes or {})


def test_two_leaders_in_one_round_are_counted() -> None:
    rounds = [rnd(0.0, {"gm-1": 1}, {}), rnd(0.1, {"gm-1": 1, "gm-2": 2}, {}), rnd(0.2, {"gm-2": 2}, {})]
    assert two_leader_rounds(rounds) == [rounds[1]]
    assert two_leader_rounds([rounds[0], rounds[2]]) == []


def test_leaderless_is_the_longest_gap_without_a_claim() -> None:
    rounds = [rnd(0.0, {"gm-1": 1}, {}), rnd(0.1, {}, {}), rnd(1.3, {}, {}), rnd(1.4, {"gm-2": 2}, {}), rnd(1.5, {}, {})]
    assert abs(leaderless(rounds) - 1.3) < 1e-9


def test_an_lc_is_orphaned_from_its_managers_cut_until_a_reachable_one_lists_it() -> None:
    lead = {"gm-1": 1}
    rounds = [
        rnd(0.0, lead, {"gm-2": {"lc-1"}, "gm-3": {"lc-2"}}),
        rnd(0.1, lead, {"gm-2": {"lc-1"}, "gm-3": {"lc-2"}}, cut={"gm-2"}),  # still lists it: it is cut off
        rnd(2.4, lead, {"gm-2": set(), "gm-3": {"lc-2"}}, cut={"gm-2"}),
        rnd(2.6, lead, {"gm-2": set(), "gm-3": {"lc-1", "lc-2"}}, cut={"gm-2"}),
    ]
    [spell] = orphan_spells(rounds, ["lc-1", "lc-2"])
    assert spell.lc == "lc-1" and abs(spell.length - 2.5) < 1e-9
    # Never re-homed: an open spell, infinitely long.
    [open_spell] = orphan_spells(rounds[:3], ["lc-1"])
    assert open_spell.end is None and open_spell.length == float("inf")


def test_a_cut_lc_counts_from_its_heal_and_a_silent_manager_is_taken_at_the_lcs_word() -> None:
    lead = {"gm-1": 1}
    rounds = [
        rnd(0.0, lead, {"gm-2": {"lc-1"}}),
        rnd(0.1, lead, {"gm-2": set()}, cut={"lc-1"}),
        rnd(4.0, lead, {"gm-2": set()}),
        rnd(4.5, lead, {}, homes={"lc-1": "gm-2"}, silent={"gm-2"}),  # gm-2 slow to answer; lc-1 names it
    ]
    [spell] = orphan_spells(rounds, ["lc-1"])
    assert abs(spell.start - 4.0) < 1e-9 and abs(spell.length - 0.5) < 1e-9


def test_the_leader_homes_no_lc_even_when_the_lc_still_names_it() -> None:
    """A group manager that just became the leader manages none: its LCs are orphans until they
    join another, whatever they still believe."""
    rounds = [
        rnd(0.0, {"gm-1": 1}, {"gm-2": {"lc-1"}}, homes={"lc-1": "gm-2"}),
        rnd(0.1, {"gm-2": 2}, {}, homes={"lc-1": "gm-2"}),
        rnd(1.2, {"gm-2": 2}, {"gm-3": {"lc-1"}}, homes={"lc-1": "gm-3"}),
    ]
    [spell] = orphan_spells(rounds, ["lc-1"])
    assert abs(spell.length - 1.1) < 1e-9
