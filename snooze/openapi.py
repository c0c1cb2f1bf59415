"""The public API's OpenAPI 3.1 document, generated from the routes a process registered.

Every operation is declared next to its handler, as data: ``describe(app, method, path, op)``
for a plain route (``/images/{id}``), ``describe_verb(app, prefix, verb, op)`` for one of the
original's verbs (``snooze.http.VerbRouter``). ``document(app)`` walks the application's own
router: each route it finds is described by its declaration, with what the router knows added
(its access level, hence its security and its 401/403; its path parameters; the errors every
request can meet), and a route without a declaration, or a declaration without a route, is
reported by ``drift(app)`` (a unit test keeps both lists empty). Nothing is written by hand
that the code already knows, so the document cannot drift from it.

The original's verbs are addressed by query string (``/bootstrap?getCompleteHierarchy``), which
an OpenAPI path cannot carry (a path item's key has no query, and one path may have only one
operation per method: every verb of ``/bootstrap`` would be one operation with one body). The
router therefore also serves each verb at its path form, ``/bootstrap/getCompleteHierarchy``,
with the same handler, access and answers; the document describes that form, and says so.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect), built with the small helpers below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from snooze.codes import ErrorCode
from snooze.http import INTERNAL_PATH, VERBS, Access, plain_route_access, set_access

__all__ = [
    "DOCS", "JSON", "OPENAPI_PATH", "TEXT", "Body", "Drift", "Operation", "Param", "any_of", "array", "boolean", "component",
    "describe", "describe_verb", "document", "drift", "integer", "not_documented", "nullable", "number", "obj",
    "ref", "serve", "string",
]

JSON = "application/json"
TEXT = "text/plain"
OPENAPI_PATH = "/openapi.json"
Schema = dict[str, Any]


# -- JSON Schema helpers -----------------------------------------------------------------------
def ref(name: str) -> Schema:
    """A component schema (``component(app, name, schema)``)."""
    return {"$ref": f"#/components/schemas/{name}"}


def string(**kw: Any) -> Schema:
    return {"type": "string", **kw}


def integer(**kw: Any) -> Schema:
    return {"type": "integer", **kw}


def number(**kw: Any) -> Schema:
    return {"type": "number", **kw}


def boolean(**kw: Any) -> Schema:
    return {"type": "boolean", **kw}


def array(items: Schema, **kw: Any) -> Schema:
    return {"type": "array", "items": items, **kw}


def obj(properties: Mapping[str, Schema] | None = None, *, required: Iterable[str] = (),
        extra: bool | Schema = True, **kw: Any) -> Schema:
    """An object; ``extra``: whether (or which) other properties may appear. Answers keep it
    True (a newer server may add fields); request bodies that refuse unknown fields say False."""
    out: Schema = {"type": "object"}
    if properties:
        out["properties"] = dict(properties)
    req = list(required)
    if req:
        out["required"] = req
    if extra is not True:
        out["additionalProperties"] = extra
    out.update(kw)
    return out


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def any_of(*schemas: Schema, **kw: Any) -> Schema:
    return {"anyOf": list(schemas), **kw}


# -- declarations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Body:
    """A request or answer body of one media type."""

    schema: Schema
    media: str = JSON
    description: str = ""
    #: Answer headers: name -> (schema, always sent).
    headers: Mapping[str, tuple[Schema, bool]] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # query, header, path
    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One operation: what it does, what it takes and what it answers.

    ``answers``: success status -> its bodies (one per media type; none: no body). ``errors``:
    the statuses of ``{"error": ...}`` answers the handler itself gives; those every request can
    meet (400, 413, 429, and 401/403/503 of authentication by the route's access) are added.
    """

    summary: str
    description: str = ""
    answers: Mapping[int, tuple[Body, ...]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    request: tuple[Body, ...] = ()
    request_required: bool = True
    params: tuple[Param, ...] = ()
    tags: tuple[str, ...] = ()


#: Declarations by (method, route template); verbs by their path form (``/bootstrap/ping``).
DOCS: web.AppKey[dict[tuple[str, str], Operation]] = web.AppKey("openapi_docs", dict)
#: Component schemas by name.
SCHEMAS: web.AppKey[dict[str, Schema]] = web.AppKey("openapi_schemas", dict)
#: Routes deliberately not in the document, by (method, route template): why not.
HIDDEN: web.AppKey[dict[tuple[str, str], str]] = web.AppKey("openapi_hidden", dict)


def _registry(app: web.Application, key: web.AppKey[Any]) -> Any:
    if key not in app:
        app[key] = {}
    return app[key]


def describe(app: web.Application, method: str, path: str, op: Operation) -> None:
    """``method path`` (a route template, e.g. ``/images/{id}``) is ``op``."""
    _registry(app, DOCS)[(method, path)] = op


def describe_verb(app: web.Application, prefix: str, verb: str, op: Operation | Mapping[str, Operation]) -> None:
    """The verb ``/prefix?verb`` (registered first) is ``op``, for each of its methods, or
    ``{method: op}`` where they differ."""
    entry = app[VERBS][prefix][verb]
    for method in entry.methods:
        chosen = op.get(method) if isinstance(op, Mapping) else op
        if chosen is not None:
            describe(app, method, f"/{prefix}/{verb}", chosen)


def component(app: web.Application, name: str, schema: Schema) -> None:
    _registry(app, SCHEMAS)[name] = schema


def not_documented(app: web.Application, method: str, path: str, why: str) -> None:
    """``method path`` is deliberately left out of the document, for ``why``."""
    _registry(app, HIDDEN)[(method, path)] = why


# -- the document ------------------------------------------------------------------------------
_REASONS = {
    400: "Bad input; `error.field` names what is wrong",
    401: "No token, or one that is malformed, unknown or revoked (`WWW-Authenticate: Bearer`)",
    403: "The token's role may not do this (an admin's is needed)",
    404: "Not found",
    405: "Method not allowed",
    408: "The request body did not arrive in time",
    409: "Conflicts with the current state",
    410: "Gone",
    411: "A Content-Length is needed",
    412: "Precondition failed",
    413: "The body is too large",
    428: "A version (If-Match) is needed",
    429: "Too many connections from this client address",
    502: "A component answered with a failure",
    503: "Not available now (no group leader, ZooKeeper out of reach, starting); retry after `Retry-After` seconds",
    504: "Timed out",
}
_SUCCESS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": integer(minimum=0)}
_ERROR_SCHEMA = obj({
    "error": obj({
        "code": string(enum=sorted(c.value for c in ErrorCode), description="What went wrong (snooze.codes.ErrorCode)"),
        "message": string(description="For a person"),
        "field": string(description="The input at fault: a body field (`rules[2].portEnd`), a parameter or a header"),
        "users": array(string(), description="NETWORK_OBJECT_IN_USE: what uses the object"),
    }, required=("code", "message")),
}, required=("error",))
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (`snooze token create`): `Authorization: Bearer snz_...`"},
    "basic": {"type": "http", "scheme": "basic",
              "description": "The token as the password of HTTP basic authentication (any user name), for the original's scripts"},
}
INTRODUCTION = """\
Snooze's public API, served by the bootstrap. Generated from the routes the server registered
(`snooze.openapi`), so it describes exactly what this server answers.

**The original's verbs.** Snooze's original API names its operations in the query string:
`GET /bootstrap?getCompleteHierarchy`, `POST /bootstrap?startVirtualCluster`. An OpenAPI path
cannot carry a query, so each verb is also served, and described here, at its path form
`/bootstrap/{verb}` (e.g. `POST /bootstrap/startVirtualCluster`): same handler, same access,
same answers. The `?verb` form keeps working unchanged; parameters of a verb given in the query
string follow the verb there (`/bootstrap?getVirtualMachineMetaData&id=vm-1` is
`/bootstrap/getVirtualMachineMetaData?id=vm-1`).

**Errors** are JSON `{"error": {"code", "message", "field"}}` (`#/components/schemas/Error`);
`field` names the input at fault. Every 503 carries `Retry-After`.

**Authentication** (when the bootstrap's `[auth] enabled` is on): an API token as
`Authorization: Bearer TOKEN`, or as the password of HTTP basic authentication. Operations with
`security: []` are open. Reads need any token; operations marked *admin* need an admin's token
(403 otherwise); operations marked *user* take a user's token and touch only that user's VMs.
"""


@dataclass
class Drift:
    """Routes with no declaration, and declarations with no route."""

    undocumented: list[tuple[str, str]]
    unregistered: list[tuple[str, str]]


def _routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, template) of every route the document must describe: verbs by their path form
    and methods; aiohttp's automatic HEAD of a GET left out (it answers as the GET, without a
    body), and so are the routes marked ``not_documented``."""
    verbs = app.get(VERBS) or {}
    hidden = app.get(HIDDEN) or {}
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        prefix, _, verb = path.lstrip("/").partition("/")
        if route.method == "*" and not verb and prefix in verbs:
            continue  # the ``?verb`` dispatcher: described by the verbs' path forms
        if route.method == "*" and verb in verbs.get(prefix, {}):
            methods: Iterable[str] = verbs[prefix][verb].methods
        elif route.method == "HEAD" and any(r.method == "GET" for r in resource):
            continue
        else:
            methods = (route.method,)
        for method in methods:
            key = (method, path)
            if key not in seen and key not in hidden:
                seen.add(key)
                out.append(key)
    return out


def drift(app: web.Application) -> Drift:
    routes = _routes(app)
    docs = app.get(DOCS) or {}
    hidden = app.get(HIDDEN) or {}
    return Drift(undocumented=[k for k in routes if k not in docs],
                 unregistered=sorted(k for k in docs if k not in set(routes) and k not in hidden))


def _access(app: web.Application, method: str, path: str) -> Access:
    verbs = app.get(VERBS) or {}
    prefix, _, verb = path.lstrip("/").partition("/")
    entry = verbs.get(prefix, {}).get(verb)
    if entry is not None:
        return entry.access  # type: ignore[no-any-return]
    return plain_route_access(app, method, path)


def _operation_id(method: str, path: str, verb: bool, methods: int) -> str:
    if verb:
        name = path.rsplit("/", 1)[-1]
        return name if methods == 1 else f"{name}{method.capitalize()}"
    words = [w for w in re.split(r"[^A-Za-z0-9]+", _PARAM.sub(lambda m: "by " + m.group(1), path)) if w]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words)


def _content(bodies: tuple[Body, ...]) -> dict[str, Any]:
    return {b.media: {"schema": b.schema} for b in bodies}


def _answer(status: int, bodies: tuple[Body, ...]) -> dict[str, Any]:
    text = next((b.description for b in bodies if b.description), "") or _SUCCESS.get(status, "Success")
    out: dict[str, Any] = {"description": text}
    if bodies:
        out["content"] = _content(bodies)
    headers: dict[str, Any] = {}
    for b in bodies:
        for name, (schema, always) in b.headers.items():
            headers[name] = {"schema": schema, "required": always}
    if headers:
        out["headers"] = headers
    return out


def _error(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _REASONS.get(status, "Error"),
                           "content": {JSON: {"schema": ref("Error")}}}
    if status == 503:
        out["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": True}}
    elif status == 429:
        out["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": False}}
    elif status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": string(), "required": True}}
    return out


def _describe_operation(app: web.Application, method: str, path: str, op: Operation, verb: bool, methods: int) -> dict[str, Any]:
    access = _access(app, method, path)
    out: dict[str, Any] = {"operationId": _operation_id(method, path, verb, methods), "summary": op.summary}
    note = {Access.PUBLIC: "Open: no token.", Access.READ: "Needs a token (any role).",
            Access.USER: "Needs a token: a user's touches only that user's VMs, an admin's any.",
            Access.ADMIN: "Needs an admin's token."}[access]
    if verb:
        prefix = path.lstrip("/").split("/", 1)[0]
        note += f" The original's form: `{method} /{prefix}?{path.rsplit('/', 1)[-1]}`."
    out["description"] = (op.description + "\n\n" if op.description else "") + note
    tags = op.tags or ((path.lstrip("/").split("/", 1)[0],) if not verb else ("verbs",))
    out["tags"] = list(tags)
    params: list[dict[str, Any]] = []
    given = {(p.where, p.name) for p in op.params}
    for name in _PARAM.findall(path):
        if ("path", name) not in given:
            params.append({"name": name, "in": "path", "required": True, "schema": string(minLength=1)})
    for p in op.params:
        entry: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required or p.where == "path", "schema": p.schema}
        if p.description:
            entry["description"] = p.description
        params.append(entry)
    if params:
        out["parameters"] = params
    if op.request:
        out["requestBody"] = {"required": op.request_required, "content": _content(op.request)}
    responses: dict[str, Any] = {str(s): _answer(s, bodies) for s, bodies in sorted(op.answers.items())}
    errors = set(op.errors) | {400, 429}
    if op.request:
        errors |= {408, 413}
    if access is not Access.PUBLIC:
        errors |= {401, 503}
        out["security"] = [{"bearer": []}, {"basic": []}]
        if access is Access.ADMIN:
            errors.add(403)
    else:
        out["security"] = []
    for status in sorted(errors):
        if str(status) not in responses:
            responses[str(status)] = _error(status)
    out["responses"] = responses
    return out


def document(app: web.Application, *, title: str = "Snooze", version: str = "", servers: Iterable[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes (undeclared ones with a placeholder: see
    ``drift``)."""
    docs = app.get(DOCS) or {}
    verbs = app.get(VERBS) or {}
    paths: dict[str, dict[str, Any]] = {}
    routes = _routes(app)
    per_path: dict[str, int] = {}
    for _method, path in routes:
        per_path[path] = per_path.get(path, 0) + 1
    for method, path in routes:
        prefix, _, name = path.lstrip("/").partition("/")
        verb = name in verbs.get(prefix, {})
        op = docs.get((method, path)) or Operation("Undocumented (a route with no declaration: a bug)")
        paths.setdefault(path, {})[method.lower()] = _describe_operation(app, method, path, op, verb, per_path[path])
    schemas = {"Error": _ERROR_SCHEMA, **dict(sorted((app.get(SCHEMAS) or {}).items()))}
    tags = sorted({t for item in paths.values() for op_doc in item.values() for t in op_doc["tags"]})
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": title, "version": version or "0", "description": INTRODUCTION,
                 "license": {"name": "GPL-2.0-or-later", "identifier": "GPL-2.0-or-later"}},
        "servers": [{"url": url} for url in servers] or [{"url": "/"}],
        "tags": [{"name": t} for t in tags],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas, "securitySchemes": _SECURITY_SCHEMES},
    }


def serve(app: web.Application, *, title: str, version: str) -> None:
    """``GET /openapi.json`` (open to all): ``app``'s document, with the address the client
    used as its server."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(document(app, title=title, version=version, servers=[f"{request.scheme}://{request.host}"]))

    app.router.add_get(OPENAPI_PATH, handle)
    set_access(app, "GET", OPENAPI_PATH, Access.PUBLIC)
    set_access(app, "HEAD", OPENAPI_PATH, Access.PUBLIC)
    describe(app, "GET", OPENAPI_PATH, Operation(
        "This document", "The OpenAPI 3.1 document of the public API, generated from the server's own routes.",
        answers={200: (Body(obj({"openapi": string(), "paths": obj()}, required=("openapi", "info", "paths"))),)},
        tags=("service",)))
    # Every role has it; only a served document needs to say it is left out.
    not_documented(app, "POST", INTERNAL_PATH, "internal: msgpack envelopes signed with the cluster's key, between Snooze processes")
