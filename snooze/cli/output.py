"""How the ``snooze`` command prints: aligned tables, sizes, and option help that states its defaults.

Results go to stdout, progress and notes to stderr, so ``snooze vms > vms.txt`` keeps the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["HelpFormatter", "capacity", "memory", "table"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, unless the help already says its default or
    there is none to say (``None``; off for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first one the header) in left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def memory(kib: Any) -> str:
    """A memory size given in KiB (the API's unit): ``16.0 GiB``, ``512 MiB``, or ``-`` if not a number."""
    if not isinstance(kib, (int, float)):
        return "-"
    return f"{kib / 1024 / 1024:.1f} GiB" if kib >= 1024 * 1024 else f"{kib / 1024:.0f} MiB"


def capacity(values: Any) -> str:
    """A capacity vector ``[cpu, memory KiB, rx KiB/s, tx KiB/s]``, or ``-`` if it is not one."""
    if not isinstance(values, list) or len(values) != 4:
        return "-"
    cpu, mem, rx, tx = values
    return f"{cpu:g} vcpus, {memory(mem)}, rx {rx:g}, tx {tx:g}"
