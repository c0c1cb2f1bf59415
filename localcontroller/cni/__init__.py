"""Containers on Snooze networks: ``snooze-cni``, a CNI plugin with Contrail's semantics, and the
agent it talks to on each local controller (docs/cni.md).

- ``spec``: the CNI specification's pure parts (environment, network configuration, versions,
  error objects, results) and the names derived from a container (port key, host veth);
- ``netlink``: the veth or macvlan into the container's namespace, with pyroute2 (its errors
  mapped here, nowhere else);
- ``records``: the per-container record on the host, the stale-delete guard's truth;
- ``plugin``: the ``snooze-cni`` executable (ADD, DEL, CHECK, VERSION, STATUS, GC);
- ``agent``: the local controller's agent API on 127.0.0.1 (configuration, ports, sync);
- ``runtime``: a minimal CNI runtime (a conflist's chain) for tests and the benchmark.
"""
