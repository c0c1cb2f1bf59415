"""``snooze-cni``: the CNI plugin (Contrail's flow on Snooze's address management).

ADD: poll the local controller's agent for the port's configuration (``GET /vm-cfg/{key}``,
at most ``pollRetries`` attempts of ``pollTimeout`` seconds each, then code 11 with nothing
made), make the veth (or macvlan) into the namespace, set MAC, address, routes, write the
per-container record, tell the agent (``POST /ports/{key}``), print the result. A container
that replaces another for the same pod and interface takes its port over (the older host end
is removed, the record names the newer container).

DEL: the stale-delete guard first: a record for the port naming *another* container means a
newer container already took the port, so the DEL exits 0 and touches nothing. Only that
mismatch is ignored: a record that cannot be read is an error (code 5). Otherwise remove the
interface (fine if it or the namespace is gone), have the agent release the address
(``DELETE /ports/{key}``; if the agent cannot be reached the DEL fails with code 11 and keeps
the record, so that the runtime's retry finds it), remove the record.

CHECK needs ``prevResult``; the port's record must name this container (code 3 otherwise) and
the interface must have the result's MAC and addresses (code 103).

The code here is blocking and short-lived: one process per call, as the spec has it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO, TextIO

from localcontroller.cni import spec
from localcontroller.cni.records import Records
from localcontroller.cni.spec import CniError, Env, NetConf, PortConfig

__all__ = ["main", "run"]


# -- the agent --------------------------------------------------------------------------------
class AgentAnswer(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _request(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            parsed = json.loads(exc.read() or b"null")
        except ValueError:
            parsed = None
        raise AgentAnswer(exc.code, parsed) from None
    return json.loads(raw) if raw else None


def _reason(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return f"{err.get('code')}: {err.get('message')}"
    return str(body)[:200]


def poll_config(conf: NetConf, key: str, env: Env, sleep: Any = time.sleep, clock: Any = time.monotonic) -> PortConfig:
    """The port's configuration from the agent. Attempt ``i`` starts at slot ``i`` of
    ``pollTimeout`` seconds and waits at most until its slot ends, so the whole wait is bounded
    by ``pollTimeout x pollRetries`` (Contrail's worst case was 60 s). 404 (not declared yet),
    5xx and an unreachable agent are retried; any other 4xx is code 102 at once; giving up is
    code 11."""
    s = conf.snooze
    query = urllib.parse.urlencode({"network": s.network, "containerId": env.container_id,
                                    "name": spec.container_name(env), "ifname": env.ifname})
    url = f"{s.agent.rstrip('/')}/vm-cfg/{urllib.parse.quote(key, safe='')}?{query}"
    start = clock()
    last = "no answer"
    for attempt in range(s.poll_retries):
        slot_end = start + (attempt + 1) * s.poll_timeout
        try:
            return PortConfig.from_json(_request(url, timeout=max(0.05, slot_end - clock())))
        except AgentAnswer as exc:
            if exc.status != 404 and exc.status < 500:
                raise CniError(spec.AGENT_REFUSED, f"the agent refused the configuration of port {key}",
                               _reason(exc.body)) from None
            last = f"HTTP {exc.status} {_reason(exc.body)}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        remaining = slot_end - clock()
        if remaining > 0 and attempt + 1 < s.poll_retries:
            sleep(remaining)
    raise CniError(spec.TRY_AGAIN_LATER, f"the agent at {s.agent} had no configuration for port {key} after "
                   f"{s.poll_retries} attempts of {s.poll_timeout:g} s", last)


def _tell_agent(conf: NetConf, method: str, key: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
    s = conf.snooze
    url = f"{s.agent.rstrip('/')}/ports/{urllib.parse.quote(key, safe='')}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    try:
        return _request(url, method, body, timeout=s.poll_timeout * 3)
    except AgentAnswer as exc:
        code = spec.TRY_AGAIN_LATER if exc.status >= 500 else spec.AGENT_REFUSED
        raise CniError(code, f"the agent refused {method} of port {key}", _reason(exc.body)) from None
    except (OSError, ValueError) as exc:
        raise CniError(spec.TRY_AGAIN_LATER, f"the agent at {s.agent} cannot be reached", str(exc)) from None


# -- commands ---------------------------------------------------------------------------------
def cmd_add(env: Env, conf: NetConf) -> dict[str, Any]:
    from localcontroller.cni import netlink

    s = conf.snooze
    name = spec.container_name(env)
    key = spec.port_key(name, env.ifname)
    host_if = spec.host_ifname(key)
    records = Records(s.record_dir)
    if not netlink.netns_exists(env.netns):
        raise CniError(spec.INVALID_ENVIRONMENT, f"CNI_NETNS {env.netns} is not a network namespace")
    cfg = poll_config(conf, key, env)
    with records.locked(key):
        old = records.read(key)
        if old is not None and old["containerId"] != env.container_id:
            # A newer container for the same pod and interface: it takes the port over.
            netlink.delete_host_link(str(old.get("hostIfname") or host_if))
        mtu = cfg.mtu or s.mtu
        bridge = s.bridge or cfg.bridge
        host_mac = netlink.add_port(env.netns, env.ifname, host_if, cfg, mtu, s.mode, bridge, s.parent)
        rec = {"key": key, "containerId": env.container_id, "name": name, "ifname": env.ifname, "netns": env.netns,
               "hostIfname": host_if if s.mode == "veth" else "", "network": s.network, "ip": str(cfg.ip),
               "mac": cfg.mac, "cniName": conf.name, "time": time.time()}
        try:
            records.write(rec)
            _tell_agent(conf, "POST", key, {k: rec[k] for k in ("containerId", "name", "ifname", "netns", "hostIfname")})
        except BaseException:
            # Leave no veth behind: the runtime calls DEL for a failed ADD, which releases.
            netlink.delete_in_netns(env.netns, env.ifname)
            netlink.delete_host_link(host_if)
            if old is None:
                records.remove(key)
            else:
                records.write(old)
            raise
        result = spec.build_result(cfg, host_if if s.mode == "veth" else env.ifname, host_mac, env.ifname, env.netns,
                                   mtu, conf.prev_result)
        if s.mode == "macvlan":
            result["interfaces"] = [i for i in result["interfaces"] if i.get("sandbox")]
            for ip in result["ips"]:
                ip["interface"] = len(result["interfaces"]) - 1 if ip["address"] == str(cfg.ip) else ip["interface"]
        return result


def cmd_del(env: Env, conf: NetConf) -> None:
    from localcontroller.cni import netlink

    s = conf.snooze
    key = spec.port_key(spec.container_name(env), env.ifname)
    records = Records(s.record_dir)
    with records.locked(key):
        rec = records.read(key)  # unreadable: RecordError (code 5), nothing touched
        if rec is not None and rec["containerId"] != env.container_id:
            return  # the stale-delete guard: a newer container holds the port
        if env.netns:
            netlink.delete_in_netns(env.netns, env.ifname)
        netlink.delete_host_link(str((rec or {}).get("hostIfname") or spec.host_ifname(key)))
        _tell_agent(conf, "DELETE", key, query={"containerId": env.container_id})
        records.remove(key)


def cmd_check(env: Env, conf: NetConf) -> None:
    from localcontroller.cni import netlink

    prev = conf.prev_result
    if prev is None:
        raise CniError(spec.INVALID_CONFIG, "CHECK needs prevResult")
    key = spec.port_key(spec.container_name(env), env.ifname)
    records = Records(conf.snooze.record_dir)
    with records.locked(key):
        rec = records.read(key)
        if rec is None or rec["containerId"] != env.container_id:
            raise CniError(spec.UNKNOWN_CONTAINER, f"container {env.container_id} holds no port {key} here")
    interfaces = prev.get("interfaces") or []
    mine = [i for i, itf in enumerate(interfaces) if isinstance(itf, dict) and itf.get("name") == env.ifname
            and itf.get("sandbox")]
    if not mine:
        raise CniError(spec.CHECK_FAILED, f"prevResult has no interface {env.ifname} in a sandbox")
    addresses = [str(ip.get("address")) for ip in prev.get("ips") or []
                 if isinstance(ip, dict) and ip.get("interface") == mine[0]]
    netlink.check_port(env.netns, env.ifname, str(interfaces[mine[0]].get("mac") or ""), addresses)


def cmd_status(conf: NetConf) -> None:
    try:
        _request(f"{conf.snooze.agent.rstrip('/')}/status", timeout=conf.snooze.poll_timeout)
    except (AgentAnswer, OSError, ValueError) as exc:
        raise CniError(spec.PLUGIN_NOT_AVAILABLE, f"the agent at {conf.snooze.agent} does not answer", str(exc)) from None


def cmd_gc(env: Env, conf: NetConf) -> None:
    """GC (1.1.0): release the ports of this network whose attachment is not in
    ``cni.dev/valid-attachments`` (each ``{containerID, ifname}``)."""
    from localcontroller.cni import netlink

    valid = conf.raw.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list):
        raise CniError(spec.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    keep = {(str(a.get("containerID")), str(a.get("ifname"))) for a in valid if isinstance(a, dict)}
    records = Records(conf.snooze.record_dir)
    for rec in records.all():
        if rec.get("cniName", conf.name) != conf.name or (rec["containerId"], rec.get("ifname")) in keep:
            continue
        with records.locked(rec["key"]):
            netlink.delete_host_link(str(rec.get("hostIfname") or ""))
            _tell_agent(conf, "DELETE", rec["key"], query={"containerId": rec["containerId"]})
            records.remove(rec["key"])


def run(environ: dict[str, str], stdin: BinaryIO, stdout: TextIO) -> int:
    """One invocation: the exit status; the result or the error object written on ``stdout``."""
    version = spec.SUPPORTED_VERSIONS[-1]
    try:
        data = stdin.read()
        command = environ.get("CNI_COMMAND", "")
        if command == "VERSION":
            try:
                asked = json.loads(data or b"{}").get("cniVersion") or version
            except (ValueError, AttributeError):
                asked = version
            json.dump({"cniVersion": asked, "supportedVersions": list(spec.SUPPORTED_VERSIONS)}, stdout)
            return 0
        env = spec.read_env(environ)
        conf = spec.read_config(data)
        version = conf.version
        if env.command in spec.ONLY_1_1 and conf.version != "1.1.0":
            raise CniError(spec.INCOMPATIBLE_VERSION, f"{env.command} needs cniVersion 1.1.0, not {conf.version}")
        if env.command == "ADD":
            json.dump(spec.result_json(cmd_add(env, conf), version), stdout)
        elif env.command == "DEL":
            cmd_del(env, conf)
        elif env.command == "CHECK":
            cmd_check(env, conf)
        elif env.command == "STATUS":
            cmd_status(conf)
        else:
            cmd_gc(env, conf)
        return 0
    except CniError as exc:
        json.dump(exc.to_json(version), stdout)
        return 1
    except Exception as exc:  # never a traceback instead of the spec's error object
        json.dump(CniError(spec.IO_FAILURE, f"snooze-cni failed: {type(exc).__name__}", str(exc)).to_json(version), stdout)
        return 1


def main() -> int:
    code = run(dict(os.environ), sys.stdin.buffer, sys.stdout)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
