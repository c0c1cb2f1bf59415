"""Schemathesis hooks for tests/integration/test_openapi.py (loaded by ``st run`` through
SCHEMATHESIS_HOOKS; never imported by pytest).

``GET /events`` without ``format=json`` is a server-sent-events stream that stays open by design
(until the client goes): no request of a fuzzer would ever end. Every generated call to it is
therefore sent with ``format=json``, its one-answer form; everything else of the call (``after``,
``kinds``, ``limit``, ``Last-Event-ID``) is fuzzed as generated. The stream form is checked by
the test itself.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path == "/events":
        query = case.query if isinstance(case.query, dict) else {}
        case.query = {**query, "format": "json"}
