"""The one module that talks AMQP (RabbitMQ, with aio-pika) and maps its errors: a publisher of
JSON messages to a durable topic exchange, with publisher confirms (a message counts as sent
once the broker said it has it). Every failure of the library or of the connection is an
``AmqpError``; ``AmqpPublisher.publish`` either returns with the broker's confirmation or
raises it, and the caller sends again (at-least-once, with the message id for deduplication).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq

from snooze.codes import CodedError, ErrorCode

__all__ = ["AmqpError", "AmqpPublisher"]


class AmqpError(CodedError):
    """The broker cannot be reached, refused a message or did not confirm it."""

    code = ErrorCode.UNREACHABLE


_FAILURES = (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, ConnectionError, OSError, TimeoutError,
             asyncio.TimeoutError, RuntimeError)


class AmqpPublisher:
    def __init__(self, url: str, exchange: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.exchange_name = exchange
        self.timeout = timeout
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def _ready(self) -> aio_pika.abc.AbstractExchange:
        if self._exchange is not None and self._connection is not None and not self._connection.is_closed:
            return self._exchange
        await self.close()
        try:
            self._connection = await asyncio.wait_for(aio_pika.connect_robust(self.url), self.timeout)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        except _FAILURES as exc:
            await self.close()
            raise AmqpError(f"RabbitMQ at {_safe(self.url)}: {type(exc).__name__}: {exc}") from exc
        return self._exchange

    async def publish(self, routing_key: str, body: Any, *, message_id: str, kind: str, timestamp: float) -> None:
        exchange = await self._ready()
        message = aio_pika.Message(json.dumps(body, sort_keys=True).encode(), content_type="application/json",
                                   message_id=message_id, type=kind, timestamp=timestamp,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            await asyncio.wait_for(exchange.publish(message, routing_key=routing_key), self.timeout)
        except _FAILURES as exc:
            await self.close()
            raise AmqpError(f"RabbitMQ at {_safe(self.url)} did not take message {message_id}: {exc}") from exc

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except _FAILURES:
                pass


def _safe(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
