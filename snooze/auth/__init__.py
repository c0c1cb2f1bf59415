"""Who may call the public API: bearer tokens (``snooze.auth.tokens``), the access each route
needs and the check of a VM's owner (``snooze.auth.policy``), the middleware that enforces them
on every role's public HTTP and writes the audit log (``snooze.auth.guard``). The internal
endpoint is not concerned: its messages carry the cluster's HMAC (snooze.protocol)."""

from snooze.auth.tokens import Principal, Role, TokenRecord, TokenStore, make_token, parse_token

__all__ = ["Principal", "Role", "TokenRecord", "TokenStore", "make_token", "parse_token"]
