"""The znode path rule: what ZooKeeper (and kazoo's encoder) would refuse never leaves the process."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snooze.coordination.zk import Coordinator, InvalidPath, check_path
from snooze.ids import is_valid_id


@pytest.mark.parametrize("path", ["/", "/snooze", "/snooze/vms/vm-1", "/a/b.c/_d-e", "/é/ü", "/a.../..b"])
def test_valid_paths(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(
    "path",
    ["", "snooze", "/snooze/", "//snooze", "/a//b", "/.", "/..", "/a/./b", "/a/..", "/\ud800", "/a\udfff",
     "/a\x00b", "/a\nb", "/a\x7f", "/\x9f", "/\U0001f600", "/\uf8ff", "/\ufff0", None, b"/snooze", 7],
)
def test_invalid_paths(path: object) -> None:
    with pytest.raises(InvalidPath):
        check_path(path)


@given(st.text())
def test_a_path_that_passes_encodes_and_has_no_relative_segment(text: str) -> None:
    path = "/" + text
    try:
        check_path(path)
    except InvalidPath:
        return
    path.encode("utf-8", "strict")
    assert path == "/" or all(seg not in ("", ".", "..") for seg in path[1:].split("/"))
    assert "\x00" not in path


@given(st.text(max_size=70))
def test_every_valid_id_is_a_valid_node_name(text: str) -> None:
    coord = Coordinator.__new__(Coordinator)
    coord.root = "/snooze"
    if is_valid_id(text):
        assert coord.path("vms", text) == "/snooze/vms/" + text
    elif "/" in text or text in ("", ".", ".."):
        with pytest.raises(InvalidPath):
            coord.path("vms", text)
