"""``GET /events``: the cluster's event stream (snooze.events) as server-sent events.

Each event is ``id: SEQ`` / ``event: KIND`` / ``data: {"id", "kind", "source", "epoch", "time",
"data"}``, in the log's order. A client that reconnects with ``Last-Event-ID`` (or asks
``?after=SEQ``) first gets every event after that one still in the log, then the new ones:
none is missing, none comes twice. Without either it gets only new events; ``?after=-1`` starts
from the oldest one kept. ``?kinds=A,B`` keeps those kinds only. A comment line every 15 s
keeps idle connections open through proxies. ``?format=json`` answers once instead:
``{"events": [...], "last": SEQ}`` (at most ``limit``, default 1000), for clients that poll.

A user's token sees the hierarchy's events and the events of their own VMs only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import TYPE_CHECKING

from aiohttp import web

from snooze.auth import Principal
from snooze.auth.guard import principal_of
from snooze.codes import ErrorCode
from snooze.coordination import CoordinationError, once_reachable
from snooze.events import Event, EventFeed, EventKind
from snooze.http import ApiError, bad_request, json_response
from snooze.openapi import (
    Body,
    Operation,
    Param,
    array,
    component,
    describe,
    integer,
    number,
    obj,
    ref,
    string,
)
from snooze.records import RecordError

if TYPE_CHECKING:
    from bootstrap.service import Bootstrap

__all__ = ["EventsApi"]

KEEPALIVE = 15.0
#: An event id or a count as the query or Last-Event-ID give it: plain decimal digits.
_WHOLE = re.compile(r"-?[0-9]{1,19}")
MAX_SEQ = 2**63 - 1
_VM_KINDS = {EventKind.VIRTUAL_MACHINE_STATE, EventKind.MIGRATION_STARTED, EventKind.MIGRATION_FINISHED,
             EventKind.MIGRATION_FAILED}


class EventsApi:
    def __init__(self, bootstrap: Bootstrap) -> None:
        self.b = bootstrap
        self.feed: EventFeed | None = None
        self._owners: dict[str, str | None] = {}
        #: Set when the bootstrap stops: open streams end at once (else they hold its stop up).
        self.closing = asyncio.Event()
        bootstrap.app.router.add_get("/events", self.stream)
        _describe(bootstrap.app)

    async def follow(self) -> None:
        """Follow the log once ZooKeeper answers (a task of the bootstrap)."""
        assert self.b.coord is not None
        feed = EventFeed(self.b.coord)
        await once_reachable(feed.start, "the event log")
        self.feed = feed
        await feed.run()

    # -- what a caller may see -----------------------------------------------------------
    async def _owner(self, vm_id: str) -> str | None:
        if vm_id not in self._owners:
            if len(self._owners) > 100_000:
                self._owners.clear()
            try:
                rec = await self.b.vms.store.get_vm(vm_id)
            except (CoordinationError, RecordError):
                return None  # not cached: asked again next time
            self._owners[vm_id] = rec.owner if rec is not None else None
        return self._owners[vm_id]

    async def visible(self, principal: Principal, ev: Event) -> bool:
        if principal.admin or ev.kind not in _VM_KINDS:
            return True
        owner = ev.data.get("owner")
        if owner is None and isinstance(ev.data.get("virtualMachineId"), str):
            owner = await self._owner(ev.data["virtualMachineId"])
        return owner == principal.user

    # -- the endpoint --------------------------------------------------------------------
    def _params(self, request: web.Request) -> tuple[int | None, set[EventKind] | None, int]:
        # A blank Last-Event-ID is none (an EventSource that has seen no event id sends none).
        header = request.headers.get("Last-Event-ID", "").strip()
        raw, where = (header, "Last-Event-ID") if header else (request.query.get("after"), "after")
        after: int | None = None
        if raw is not None:
            if not _WHOLE.fullmatch(raw):
                raise bad_request(f"{where} must be an event id (a whole number)", field=where)
            after = int(raw)
            if not -1 <= after <= MAX_SEQ:
                raise bad_request(f"{where} must be from -1 to {MAX_SEQ}", field=where)
        kinds: set[EventKind] | None = None
        if request.query.get("kinds"):
            try:
                kinds = {EventKind(k.strip()) for k in request.query["kinds"].split(",") if k.strip()}
            except ValueError:
                raise bad_request(f"kinds: each one of {', '.join(k.value for k in EventKind)}", field="kinds") from None
        raw_limit = request.query.get("limit", "1000")
        limit = int(raw_limit) if _WHOLE.fullmatch(raw_limit) else -1
        if not 1 <= limit <= 10_000:
            raise bad_request("limit must be a whole number from 1 to 10000", field="limit")
        return after, kinds, limit

    async def stream(self, request: web.Request) -> web.StreamResponse:
        after, kinds, limit = self._params(request)
        feed = self.feed
        if feed is None:
            raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE, "the event log is not followed yet; retry", status=503)
        principal = principal_of(request)
        start = feed.last if after is None else after

        async def shown(events: list[Event]) -> list[Event]:
            return [ev for ev in events if (kinds is None or ev.kind in kinds) and await self.visible(principal, ev)]

        if request.query.get("format") == "json":
            try:
                events = await feed.read_after(start, limit)
            except CoordinationError as exc:
                raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE, f"the event log cannot be read: {exc}", status=503) from exc
            last = events[-1].seq if events else start
            return json_response({"events": [ev.to_json() for ev in await shown(events)], "last": last})
        sub = feed.subscribe(start)  # first, so that nothing written meanwhile is missed
        try:
            backlog = await feed.read_after(start) if start < feed.last else []
        except CoordinationError as exc:
            sub.close()
            raise ApiError(ErrorCode.ZOOKEEPER_UNAVAILABLE, f"the event log cannot be read: {exc}", status=503) from exc
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sent = start
        try:
            for ev in await shown(backlog):
                await resp.write(_frame(ev))
            sent = max([sent] + [ev.seq for ev in backlog])
            while not self.closing.is_set():
                next_event = asyncio.ensure_future(sub.get())
                closing = asyncio.ensure_future(self.closing.wait())
                done, _ = await asyncio.wait({next_event, closing}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
                closing.cancel()
                if next_event not in done:
                    next_event.cancel()
                    if not self.closing.is_set():
                        await resp.write(b": keepalive\n\n")
                    continue
                got = next_event.result()
                if got is None:
                    break  # fell behind: the client reconnects with Last-Event-ID
                if got.seq <= sent:
                    continue
                sent = got.seq
                if (kinds is None or got.kind in kinds) and await self.visible(principal, got):
                    await resp.write(_frame(got))
        except ConnectionError:
            pass  # the client went away
        finally:
            sub.close()
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp


def _frame(ev: Event) -> bytes:
    return f"id: {ev.seq}\nevent: {ev.kind}\ndata: {json.dumps(ev.to_json(), sort_keys=True)}\n\n".encode()


def _describe(app: web.Application) -> None:
    """This module's part of the OpenAPI document (snooze.openapi)."""
    event = obj({"id": integer(), "kind": string(enum=[k.value for k in EventKind]), "source": string(),
                 "epoch": integer(), "time": number(), "data": obj()}, required=("id", "kind", "source", "epoch", "time", "data"))
    component(app, "Event", event)
    describe(app, "GET", "/events", Operation(
        "The cluster's event stream (server-sent events), or one page of it in JSON",
        "Without `format=json`: a `text/event-stream` that stays open, each event as `id: SEQ`, `event: KIND`, "
        "`data: EVENT`, a comment line every 15 s; reconnect with `Last-Event-ID` to miss none. With `format=json`: "
        "at most `limit` events after `after`, and the id of the last one read.",
        params=(Param("after", "query", integer(minimum=-1, maximum=2**63 - 1),
                      "Start after this event id (-1: from the oldest kept); default: new events only"),
                Param("Last-Event-ID", "header", string(pattern=r"^\s*(-?[0-9]{1,19})?\s*$"),
                      "As `after` (a reconnecting client); blank: none"),
                Param("kinds", "query", string(), "Only these kinds (comma separated)"),
                Param("limit", "query", integer(minimum=1, maximum=10_000), "format=json: at most this many (default 1000)"),
                Param("format", "query", string(enum=["json"]), "json: one answer instead of a stream")),
        answers={200: (Body(obj({"events": array(ref("Event")), "last": integer()}, required=("events", "last")),
                            description="The events (format=json), or the stream"),
                       Body(string(), "text/event-stream"))},
        errors=(503,)))
