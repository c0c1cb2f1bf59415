"""The ``snooze`` command's one error type, and the one place where a failure becomes an exit code.

Every subcommand's handler is wrapped by ``reports_errors``: a ``CliError`` is one line on
stderr, ``snooze: CODE: message`` (``snooze: message`` when it has no code), and exit code 1.
The client library's ``SnoozeClientError`` becomes a ``CliError`` there, keeping its code, and
the ``cluster`` commands turn the local cluster's errors into one where they call it; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from snooze.client.errors import SnoozeClientError

__all__ = ["CliError", "Handler", "reports_errors"]

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A command that did not succeed; ``code`` is the server's or the client's error code if known."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.message = message
        self.code = code


def reports_errors(handler: Handler) -> Handler:
    """``handler``, with its failures said on stderr and turned into exit code 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except SnoozeClientError as exc:
            error = CliError(exc.message, exc.code)
        except CliError as exc:
            error = exc
        print(f"snooze: {error}", file=sys.stderr, flush=True)
        return 1

    return run
