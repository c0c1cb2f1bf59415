"""The CNI specification's pure parts, as ``snooze-cni`` follows them: no I/O here.

- ``CniError``: every failure, written as the spec's error object ``{cniVersion, code, msg,
  details}`` on stdout with a non-zero exit. Codes 1-11 are the spec's; 100 and up are this
  plugin's own (the spec reserves them for plugins).
- ``read_env``: ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``,
  ``CNI_PATH`` checked (code 4 naming the variable).
- ``read_config``: the network configuration from stdin (code 6 when it is not JSON, 7 when a
  field is wrong, 1 for a version this plugin does not speak, 2 for a field it does not know in
  its own ``snooze`` section).
- ``build_result`` / ``result_json``: the result in the configuration's version (0.4.0's ``ips``
  carry ``version``; 1.1.0's interfaces carry ``mtu``).
- ``port_key`` and ``host_ifname``: names derived from the pod and interface, so a container
  that replaces another for the same pod and interface takes the same port (Contrail's model)
  and two different ports never share a host-side name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMANDS", "SUPPORTED_VERSIONS", "CniError", "Env", "NetConf", "PortConfig", "SnoozeSection",
    "build_result", "container_name", "host_ifname", "parse_cni_args", "port_key", "read_config", "read_env", "result_json",
]

#: Versions this plugin speaks (VERSION lists them); 1.1.0 adds STATUS and GC.
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
ONLY_1_1 = ("STATUS", "GC")

# The spec's error codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # STATUS (1.1.0): the plugin cannot serve ADDs now
# This plugin's own (100+).
INTERFACE_EXISTS = 100  # ADD: CNI_IFNAME is already in the container's namespace
LINK_FAILED = 101  # a netlink operation failed (the veth was removed again)
AGENT_REFUSED = 102  # the agent answered a permanent error (not 404, not 5xx)
CHECK_FAILED = 103  # CHECK: the container's interface is not as the result said

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class CniError(Exception):
    """A failure as the spec writes it: ``code``, ``msg``, ``details``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}


# -- environment ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()


def parse_cni_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V`` (code 4 when a pair has no ``=``)."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def read_env(environ: Mapping[str, str]) -> Env:
    """The CNI variables this command needs, checked; CniError 4 naming the variable."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND must be one of {', '.join(COMMANDS)}, not {command!r}")
    if command == "VERSION":
        return Env(command)
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    if command in ONLY_1_1:
        return Env(command, path=path)
    container_id = environ.get("CNI_CONTAINERID", "")
    if not container_id:
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is required")
    if not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID must start with a letter or digit and hold only "
                       "letters, digits, '_', '.' and '-'")
    netns = environ.get("CNI_NETNS", "")
    if not netns and command != "DEL":  # a DEL may come after the namespace is gone
        raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is required")
    ifname = environ.get("CNI_IFNAME", "")
    if not ifname:
        raise CniError(INVALID_ENVIRONMENT, "CNI_IFNAME is required")
    if not _IFNAME.fullmatch(ifname) or ifname in (".", ".."):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return Env(command, container_id, netns, ifname, parse_cni_args(environ.get("CNI_ARGS", "")), path)


# -- network configuration --------------------------------------------------------------------
@dataclass(frozen=True)
class SnoozeSection:
    """The ``snooze`` section of the network configuration (defaults documented in docs/cni.md)."""

    agent: str = "http://127.0.0.1:9091"
    network: str = "default"
    mode: str = "veth"  # or macvlan
    mtu: int = 1500
    poll_timeout: float = 1.0  # seconds per attempt (HTTP timeout and slot length)
    poll_retries: int = 10  # attempts: an ADD waits at most poll_timeout x poll_retries
    record_dir: str = "/var/lib/snooze/cni"
    bridge: str = ""  # veth mode: the host bridge (empty: the agent's answer)
    parent: str = ""  # macvlan mode: the host interface the sub-interface hangs off

    FIELDS = {"agent": "agent", "network": "network", "mode": "mode", "mtu": "mtu", "pollTimeout": "poll_timeout",
              "pollRetries": "poll_retries", "recordDir": "record_dir", "bridge": "bridge", "parent": "parent"}


@dataclass(frozen=True)
class NetConf:
    version: str
    name: str
    type: str
    snooze: SnoozeSection
    prev_result: dict[str, Any] | None
    raw: dict[str, Any]


def _check_version(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CniError(INVALID_CONFIG, "cniVersion is required (a string)")
    if value not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {value} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    return value


def read_config(data: bytes) -> NetConf:
    """The network configuration from stdin, checked (codes 6, 7, 1, 2)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not a JSON object")
    version = _check_version(raw.get("cniVersion"))
    name = raw.get("name")
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise CniError(INVALID_CONFIG, "name is required: 1-63 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    typ = raw.get("type")
    if not isinstance(typ, str) or not typ:
        raise CniError(INVALID_CONFIG, "type is required")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    section = raw.get("snooze", {})
    if not isinstance(section, dict):
        raise CniError(INVALID_CONFIG, "snooze must be an object")
    return NetConf(version, name, typ, _read_section(section), prev, raw)


def _read_section(d: dict[str, Any]) -> SnoozeSection:
    values: dict[str, Any] = {}
    for key, value in d.items():
        attr = SnoozeSection.FIELDS.get(key)
        if attr is None:
            raise CniError(UNSUPPORTED_FIELD, f"snooze.{key} is not a field this plugin knows",
                           f"known: {', '.join(SnoozeSection.FIELDS)}")
        values[attr] = value
    s = SnoozeSection(**values)
    if not isinstance(s.agent, str) or not s.agent.startswith("http://"):
        raise CniError(INVALID_CONFIG, "snooze.agent must be an http:// URL (the local controller's agent on 127.0.0.1)")
    if not isinstance(s.network, str) or not _ID.fullmatch(s.network):
        raise CniError(INVALID_CONFIG, "snooze.network must be a network id")
    if s.mode not in ("veth", "macvlan"):
        raise CniError(INVALID_CONFIG, "snooze.mode must be veth or macvlan")
    if s.mode == "macvlan" and not (isinstance(s.parent, str) and _IFNAME.fullmatch(s.parent)):
        raise CniError(INVALID_CONFIG, "snooze.parent (an interface name) is required in macvlan mode")
    if isinstance(s.mtu, bool) or not isinstance(s.mtu, int) or not 68 <= s.mtu <= 65535:
        raise CniError(INVALID_CONFIG, "snooze.mtu must be an integer from 68 to 65535")
    if isinstance(s.poll_timeout, bool) or not isinstance(s.poll_timeout, int | float) or not 0 < s.poll_timeout <= 60:
        raise CniError(INVALID_CONFIG, "snooze.pollTimeout must be seconds in (0, 60]")
    if isinstance(s.poll_retries, bool) or not isinstance(s.poll_retries, int) or not 1 <= s.poll_retries <= 100:
        raise CniError(INVALID_CONFIG, "snooze.pollRetries must be an integer from 1 to 100")
    if not isinstance(s.record_dir, str) or not s.record_dir.startswith("/"):
        raise CniError(INVALID_CONFIG, "snooze.recordDir must be an absolute path")
    if s.bridge and not (isinstance(s.bridge, str) and _IFNAME.fullmatch(s.bridge)):
        raise CniError(INVALID_CONFIG, "snooze.bridge must be an interface name")
    return s


# -- names ----------------------------------------------------------------------------------
def container_name(env: Env) -> str:
    """The pod the container belongs to (``NAMESPACE/NAME`` from Kubernetes' CNI_ARGS), else the
    container itself: what the stale-delete guard keys on with the interface."""
    pod = env.args.get("K8S_POD_NAME")
    if pod:
        return f"{env.args.get('K8S_POD_NAMESPACE', 'default')}/{pod}"
    return env.container_id


def port_key(name: str, ifname: str) -> str:
    """The port's id (the container's guest id in the network model): ``NAME.IFNAME`` with
    ``/`` as ``.`` when that is a valid id, else ``cni-`` and a hash of both."""
    readable = f"{name.replace('/', '.')}.{ifname}"
    if _ID.fullmatch(readable):
        return readable
    return "cni-" + hashlib.sha256(f"{name}\0{ifname}".encode()).hexdigest()[:32]


def host_ifname(key: str) -> str:
    """The host-side interface of a port: ``snz`` and 12 hex digits of its key's hash (15
    characters, the kernel's limit; two ports collide with probability 2^-48, and an ADD that
    meets another port's interface under its name refuses rather than takes it)."""
    return "snz" + hashlib.sha256(key.encode()).hexdigest()[:12]


# -- the agent's answer, and the result -------------------------------------------------------
@dataclass(frozen=True)
class PortConfig:
    """What the agent says a port is: its address in the network model and how to reach out."""

    id: str
    ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    mac: str
    gateway: str | None
    dns: tuple[str, ...]
    bridge: str
    network: str
    subnet: str
    mtu: int | None = None

    @classmethod
    def from_json(cls, d: Any) -> PortConfig:
        """The agent's JSON, checked (a wrong answer is code 102, never a half-configured port)."""
        try:
            if not isinstance(d, dict):
                raise ValueError("not an object")
            ip = ipaddress.ip_interface(f"{d['ip']}/{int(d['plen'])}")
            mac = str(d["mac"]).lower()
            if not _MAC.fullmatch(mac):
                raise ValueError(f"mac {mac!r}")
            gw = d.get("gateway")
            if gw is not None:
                ipaddress.ip_address(gw)
            dns = tuple(str(ipaddress.ip_address(a)) for a in d.get("dns") or ())
            bridge = str(d.get("bridge") or "")
            if bridge and not _IFNAME.fullmatch(bridge):
                raise ValueError(f"bridge {bridge!r}")
            mtu = d.get("mtu")
            return cls(str(d["id"]), ip, mac, gw, dns, bridge, str(d.get("network", "")), str(d.get("subnet", "")),
                       int(mtu) if mtu else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise CniError(AGENT_REFUSED, "the agent's configuration of the port is not usable", str(exc)) from None


def build_result(cfg: PortConfig, host_if: str, host_mac: str, ifname: str, netns: str, mtu: int,
                 prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result (version-neutral; ``result_json`` writes it in a version): the host-side and
    the container's interface, the address on the latter, a default route via the gateway and
    the subnet's DNS servers. A ``prev`` result (chained after another plugin) comes first."""
    interfaces = list((prev or {}).get("interfaces") or [])
    ips = list((prev or {}).get("ips") or [])
    routes = list((prev or {}).get("routes") or [])
    base = len(interfaces)
    interfaces += [{"name": host_if, "mac": host_mac, "mtu": mtu},
                   {"name": ifname, "mac": cfg.mac, "mtu": mtu, "sandbox": netns}]
    ip: dict[str, Any] = {"address": str(cfg.ip), "interface": base + 1}
    if cfg.gateway:
        ip["gateway"] = cfg.gateway
    ips.append(ip)
    if cfg.gateway:
        routes.append({"dst": "0.0.0.0/0" if cfg.ip.version == 4 else "::/0", "gw": cfg.gateway})
    dns = dict((prev or {}).get("dns") or {})
    if cfg.dns:
        dns["nameservers"] = list(dict.fromkeys([*dns.get("nameservers", []), *cfg.dns]))
    return {"interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns}


def result_json(result: dict[str, Any], version: str) -> dict[str, Any]:
    """``result`` in the format of ``version``: 0.4.0's addresses say their IP ``version``;
    interfaces carry ``mtu`` only from 1.1.0 on."""
    out: dict[str, Any] = {"cniVersion": version}
    interfaces = []
    for itf in result.get("interfaces", []):
        itf = dict(itf)
        if version != "1.1.0":
            itf.pop("mtu", None)
        interfaces.append(itf)
    out["interfaces"] = interfaces
    ips = []
    for ip in result.get("ips", []):
        ip = dict(ip)
        if version == "0.4.0":
            ip["version"] = "6" if ":" in ip["address"] else "4"
        else:
            ip.pop("version", None)
        ips.append(ip)
    out["ips"] = ips
    if result.get("routes"):
        out["routes"] = result["routes"]
    out["dns"] = result.get("dns") or {}
    return out
