"""The private libvirtd hosts' mount plan: which missing mount points get an overlay, and where
(snooze.dev.sim.libvirtd._overlays). The daemons themselves are in
tests/integration/test_private_libvirtd.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from snooze.dev.sim.libvirtd import LibvirtdError, _overlays


def test_missing_mount_points_share_an_overlay_on_their_nearest_existing_parent(tmp_path: Path) -> None:
    for existing in ("a", "b", "c"):
        (tmp_path / existing).mkdir()
    plan = _overlays([str(tmp_path / p) for p in ("a/x", "a/y/z", "b/w", "c")])
    assert [(o.parent, o.children) for o in plan] == [
        (str(tmp_path / "a"), ("x", "y/z")),
        (str(tmp_path / "b"), ("w",)),
    ]
    assert len({o.layer for o in plan}) == 2, "each overlay has its own layer in the state dir"
    assert _overlays([str(tmp_path / "a"), str(tmp_path / "c")]) == [], "nothing missing, no overlay"


def test_mount_points_that_cannot_be_made_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LibvirtdError, match="not a directory"):
        _overlays([str(tmp_path / "file")])
    with pytest.raises(LibvirtdError, match="not a directory"):
        _overlays([str(tmp_path / "file" / "below")])
    with pytest.raises(LibvirtdError, match="refusing to cover /"):
        _overlays(["/snooze-no-such-top-level-directory/x"])
    (tmp_path / "a").mkdir()
    with pytest.raises(LibvirtdError, match="nested overlays"):
        _overlays([str(tmp_path / "a" / "x"), str(tmp_path / "missing" / "y")])
