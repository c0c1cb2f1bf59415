"""The web dashboard, served by the bootstrap at ``/ui/``.

Plain files (HTML, CSS and ES modules in ``static/``), no build step: the page is a client of
the public API like any other. It reads the hierarchy (``?getCompleteHierarchy``), the VMs
(``?getVirtualMachineDescriptions&v=2``) and the event stream (``/events``, read with
``fetch`` so that it can carry the token), and acts through the original's verbs. So it can do
nothing its token could not do with curl, and the files themselves carry no data: they are
public, and every call the page makes is checked by the API's guard (snooze.auth).

A token is given in the page (kept in the tab's ``sessionStorage``) or in the address's
fragment, ``/ui/#token=snz_…``, which never reaches a server's log.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from snooze.http import Access, set_access
from snooze.openapi import not_documented

if TYPE_CHECKING:
    from bootstrap.service import Bootstrap

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: The page's own files only: no inline script, no other origin (a stored VM name is text, never markup).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Dashboard:
    """``GET /ui/`` and its files, read once at start (a fixed set: a name is never a path)."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(STATIC.iterdir()):
            if path.suffix in TYPES and path.is_file():
                body = path.read_bytes()
                self.files[path.name] = (body, TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
        app = bootstrap.app
        app.router.add_get("/ui", self.redirect)
        app.router.add_get("/ui/", self.index)
        app.router.add_get("/ui/{name}", self.file)
        for route in ("/ui", "/ui/", "/ui/{name}"):
            for method in ("GET", "HEAD"):
                set_access(app, method, route, Access.PUBLIC)
            not_documented(app, "GET", route, "the web dashboard's pages and files: for a browser, not an API")

    async def redirect(self, _request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/ui/")

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, "index.html")

    async def file(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, request.match_info["name"])

    def _serve(self, request: web.Request, name: str) -> web.StreamResponse:
        found = self.files.get(name)
        if found is None:
            raise web.HTTPNotFound(text=f"no file {name!r} in the dashboard\n")
        body, ctype, etag = found
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, **SECURITY_HEADERS})
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers={"ETag": etag, **SECURITY_HEADERS})
