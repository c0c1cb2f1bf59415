"""The one exception every Snooze client raises: HTTP, transport and protocol problems alike.

The server reports bad input as ``{"error": {"code", "message", "field"}}`` with a 4xx; the
client keeps those three fields and the HTTP status, and gives transport failures codes of
their own so that callers (the CLI, the libcloud driver) handle a single type.
"""

from __future__ import annotations

from snooze.codes import ErrorCode

# Codes the client itself assigns, when there is no server answer to take one from.
UNREACHABLE = ErrorCode.UNREACHABLE  # connection refused, DNS failure, reset …
TIMEOUT = ErrorCode.TIMEOUT  # one HTTP request took longer than the client's timeout
TASK_TIMEOUT = ErrorCode.TASK_TIMEOUT  # a virtual cluster was not done within the wait's timeout
BAD_RESPONSE = ErrorCode.BAD_RESPONSE  # a 2xx whose body is not what the API promises
REFUSED = ErrorCode.REFUSED  # a control call answered ``false``
BAD_REQUEST = ErrorCode.BAD_REQUEST  # the caller's own input cannot be sent (a file that cannot be read)


class SnoozeClientError(Exception):
    """A call that did not succeed.

    ``code`` is the server's error code (``BAD_REQUEST``, ``VIRTUAL_MACHINE_NOT_FOUND`` …) or one
    of the client's own (``UNREACHABLE``, ``TIMEOUT``, ``BAD_RESPONSE`` …); ``status`` is the HTTP
    status, ``None`` when no response arrived; ``field`` names the offending input if known.
    """

    def __init__(self, code: str, message: str, field: str | None = None, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.status = status

    def __repr__(self) -> str:
        return (f"SnoozeClientError(code={self.code!r}, message={self.message!r}, "
                f"field={self.field!r}, status={self.status!r})")
