"""The OpenAPI document (snooze.openapi): generated from the bootstrap's own routes, it lists
every route and nothing else (a route registered without a declaration fails here), it is a
valid OpenAPI 3.1 document, and it is served open at /openapi.json. The verbs' path form
(``/bootstrap/ping``, the form the document describes) answers as the original's ``?ping``.
(Fuzzed against a live cluster: tests/integration/test_openapi.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from bootstrap.service import Bootstrap
from snooze import config as cfg
from snooze import openapi
from snooze.codes import ErrorCode
from snooze.http import REQUESTS, VERBS, Access, ApiError, VerbRouter, new_app

Client: TypeAlias = TestClient[web.Request, web.Application]


def _bootstrap(**auth: Any) -> Bootstrap:
    # Built, not started: the routes are all registered at construction.
    return Bootstrap(cfg.from_dict({"node": {"listen_address": "127.0.0.1"}, "cluster": {"zookeeper": "127.0.0.1:9"},
                                    "auth": auth}))


def test_every_route_is_documented_and_every_documented_operation_is_a_route() -> None:
    app = _bootstrap().app
    drift = openapi.drift(app)
    assert drift.undocumented == [], f"routes with no openapi.describe(...) next to their handler: {drift.undocumented}"
    assert drift.unregistered == [], f"declarations of routes nobody registers: {drift.unregistered}"
    doc = openapi.document(app)
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    verbs = app[VERBS]["bootstrap"]
    for verb, entry in verbs.items():  # every verb, by its path form and each of its methods
        assert {(m, f"/bootstrap/{verb}") for m in entry.methods} <= operations, verb
    assert ("POST", "/snooze/internal") not in operations  # internal, signed with the cluster's key
    assert {("GET", "/networks"), ("PUT", "/images/{name}"), ("DELETE", "/tokens/{id}"), ("GET", "/events"),
            ("GET", "/health"), ("GET", "/metrics"), ("GET", "/openapi.json")} <= operations


def test_a_route_without_a_declaration_is_reported() -> None:
    service = _bootstrap()
    app = service.app

    async def handler(_request: web.Request) -> web.Response:
        return web.json_response(1)

    app.router.add_get("/new-thing", handler)
    service.routes.add("bootstrap", "getNewThing", handler, ("GET",))
    assert openapi.drift(app).undocumented == [("GET", "/new-thing"), ("GET", "/bootstrap/getNewThing")]
    openapi.describe(app, "DELETE", "/gone", openapi.Operation("a route nobody registers"))
    assert ("DELETE", "/gone") in openapi.drift(app).unregistered


def test_the_document_is_valid_openapi_3_1_with_errors_security_and_servers() -> None:
    doc = openapi.document(_bootstrap().app, title="Snooze", version="1", servers=["http://127.0.0.1:5000"])
    validate(doc)  # openapi-spec-validator: OpenAPI 3.1 and its JSON Schema 2020-12 dialect
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "http://127.0.0.1:5000"}]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "basic"}
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    assert set(error["properties"]["error"]["properties"]["code"]["enum"]) == {c.value for c in ErrorCode}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            assert {"400", "429"} <= statuses, (method, path)
            for status, answer in op["responses"].items():
                if status >= "400" and path != "/health":  # its 503 is its own answer: waiting
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if op["security"]:
                assert {"401", "503"} <= statuses, (method, path)
                assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
            if "requestBody" in op:
                assert "413" in statuses, (method, path)
    paths = doc["paths"]
    assert paths["/health"]["get"]["security"] == [] and paths["/openapi.json"]["get"]["security"] == []
    assert "403" in paths["/bootstrap/migrateVirtualMachine"]["post"]["responses"]  # admins only
    assert "403" not in paths["/bootstrap/startVirtualCluster"]["post"]["responses"]  # users too
    assert "?startVirtualCluster" in paths["/bootstrap/startVirtualCluster"]["post"]["description"]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    service = _bootstrap(enabled=True)
    service.guard.install(service.app)  # as start() does
    c = TestClient(TestServer(service.app))
    await c.start_server()
    yield c
    await c.close()


async def test_served_open_at_openapi_json_with_the_clients_address_as_server(client: Client) -> None:
    resp = await client.get("/openapi.json")
    doc = await resp.json()
    assert resp.status == 200, doc
    assert doc["servers"] == [{"url": str(client.make_url("")).rstrip("/")}]
    validate(doc)
    resp = await client.get("/bootstrap/getCompleteHierarchy")  # the rest needs a token
    assert (resp.status, (await resp.json())["error"]["field"]) == (401, "Authorization")


async def test_the_path_form_of_a_verb_answers_as_the_query_form() -> None:
    app = new_app()
    router = VerbRouter(app)

    async def echo(request: web.Request) -> Any:
        if request.query.get("id") == "missing":
            raise ApiError(ErrorCode.VIRTUAL_MACHINE_NOT_FOUND, "no such VM", field="id")
        return {"id": request.query.get("id"), "method": request.method, "body": (await request.read()).decode()}

    router.add("svc", "getThing", echo, ("GET", "POST"))
    router.add("svc", "doThing", echo, ("POST",), access=Access.USER)
    c = TestClient(TestServer(app))
    await c.start_server()
    try:
        cases = [("GET", "svc?getThing&id=a", "svc/getThing?id=a", None), ("POST", "svc?getThing", "svc/getThing", "x"),
                 ("GET", "svc?getThing&id=missing", "svc/getThing?id=missing", None),
                 ("POST", "svc?doThing&id=b", "svc/doThing?id=b", "y"), ("GET", "svc?doThing", "svc/doThing", None)]
        for method, original, path_form, body in cases:
            answers = []
            for target in (original, path_form):
                resp = await c.request(method, "/" + target, data=body)
                answers.append((resp.status, await resp.json()))
            assert answers[0] == answers[1], (method, original, answers)
        assert answers[0][0] == 405 and answers[0][1]["error"]["code"] == "METHOD_NOT_ALLOWED"
        # Counted as one (path, verb) by /metrics, whichever the form.
        counts = app[REQUESTS]
        assert counts[("/svc", "doThing", "POST", "200")] == 2 and counts[("/svc", "getThing", "GET", "404")] == 2
    finally:
        await c.close()
