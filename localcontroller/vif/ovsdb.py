"""The host's Open vSwitch database through ovsdbapp: the one module of ``localcontroller.vif``
that talks OVSDB, and the one that maps ovsdbapp's errors (its exceptions, timeouts, a
connection that cannot be made) to ``OvsdbError``.

A connection is made lazily, kept, and made again after an error (``ovsdb-server`` restarted).
Every call is blocking (ovsdbapp's own thread does the I/O); the local controller calls from a
thread of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ovsdbapp import exceptions as ovs_exc
from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

__all__ = ["Ovsdb", "OvsdbError"]


class OvsdbError(Exception):
    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


def _connected(conn: connection.Connection) -> bool:
    """Whether the IDL's session is connected now (ovs's Idl keeps it in ``_session``)."""
    session = getattr(conn.idl, "_session", None)
    return bool(session is not None and session.is_connected())


def _reason(exc: BaseException) -> str:
    """What an ovsdbapp error says (some of its exceptions cannot even print themselves)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        text = f"{text}: {_reason(cause)}" if text else _reason(cause)
    return text or type(exc).__name__


class Ovsdb:
    """The OVSDB at ``remote`` (``unix:/path/db.sock``, ``tcp:127.0.0.1:6640``)."""

    def __init__(self, remote: str, timeout: float = 10.0) -> None:
        self.remote = remote
        self.timeout = timeout
        self._api: impl_idl.OvsdbIdl | None = None
        self._conn: connection.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self, what: str) -> impl_idl.OvsdbIdl:
        stale = self._conn is not None and not _connected(self._conn)
        if stale:
            # The server went away (ovsdb-server restarted or down): a new connection, which
            # fails at once if it is still down, rather than a transaction that waits for the
            # old one to come back until the timeout.
            self.close()
        with self._lock:
            if self._api is None:
                try:
                    idl = connection.OvsdbIdl.from_server(self.remote, "Open_vSwitch")
                    conn = connection.Connection(idl=idl, timeout=self.timeout)
                    # ovsdbapp keeps the connection in a class attribute, set once: a class of
                    # this connection's own, or a second one (after a restart of ovsdb-server,
                    # another host's in a test) would use the first, stopped one.
                    api_class = type("HostOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
                    api = api_class(conn)
                except Exception as exc:  # ovsdbapp raises bare Exception when it cannot connect
                    raise OvsdbError(what, f"cannot connect to the OVSDB at {self.remote}: {_reason(exc)}") from exc
                self._api, self._conn = api, conn
            return self._api

    def close(self) -> None:
        with self._lock:
            conn, self._api, self._conn = self._conn, None, None
        if conn is not None:
            try:
                conn.stop(timeout=2)
            except Exception:  # best effort: the server may be gone
                pass

    def _run(self, what: str, build: Any) -> Any:
        api = self._connect(what)
        try:
            with api.transaction(check_error=True) as txn:
                build(api, txn)
            return txn.result if hasattr(txn, "result") else None
        except (ovs_exc.OvsdbAppException, ovs_exc.TimeoutException, idlutils.RowNotFound, RuntimeError) as exc:
            self.close()  # the next call connects again (ovsdb-server may have restarted)
            raise OvsdbError(what, _reason(exc)) from exc

    def plug_port(self, bridge: str, port: str, *, datapath_type: str, external_ids: Mapping[str, str],
                  mtu: int | None = None, tag: int | None = None, uplink: str | None = None) -> None:
        """In one transaction: the bridge (kept if it exists), the port and its interface (kept
        if they exist) with ``external_ids`` and the MTU; with ``tag``, an access port of that
        VLAN (Open vSwitch tags in userspace: no kernel VLAN support needed)."""
        def build(api: impl_idl.OvsdbIdl, txn: Any) -> None:
            txn.add(api.add_br(bridge, may_exist=True, datapath_type=datapath_type))
            txn.add(api.add_port(bridge, port, may_exist=True))
            columns: dict[str, Any] = {"external_ids": dict(external_ids)}
            if mtu:
                columns["mtu_request"] = mtu
            txn.add(api.db_set("Interface", port, *columns.items()))
            txn.add(api.db_set("Port", port, ("tag", tag if tag else [])))
            if uplink:
                # The bridge's way to the other hosts (a trunk: every VLAN passes).
                txn.add(api.add_port(bridge, uplink, may_exist=True))
        self._run(f"plug {port} into {bridge}", build)

    def unplug_port(self, bridge: str, port: str) -> None:
        """The port removed from ``bridge`` (nothing if it is not there); the bridge stays."""
        def build(api: impl_idl.OvsdbIdl, txn: Any) -> None:
            txn.add(api.del_port(port, bridge=bridge, if_exists=True))
        self._run(f"unplug {port} from {bridge}", build)

    def transact(self, what: str, build: Any) -> None:
        """``build(api, txn)`` adds commands to one transaction (ovsdbapp's generic ``db_*``)."""
        self._run(what, build)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` as a dict of its columns, with ``_uuid``."""
        api = self._connect(f"read {table}")
        try:
            return list(api.db_list(table).execute(check_error=True))
        except (ovs_exc.OvsdbAppException, ovs_exc.TimeoutException, idlutils.RowNotFound, RuntimeError) as exc:
            self.close()
            raise OvsdbError(f"read {table}", _reason(exc)) from exc

    def ports(self, bridge: str) -> list[str]:
        api = self._connect(f"list the ports of {bridge}")
        try:
            if not api.br_exists(bridge).execute(check_error=True):
                return []
            return sorted(api.list_ports(bridge).execute(check_error=True))
        except (ovs_exc.OvsdbAppException, ovs_exc.TimeoutException, RuntimeError) as exc:
            self.close()
            raise OvsdbError(f"list the ports of {bridge}", _reason(exc)) from exc

    def interface_external_ids(self, port: str) -> dict[str, str]:
        api = self._connect(f"read {port}")
        try:
            got = api.db_get("Interface", port, "external_ids").execute(check_error=True)
        except (ovs_exc.OvsdbAppException, ovs_exc.TimeoutException, idlutils.RowNotFound, RuntimeError) as exc:
            raise OvsdbError(f"read {port}", _reason(exc)) from exc
        return dict(got or {})
