"""Policies by name, plugins through the ``snooze.placement`` entry points, estimators."""

from __future__ import annotations

import pytest
from placement_builders import FULL, host, vm

import groupmanager.placement as placement
from groupmanager.placement import (
    DEFAULT_PLACEMENT,
    Placement,
    Plan,
    UnknownPolicyError,
    make_consolidation_policy,
    make_estimator,
    make_placement_policy,
    registry,
)


def test_builtin_names_and_default():
    assert DEFAULT_PLACEMENT == "dot-product"
    for name in ("round-robin", "first-fit", "best-fit", "dot-product"):
        assert make_placement_policy(name).name == name
    assert make_placement_policy().name == "dot-product"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownPolicyError) as err:
        make_placement_policy("worst-fit")
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "worst-fit" in msg
    for name in ("round-robin", "first-fit", "best-fit", "dot-product"):
        assert name in msg


def test_unknown_sort_norm_is_refused():
    with pytest.raises(ValueError, match="sort norm"):
        make_placement_policy("first-fit", sort_norm="L7")


class _EverythingOnFirst:
    name = "everything-on-first"

    def __init__(self, **options: object) -> None:
        self.options = options

    def place(self, requests, hosts):
        return Plan(placements=[Placement(r.id, hosts[0].id) for r in requests])


class _FakeEntryPoint:
    def __init__(self, name, obj):
        self.name = name
        self._obj = obj

    def load(self):
        return self._obj


def test_plugin_is_found_through_the_entry_point_group(monkeypatch):
    seen = []

    def fake_entry_points(*, group):
        seen.append(group)
        return [_FakeEntryPoint("everything-on-first", _EverythingOnFirst)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    policy = make_placement_policy("everything-on-first", thresholds=FULL, extra=1)
    assert seen == ["snooze.placement"]
    assert policy.options == {"thresholds": FULL, "sort_norm": "L1", "extra": 1}
    plan = policy.place([vm("a")], [host("h")])
    assert plan.placements == [Placement("a", "h")]
    assert "everything-on-first" in placement.known_policies()


def test_plugin_without_place_is_refused(monkeypatch):
    class Broken:
        def __init__(self, **options: object) -> None:
            pass

    monkeypatch.setattr(
        registry, "entry_points", lambda *, group: [_FakeEntryPoint("broken", Broken)]
    )
    with pytest.raises(TypeError, match="broken"):
        make_placement_policy("broken")


def test_consolidation_names():
    assert make_consolidation_policy().name == "cost-aware"
    assert make_consolidation_policy("repack").name == "repack"
    assert make_consolidation_policy("sercon").name == "sercon"
    with pytest.raises(UnknownPolicyError, match="sercon"):
        make_consolidation_policy("magic")


def test_public_surface_is_exported():
    for name in placement.__all__:
        assert hasattr(placement, name), name


def test_average_estimator_uses_the_last_window_samples():
    est = make_estimator("average", window=2)
    hist = [(10.0, 10.0, 0.0, 0.0), (1.0, 2.0, 0.0, 0.0), (3.0, 4.0, 2.0, 2.0)]
    assert est.estimate(hist, (9.0, 9.0, 9.0, 9.0)) == (2.0, 3.0, 1.0, 1.0)
    assert est.estimate([], (9.0, 8.0, 7.0, 6.0)) == (9.0, 8.0, 7.0, 6.0)


def test_ewma_weighs_recent_samples_more():
    est = make_estimator("ewma", alpha=0.5)
    got = est.estimate([(0.0, 0.0, 0.0, 0.0), (4.0, 8.0, 0.0, 0.0)], (1.0, 1.0, 1.0, 1.0))
    assert got == (2.0, 4.0, 0.0, 0.0)
    assert make_estimator("ewma").estimate([], (1.0, 2.0, 3.0, 4.0)) == (1.0, 2.0, 3.0, 4.0)


def test_static_estimator_applies_packing_density():
    est = make_estimator("static", density=(0.5, 1.0, 0.25, 0.25))
    assert est.estimate([(99.0, 99.0, 99.0, 99.0)], (4.0, 8.0, 8.0, 4.0)) == (2.0, 8.0, 2.0, 1.0)


def test_estimator_errors():
    with pytest.raises(UnknownPolicyError, match="average"):
        make_estimator("median")
    with pytest.raises(ValueError):
        make_estimator("average", window=0)
    with pytest.raises(ValueError):
        make_estimator("ewma", alpha=0.0)
