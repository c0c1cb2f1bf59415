"""The fake server fixture for the client unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.client.fake import FakeSnooze


@pytest.fixture
def fake() -> Iterator[FakeSnooze]:
    server = FakeSnooze().start()
    try:
        yield server
    finally:
        server.stop()
