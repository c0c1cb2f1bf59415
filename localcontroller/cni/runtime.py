"""A minimal CNI runtime: run one plugin, or a network configuration list's chain, as libcni
does (each plugin gets the list's ``name`` and ``cniVersion``; ADD in order, each after the
first with the previous result as ``prevResult``; DEL in reverse order with the ADD's result;
CHECK in order with it). For the tests and the benchmark, and to try a conflist by hand.

``prefix`` runs each plugin under a command (``["ip", "netns", "exec", "HOST"]``: a test's
"host" namespace), ``path`` is ``CNI_PATH``: where plugins are looked up by ``type``.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Invocation", "find_plugin", "run_chain", "run_plugin"]


@dataclass
class Invocation:
    code: int
    output: Any  # the JSON printed (a result, an error object) or None
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def find_plugin(name: str, path: list[str]) -> str:
    for d in path:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"no CNI plugin {name!r} in {':'.join(path)}")


async def run_plugin(plugin: str, command: str, conf: dict[str, Any] | bytes, *, container_id: str = "", netns: str = "",
                     ifname: str = "eth0", args: str = "", path: list[str] | None = None,
                     prefix: list[str] | None = None, extra_env: dict[str, str] | None = None,
                     timeout: float = 60.0) -> Invocation:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_PATH": ":".join(path or [])}
    for k, v in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
        if v:
            env[k] = v
    env.update(extra_env or {})
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = await asyncio.create_subprocess_exec(*(prefix or []), plugin, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    try:
        parsed = json.loads(out) if out.strip() else None
    except ValueError:
        parsed = out.decode(errors="replace")
    return Invocation(proc.returncode if proc.returncode is not None else -1, parsed, err.decode(errors="replace"))


async def run_chain(conflist: dict[str, Any], command: str, *, path: list[str], prev: dict[str, Any] | None = None,
                    **kw: Any) -> Invocation:
    """The list's plugins for ``command`` (ADD, DEL, CHECK); the last result (ADD), or the first
    failure. ``prev``: the ADD's result, for DEL and CHECK."""
    plugins = list(conflist["plugins"])
    if command == "DEL":
        plugins.reverse()
    result = prev
    last = Invocation(0, None, "")
    failed: Invocation | None = None
    for p in plugins:
        conf = {**p, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if result is not None and (command != "ADD" or p is not conflist["plugins"][0]):
            conf["prevResult"] = result
        last = await run_plugin(find_plugin(p["type"], path), command, conf, path=path, **kw)
        if not last.ok:
            if command == "DEL":
                failed = failed or last
                continue  # DEL goes on through the chain, reporting the first failure at the end
            return last
        if command == "ADD":
            result = last.output
    if failed is not None:
        return failed
    return Invocation(last.code, result if command == "ADD" else last.output, last.stderr)
