"""Traffic between the network namespaces a test made: the one way tests connect from one
"guest" to another (after checking the route names the test's own device), and the servers
that accept such connections."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable

from snooze.dev import netns


def tcp_connects(ns: str, target: str, port: int, timeout: float, *, device: str = "eth0",
                 source: str | None = None) -> bool:
    """A TCP connection from inside ``ns`` to ``target:port`` is set up within ``timeout``
    (False if refused or unanswered). Never sent unless ``ns`` routes ``target`` through
    ``device``: from anywhere else a private address could leave the machine."""
    assert netns.route_device(ns, target) == device, "never send outside the test's namespaces"

    def attempt() -> bool:
        try:
            with socket.create_connection((target, port), timeout=timeout,
                                          source_address=(source, 0) if source else None):
                return True
        except OSError:
            return False

    return netns.call_in(ns, attempt)


def _accept_and_close(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()


def serve_tcp(listeners: Iterable[socket.socket]) -> None:
    """Accept (and close) every connection to ``listeners``, each from a daemon thread, until
    :func:`close_all` closes them."""
    for listener in listeners:
        threading.Thread(target=_accept_and_close, args=(listener,), daemon=True).start()


def close_all(sockets: Iterable[socket.socket]) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def namespace_prefix(tag: str) -> str:
    """``TAG<pid>``, this test process's prefix for the namespaces it makes, after deleting
    those a killed earlier run left (its pid, in their names, is gone)."""
    def dead(name: str) -> bool:
        pid = name[len(tag):].split("-")[0]
        return pid.isdigit() and not os.path.exists(f"/proc/{pid}")

    netns.delete_namespaces([n for n in netns.namespaces(tag) if dead(n)])
    return f"{tag}{os.getpid()}"
