"""The network API of a bootstrap that has no ZooKeeper session: every endpoint answers 503
ZOOKEEPER_UNAVAILABLE with a Retry-After, at once; and what is wrong with the request itself (a
bad id in the path, a missing version) is said first, without ZooKeeper. (The endpoints with
ZooKeeper: tests/integration/test_network_api.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bootstrap.service import Bootstrap
from snooze import config as cfg

Client: TypeAlias = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    # Built, not started: no ZooKeeper session (coord is None), as before its first connection.
    service = Bootstrap(cfg.from_dict({"node": {"listen_address": "127.0.0.1"}, "cluster": {"zookeeper": "127.0.0.1:9"}}))
    assert service.coord is None
    c = TestClient(TestServer(service.app))
    await c.start_server()
    yield c
    await c.close()


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/networks", None), ("POST", "/networks", {"id": "n"}), ("GET", "/subnets/s1", None),
    ("PUT", "/flavors/f?version=0", {"id": "f", "vcpus": 1, "memory": 1}), ("DELETE", "/vlans/100", None),
    ("GET", "/subnets/s1/addresses", None), ("POST", "/subnets/s1/addresses", {"guest": "g"}),
    ("GET", "/hypervisors", None), ("GET", "/hypervisors/lc-1", None), ("GET", "/guests", None),
])
async def test_every_endpoint_answers_503_without_zookeeper(client: Client, method: str, path: str,
                                                           body: object) -> None:
    resp = await client.request(method, path, json=body)
    answer = await resp.json()
    assert resp.status == 503, answer
    assert answer["error"]["code"] == "ZOOKEEPER_UNAVAILABLE"
    assert "ZooKeeper" in answer["error"]["message"]
    assert int(resp.headers["Retry-After"]) >= 1


async def test_bad_requests_are_refused_before_zookeeper_is_needed(client: Client) -> None:
    resp = await client.get("/networks/a%0Ab")
    assert (resp.status, (await resp.json())["error"]["field"]) == (400, "id")
    resp = await client.delete("/vlans/4095")
    assert (resp.status, (await resp.json())["error"]["field"]) == (400, "tag")
    resp = await client.put("/networks/n", json={"id": "n"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (428, "VERSION_REQUIRED")
