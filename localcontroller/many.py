"""Many local controllers in one process, for testing at scale (``snooze cluster up --lcs-per-process N``).

Each local controller here is a whole ``LocalController``: its own id, its own configuration
(so its own port, heartbeat socket and libvirt host — the test driver's ``test:///PATH`` file),
its own ZooKeeper session, join, heartbeats, monitoring and command path. They share only the
process and its event loop, so that thousands fit on one small machine while the group managers
and ZooKeeper stay real separate processes. It is a development mode: in production every host
runs its own local controller.

One controller that stops (a power-saving order in ``power_test_mode``, a critical failure)
stops alone; the others go on. SIGTERM or SIGINT stops them all; SIGHUP makes each read its
config file again for its cluster keys (``Service.reload``). Start-ups are spread: at most
``--start-concurrency`` at a time, so that a few hundred do not hit ZooKeeper in one instant.

Run: ``python -m localcontroller.many --config lc-1.toml --config lc-2.toml …``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from localcontroller.service import LocalController
from snooze import config as cfg
from snooze.service import StartupError

log = logging.getLogger(__name__)


async def _run_one(service: LocalController, gate: asyncio.Semaphore, stopping: asyncio.Event) -> int:
    """One controller's life: started (within the gate), then until it or the process stops."""
    async with gate:
        if stopping.is_set():
            return 0
        try:
            await service.start()
        except (StartupError, OSError, cfg.ConfigError) as exc:
            log.error("%s cannot start: %s", service.id, exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.stop(), 10)
            return 1
    own = asyncio.ensure_future(service._stop.wait())
    every = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({own, every}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        own.cancel()
        every.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(service.stop(), 30)
    if own.done() and not every.done():
        log.info("%s stopped (exit code %d); the others go on", service.id, service.exit_code)
    return service.exit_code


async def run_all(services: list[LocalController], start_concurrency: int = 20) -> int:
    """Run every controller until SIGTERM/SIGINT; the exit code is the first non-zero of theirs."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, lambda: [s.reload() for s in services])
    gate = asyncio.Semaphore(max(1, start_concurrency))
    codes = await asyncio.gather(*(_run_one(s, gate, stopping) for s in services))
    return next((c for c in codes if c), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcontroller.many",
                                     description="Run several Snooze local controllers in one process (development, scale tests).")
    parser.add_argument("--config", action="append", required=True, help="one local controller's TOML configuration; repeat")
    parser.add_argument("--start-concurrency", type=int, default=20, help="controllers starting at the same time (default 20)")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower this process's CPU priority by N (os.nice): simulated hosts yield the cores to "
                             "the group managers and ZooKeeper on the same machine (default 0)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.nice > 0:
        os.nice(args.nice)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s localcontroller %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    services: list[LocalController] = []
    ids: set[str] = set()
    for path in args.config:
        try:
            settings = cfg.load(path, "localcontroller", {})
            service = LocalController(settings)
            service.config_file = path  # what SIGHUP reads again
        except (cfg.ConfigError, ValueError) as exc:
            print(f"snooze-localcontroller: configuration error in {path}: {exc}", file=sys.stderr)
            return 2
        if service.id in ids:
            print(f"snooze-localcontroller: {path}: id {service.id!r} given twice", file=sys.stderr)
            return 2
        ids.add(service.id)
        services.append(service)
    log.info("running %d local controllers in this process", len(services))
    return asyncio.run(run_all(services, args.start_concurrency))


if __name__ == "__main__":
    sys.exit(main())
