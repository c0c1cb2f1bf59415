"""``snooze``: the command line — look at a running cluster, drive its virtual machines, run a local one.

One module per group of verbs, each adding its own to the parser with ``register(subparsers)``:

- ``snooze.cli.hierarchy`` — ``hierarchy``, ``hosts``;
- ``snooze.cli.vms`` — ``submit``, ``vms``, ``vm``, ``suspend`` … ``destroy`` (of a VM or a whole
  defined virtual cluster), ``migrate``;
- ``snooze.cli.virtualclusters`` — the original snoozeclient's ``define``, ``undefine``, ``add``,
  ``remove``, ``list``, ``start``, ``info`` and ``dump`` (the hierarchy as GraphML);
- ``snooze.cli.images`` — ``images`` (list), ``images upload``, ``images delete``: the image
  repository;
- ``snooze.cli.network`` — ``network``, ``subnet``, ``flavor``, ``fwgroup``, ``vlan`` (each
  ``create``, ``list``, ``show``, ``delete``): the network model;
- ``snooze.cli.tokens`` — ``token create``, ``token list``, ``token revoke``: the API's tokens;
- ``snooze.cli.console`` — ``console VM``, a guest's serial console (virsh);
- ``snooze.cli.cluster`` — ``cluster up`` / ``cluster down`` / ``cluster rotate-key``, a local cluster for development
  (the only part that loads ``snooze.dev``, and only when it runs).

and what they share: which cluster a verb talks to, decided in one place for all of them
(``snooze.cli.target``: ``--url``, ``--state-dir`` before or after the verb, ``SNOOZE_URL``,
``SNOOZE_STATE_DIR``, else the cluster this user started last); one error type, reported in one
place (``snooze.cli.errors``: one line on stderr, ``snooze: CODE: message``, exit code 1); one
way to print tables and sizes (``snooze.cli.output``). The verbs on the cluster talk to it
through ``snooze.client``.
"""

from __future__ import annotations

import argparse

from snooze.cli import cluster, console, hierarchy, images, network, tokens, virtualclusters, vms
from snooze.cli.target import add_target_options

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snooze", description="Snooze: a self-organising, energy-aware VM cluster manager.")
    add_target_options(p, top_level=True)
    sub = p.add_subparsers(dest="command", required=True)
    cluster.register(sub)
    hierarchy.register(sub)
    vms.register(sub)
    virtualclusters.register(sub)
    console.register(sub)
    images.register(sub)
    network.register(sub)
    tokens.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``snooze`` command; returns its exit code (every verb reports its own failures)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
