"""Development tooling: what runs a Snooze cluster on one machine for people, tests and benchmarks.

Nothing here is part of a deployment, and no runtime code imports it (an import-linter contract
in ``pyproject.toml`` keeps it so: ``bootstrap``, ``groupmanager``, ``localcontroller`` and the
rest of ``snooze`` never reach ``snooze.dev``; the one exception is the ``snooze cluster``
command, which imports it when it runs).

- ``snooze.dev.localcluster`` — ``LocalCluster``: ZooKeeper, a bootstrap, group managers and local
  controllers on libvirt's test driver, each its own process (``snooze cluster up``,
  ``./scripts/run``, the integration tests and the benchmarks);
- ``snooze.dev.netns`` — network namespaces for ``snooze cluster up --netns`` (each process on its
  own "host" behind a fabric bridge), entering one from Python, the bootstrap's forwarder;
- ``snooze.dev.zookeeper`` — a private ZooKeeper *server* (the client side, which every role
  uses, is ``snooze.coordination``);
- ``snooze.dev.demo`` — the demo virtual cluster ``snooze cluster up`` submits;
- ``snooze.dev.sim`` — simulated hardware: an IPMI BMC and private libvirt daemons.
"""
