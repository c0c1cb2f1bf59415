"""snooze-cni against real namespaces, real ZooKeeper and its agent, in-process on 127.0.0.1 of a
"host" namespace this test creates (its listening socket is made there; the plugin runs there
with ``ip netns exec``). Containers are namespaces too; every one is deleted after the test,
also on failure. Addresses exist only inside these namespaces (checked with ``ip route get``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localcontroller.cni.agent import AgentSettings, CniAgent
from localcontroller.cni.runtime import Invocation, run_chain, run_plugin
from snooze.coordination import Coordinator
from snooze.dev import netns
from snooze.network.model import Flavor, Guest, Network, Subnet
from snooze.network.store import NetworkStore

pytestmark = pytest.mark.integration

SUBNET = "10.234.9"
REFERENCE = Path("/usr/lib/cni")
PLUGIN = str(Path(sys.executable).with_name("snooze-cni"))


@pytest.fixture(autouse=True)
def needs_netns() -> None:
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    if not os.access(PLUGIN, os.X_OK):
        pytest.skip("snooze-cni is not installed in the virtualenv (pip install -e .)")


@dataclass
class Lab:
    prefix: str
    host: str
    agent: CniAgent
    store: NetworkStore
    coord: Coordinator
    records: Path
    bindir: Path
    made: list[str] = field(default_factory=list)

    def container(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        self.made.append(ns)
        netns.ip("netns", "add", ns)
        return ns

    def conf(self, **snooze: Any) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": "net1", "type": "snooze-cni",
                "snooze": {"agent": self.agent.url, "network": "net1", "recordDir": str(self.records),
                           "pollTimeout": 0.5, "pollRetries": 6, **snooze}}

    async def cni(self, command: str, ns: str | None, cid: str, conf: dict[str, Any] | None = None, **kw: Any) -> Invocation:
        return await run_plugin(PLUGIN, command, conf or self.conf(), container_id=cid,
                                netns=f"/run/netns/{ns}" if ns else "", prefix=["ip", "netns", "exec", self.host],
                                path=[str(self.bindir), str(REFERENCE)], **kw)

    def pings(self, ns: str, address: str, server_ns: str | None = None) -> bool:
        """A TCP connection from container ``ns`` to a listener on ``address`` (the gateway, on
        the host's bridge) is set up: the path works both ways (no ping binary needed)."""
        assert netns.route_device(ns, address) == "eth0", "never send outside the test's namespaces"

        def listen() -> socket.socket:
            s = socket.socket()
            s.bind((address, 0))
            s.listen(1)
            return s

        server = netns.call_in(server_ns or self.host, listen)
        port = server.getsockname()[1]

        def connect() -> bool:
            try:
                with socket.create_connection((address, port), timeout=2):
                    return True
            except OSError:
                return False

        try:
            return netns.call_in(ns, connect)
        finally:
            server.close()

    def links(self, ns: str) -> list[str]:
        out = netns.ip("-o", "link", "show", netns=ns)
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def guests(self) -> list[str]:
        return sorted(g.key for g in self.store.objects("guests"))


def _listen_in(ns: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.setblocking(False)
        return s

    return netns.call_in(ns, make)


async def _start_agent(coord: Coordinator, host: str, **kw: Any) -> CniAgent:
    agent = CniAgent(coord, "lc-1", AgentSettings(**{"grace_period": 30.0, **kw}))
    await agent.start(sock=_listen_in(host))
    return agent


@pytest.fixture
async def lab(coord: Coordinator, tmp_path: Path) -> AsyncIterator[Lab]:
    prefix = f"fcni{secrets.token_hex(3)}"
    host = f"{prefix}-host"
    netns.ip("netns", "add", host)
    made = [host]
    agent = None
    lab: Lab | None = None
    try:
        netns.ip("link", "set", "lo", "up", netns=host)
        store = NetworkStore.of(coord)
        await coord.call(store.ensure)
        await coord.call(store.create, Network("net1"))
        await coord.call(store.create, Subnet.from_json({"id": "sub1", "network": "net1", "cidr": f"{SUBNET}.0/24",
                                                        "gateway": f"{SUBNET}.1", "dns": [f"{SUBNET}.2"],
                                                        "start": f"{SUBNET}.10", "end": f"{SUBNET}.200"}))
        agent = await _start_agent(coord, host)
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "snooze-cni").symlink_to(PLUGIN)
        lab = Lab(prefix, host, agent, store, coord, tmp_path / "records", bindir, made)
        yield lab
    finally:
        if lab is not None:
            await lab.agent.stop()  # the one running now (a test may have restarted it)
        elif agent is not None:
            await agent.stop()
        netns.delete_namespaces(made)


async def test_add_check_del_conformance(lab: Lab) -> None:
    c = lab.container("c1")
    add = await lab.cni("ADD", c, "cid1")
    assert add.ok, add.output
    res = add.output
    assert res["cniVersion"] == "1.0.0"
    ip = res["ips"][0]
    assert ip["address"].startswith(f"{SUBNET}.") and ip["gateway"] == f"{SUBNET}.1"
    assert res["interfaces"][ip["interface"]]["sandbox"] == f"/run/netns/{c}"
    assert res["dns"] == {"nameservers": [f"{SUBNET}.2"]}
    assert lab.pings(c, f"{SUBNET}.1")
    assert await lab.coord.call(lab.guests) == ["cid1.eth0"]
    # ADD again: the interface exists -> an error, and the first port still works.
    again = await lab.cni("ADD", c, "cid1")
    assert not again.ok and again.output["code"] == 100
    assert lab.pings(c, f"{SUBNET}.1")
    # CHECK: fine with prevResult; an error without; an error once the address is gone.
    assert (await lab.cni("CHECK", c, "cid1", {**lab.conf(), "prevResult": res})).ok
    assert (await lab.cni("CHECK", c, "cid1")).output["code"] == 7
    netns.ip("addr", "del", ip["address"], "dev", "eth0", netns=c)
    bad = await lab.cni("CHECK", c, "cid1", {**lab.conf(), "prevResult": res})
    assert not bad.ok and bad.output["code"] == 103
    # DEL twice: both succeed; the address is released.
    assert (await lab.cni("DEL", c, "cid1")).ok
    assert (await lab.cni("DEL", c, "cid1")).ok
    assert await lab.coord.call(lab.guests) == []
    assert "eth0" not in lab.links(c)
    assert not [n for n in lab.links(lab.host) if n.startswith("snz") and n != "snzbr0"]


async def test_del_after_the_namespace_is_gone_releases_the_address(lab: Lab) -> None:
    c = lab.container("c2")
    assert (await lab.cni("ADD", c, "cid2")).ok
    assert len(await lab.coord.call(lab.guests)) == 1
    netns.ip("netns", "delete", c)
    d = await lab.cni("DEL", c, "cid2")
    assert d.ok, d.output
    assert await lab.coord.call(lab.guests) == []
    assert not [n for n in lab.links(lab.host) if n.startswith("snz") and n != "snzbr0"]


async def test_a_stale_delete_is_ignored_and_touches_nothing(lab: Lab) -> None:
    pod = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0"
    c1, c2 = lab.container("p1"), lab.container("p2")
    a1 = await lab.cni("ADD", c1, "C1", args=pod)
    assert a1.ok, a1.output
    a2 = await lab.cni("ADD", c2, "C2", args=pod)
    assert a2.ok, a2.output
    assert a2.output["ips"][0]["address"] == a1.output["ips"][0]["address"]  # the same port, taken over
    late = await lab.cni("DEL", c1, "C1", args=pod)
    assert late.ok and late.output is None
    assert "eth0" in lab.links(c2)
    assert lab.pings(c2, f"{SUBNET}.1")
    assert await lab.coord.call(lab.guests) == ["ns1.web-0.eth0"]
    assert (await lab.cni("DEL", c2, "C2", args=pod)).ok
    assert await lab.coord.call(lab.guests) == []
    assert "eth0" not in lab.links(c2)


async def test_an_unreadable_record_is_an_error_not_a_stale_delete(lab: Lab) -> None:
    c = lab.container("r1")
    assert (await lab.cni("ADD", c, "cidr1")).ok
    (lab.records / "cidr1.eth0.json").write_text("{broken")
    d = await lab.cni("DEL", c, "cidr1")
    assert not d.ok and d.output["code"] == 5
    assert "eth0" in lab.links(c)
    (lab.records / "cidr1.eth0.json").unlink()
    assert (await lab.cni("DEL", c, "cidr1")).ok


async def test_chains_snooze_tuning_and_the_reference_bridge_host_local_tuning(lab: Lab, tmp_path: Path) -> None:
    if not (REFERENCE / "bridge").exists():
        pytest.skip("containernetworking-plugins is not installed")
    snooze = {"cniVersion": "1.0.0", "name": "net1", "plugins": [
        {k: v for k, v in lab.conf().items() if k not in ("cniVersion", "name")},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "0"}}]}
    ref = {"cniVersion": "1.0.0", "name": "ref", "plugins": [
        {"type": "bridge", "bridge": "refbr0", "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "10.234.10.0/24", "dataDir": str(tmp_path / "hl")}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "0"}}]}
    path = [str(lab.bindir), str(REFERENCE)]
    chains: list[tuple[dict[str, Any], str]] = [(snooze, f"{SUBNET}.1"), (ref, "10.234.10.1")]
    for conflist, gw in chains:
        c = lab.container(conflist["name"] + "x")
        kw: dict[str, Any] = {"container_id": "ch" + conflist["name"], "netns": f"/run/netns/{c}",
              "prefix": ["ip", "netns", "exec", lab.host]}
        add = await run_chain(conflist, "ADD", path=path, **kw)
        assert add.ok, add.output
        assert add.output["ips"] and add.output["interfaces"]  # tuning passed prevResult through
        assert netns.ip("netns", "exec", c, "cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter").strip() == "0"
        assert lab.pings(c, gw)
        assert (await run_chain(conflist, "CHECK", path=path, prev=add.output, **kw)).ok
        assert (await run_chain(conflist, "DEL", path=path, prev=add.output, **kw)).ok
        assert "eth0" not in lab.links(c)
    assert await lab.coord.call(lab.guests) == []


async def test_agent_404_for_a_while_then_forever(lab: Lab, coord: Coordinator) -> None:
    await lab.agent.stop()
    lab.agent = await _start_agent(coord, lab.host, allocate=False)
    conf = lab.conf()
    c = lab.container("w1")

    async def declare() -> None:
        await asyncio.sleep(1.0)
        await coord.call(lab.store.create, Flavor("container", vcpus=1, memory=65536))
        await coord.call(lab.store.create_guest, Guest("w1id.eth0", "container", "net1", hypervisor="lc-1", type="container"))

    task = asyncio.create_task(declare())
    add = await lab.cni("ADD", c, "w1id", conf)
    await task
    assert add.ok, add.output
    assert (await lab.cni("DEL", c, "w1id", conf)).ok
    # Never declared: code 11 within retries x timeout, and no veth anywhere.
    c2 = lab.container("w2")
    short = lab.conf(pollTimeout=0.3, pollRetries=3)
    add2 = await lab.cni("ADD", c2, "w2id", short)
    assert not add2.ok and add2.output["code"] == 11
    assert "eth0" not in lab.links(c2)
    assert not [n for n in lab.links(lab.host) if n.startswith("snz") and n != "snzbr0"]


async def test_agent_restart_replays_recorded_ports_and_purges_the_others(lab: Lab, coord: Coordinator) -> None:
    ca, cb = lab.container("ra"), lab.container("rb")
    assert (await lab.cni("ADD", ca, "ra1")).ok
    assert (await lab.cni("ADD", cb, "rb1")).ok
    await lab.agent.stop()
    netns.ip("netns", "delete", cb)  # rb's container went away while no agent listened
    lab.agent = await _start_agent(coord, lab.host, grace_period=1.0, record_directory=str(lab.records))
    assert sorted(lab.agent.pending) == ["rb1.eth0"]  # ra1 replayed from its record at start
    await asyncio.sleep(1.5)
    assert lab.agent.purged == ["rb1.eth0"]
    assert await coord.call(lab.guests) == ["ra1.eth0"]
    assert lab.pings(ca, f"{SUBNET}.1")
    # The sync call too: a restart with no record directory, the ports replayed by POST /sync.
    await lab.agent.stop()
    lab.agent = await _start_agent(coord, lab.host, grace_period=30.0)
    assert sorted(lab.agent.pending) == ["ra1.eth0"]
    import json
    import urllib.request

    rec = json.loads((lab.records / "ra1.eth0.json").read_text())

    def sync() -> Any:
        req = urllib.request.Request(f"{lab.agent.url}/sync", data=json.dumps({"ports": [rec]}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    answer = await asyncio.get_running_loop().run_in_executor(None, netns.call_in, lab.host, sync)
    assert answer["replayed"] == ["ra1.eth0"] and answer["pending"] == []
    assert (await lab.cni("DEL", ca, "ra1")).ok
    assert await coord.call(lab.guests) == []


async def test_macvlan_mode_puts_a_sub_interface_of_the_parent_in_the_namespace(lab: Lab) -> None:
    netns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up1", netns=lab.host)  # no dummy module here
    netns.ip("link", "set", "up0", "up", netns=lab.host)
    c = lab.container("m1")
    conf = lab.conf(mode="macvlan", parent="up0")
    add = await lab.cni("ADD", c, "mv1", conf)
    assert add.ok, add.output
    assert [i["name"] for i in add.output["interfaces"]] == ["eth0"]
    assert add.output["ips"][0]["interface"] == 0
    detail = netns.ip("-d", "link", "show", "eth0", netns=c)
    assert "macvlan" in detail
    assert add.output["ips"][0]["address"] in netns.ip("-o", "addr", "show", "dev", "eth0", netns=c)
    assert (await lab.cni("ADD", c, "mv1", conf)).output["code"] == 100
    assert (await lab.cni("DEL", c, "mv1", conf)).ok
    assert "eth0" not in lab.links(c)
    assert await lab.coord.call(lab.guests) == []
