"""TLS for the HTTP listeners and the calls between processes: the one module over ``ssl``.

A process with ``[node] tls_cert`` and ``tls_key`` serves https only, on its control port (and
the bootstrap's EC2 API), and calls its peers over https, checking their certificates against
``[node] tls_ca`` (else the system's authorities) and their advertised address (so each
certificate names the address, or host name, its process advertises). TLS is cluster-wide:
every process of a cluster has it on, or none. Heartbeats (UDP) stay as they are: they are
signed with the cluster key, and carry nothing secret.

Errors of ``ssl`` and of reading the files become ``TlsError``, whose message names the option
and the file; the process reports it as the reason it cannot start.
"""

from __future__ import annotations

import ssl

__all__ = ["TlsError", "client_context", "server_context"]


class TlsError(Exception):
    """A certificate, key or CA bundle that cannot be used; the message names the option."""


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """What a listener serves with: ``cert`` (PEM, a chain allowed) and its ``key``; TLS 1.2 or later."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsError(f"[node] tls_cert = {cert!r}, [node] tls_key = {key!r}: cannot be used: {_why(exc)} "
                       "(a PEM certificate and its unencrypted PEM key, readable by this process)") from exc
    return context


def client_context(ca: str = "", *, option: str = "[node] tls_ca") -> ssl.SSLContext:
    """What a client checks servers with: the authorities of the PEM bundle ``ca``, else the
    system's; the server's name (or address) must be in its certificate. ``option`` names where
    ``ca`` came from, in the error."""
    try:
        return ssl.create_default_context(cafile=ca or None)
    except (OSError, ValueError) as exc:
        raise TlsError(f"{option} = {ca!r}: cannot be used: {_why(exc)} (a PEM bundle of certificate "
                       "authorities, readable by this process)") from exc
