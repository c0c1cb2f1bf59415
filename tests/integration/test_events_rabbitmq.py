"""The event stream published to a real RabbitMQ (a private broker, snooze.dev.rabbitmq) by the
group leader, read with aio-pika as the original's consumers read its exchanges: the formation,
a submission and a failover arrive in the log's order, none missing, each with its kind's
routing key; the new leader goes on where the old one stopped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import pytest

from snooze.dev import rabbitmq
from tests.support import http, leader_id, run_virtual_cluster, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def broker_available() -> None:
    reason = rabbitmq.available()
    if reason:
        pytest.fail(reason)  # setup installs it: its absence is a failure, never a skip


async def _consume(url: str, into: list[dict[str, Any]], ready: asyncio.Event, stop: asyncio.Event) -> None:
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("snooze", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, "#")
        ready.set()
        async with queue.iterator() as it:
            async for message in it:
                async with message.process():
                    body = json.loads(message.body)
                    assert message.message_id == str(body["id"]) and message.type == body["kind"]
                    into.append({**body, "routingKey": message.routing_key})
                if stop.is_set():
                    break
    finally:
        await connection.close()


def test_events_reach_a_rabbitmq_consumer_in_order_across_a_failover(cluster_factory: Any, broker_available: None) -> None:
    c = cluster_factory(gms=3, lcs=2, events="rabbitmq")
    manifest = json.loads(c.manifest_path.read_text())
    url = manifest["rabbitmq"]["url"]
    got: list[dict[str, Any]] = []

    async def scenario() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        consumer = asyncio.create_task(_consume(url, got, ready, stop))
        await asyncio.wait_for(ready.wait(), 30)
        loop = asyncio.get_running_loop()
        first = leader_id(c)
        await loop.run_in_executor(None, run_virtual_cluster, c, [{"name": "mq-vm", "vcpus": 1, "memory": 262144}])
        await loop.run_in_executor(None, c.kill, first)

        def healed() -> bool:
            return any(e["kind"] == "GROUP_LEADER_ELECTED" and e["data"]["groupManagerId"] != first for e in got)

        await loop.run_in_executor(None, wait_for, healed, 40, "the new leader's election published")
        # Then one more event, published by the new leader.
        await loop.run_in_executor(None, run_virtual_cluster, c, [{"name": "mq-vm-2", "vcpus": 1, "memory": 262144}])
        await loop.run_in_executor(None, wait_for, lambda: any(e["data"].get("virtualMachineId") == "mq-vm-2" for e in got),
                                   20, "the second submission published")
        stop.set()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)

    asyncio.run(scenario())
    # At least once, deduplicated by message id, in the log's order with nothing missing: the
    # ids consecutive from the first one this consumer saw (it bound after the formation).
    seen: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for e in got:
        if e["id"] not in seen:
            seen[e["id"]] = e
            order.append(e["id"])
    assert order == sorted(order), order
    assert order == list(range(order[0], order[0] + len(order))), order
    status, log = http("GET", c.bootstrap_url + f"/events?format=json&after={order[0] - 1}&limit=10000")
    assert status == 200
    assert [e["id"] for e in log["events"]][: len(order)] == order  # the same stream as the bootstrap's
    kinds = [seen[i]["kind"] for i in order]
    assert "VIRTUAL_MACHINE_STATE" in kinds and "GROUP_LEADER_ELECTED" in kinds
    assert all(seen[i]["routingKey"] == {"VIRTUAL_MACHINE_STATE": "vm.state", "GROUP_LEADER_ELECTED": "groupleader.elected"}
               .get(seen[i]["kind"], seen[i]["routingKey"]) for i in order)
    mq = [seen[i] for i in order if seen[i]["data"].get("virtualMachineId") == "mq-vm"]
    assert mq and mq[0]["data"]["status"] == "RUNNING"
