"""Cross-origin access (CORS) to the APIs a page served elsewhere uses.

RFC 9725 lets WHIP/WHEP endpoints answer OPTIONS for CORS preflight; a player or
publisher page on another origin needs it for WHIP, WHEP, the session resources
(DELETE, PUT …/layer), the chat REST API and the recordings API. Those paths get
Starlette's CORSMiddleware with the origins of CORS_ORIGINS: `Authorization` and
`Content-Type` (and `If-Match`) allowed, `Location`, `ETag`, `Link` and `Retry-After`
exposed, no
cookies (tokens are bearer tokens), Private Network Access preflights answered.
Other paths (the pages, /dev/token, /sfu/stats) get no CORS headers: a page
elsewhere cannot read them.

An OPTIONS that is not a preflight (no Origin or no Access-Control-Request-Method)
answers 204 with `Allow` (and `Accept-Post: application/sdp` on WHIP/WHEP endpoints)
instead of 405.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIXES = ("/whip/", "/whep/", "/rooms/", "/recordings", "/cdn/")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
ALLOW_HEADERS = ("Authorization", "Content-Type", "If-Match")
EXPOSE_HEADERS = ("Location", "ETag", "Link", "Accept-Post", "Retry-After")


class ApiCors:
    """CORS on the API paths only, and OPTIONS answered there."""

    def __init__(self, app: ASGIApp, origins: Sequence[str], routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the app's (filled by the time requests come)
        self.cors = CORSMiddleware(
            app=app,
            allow_origins=list(origins),
            allow_methods=METHODS,
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            allow_credentials=False,
            # a page on a public origin calling a tchat on a private or loopback
            # address: Chromium's Private Network Access preflight asks for this; the
            # origin must be allowed all the same
            allow_private_network=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        preflight = b"origin" in headers and b"access-control-request-method" in headers
        if scope["method"] == "OPTIONS" and not preflight:
            await self._options(scope)(scope, receive, send)
            return
        await self.cors(scope, receive, send)

    def _options(self, scope: Scope) -> Response:
        allowed = allowed_methods(self.routes, scope)
        if not allowed:
            return Response(
                b'{"error":"not_found","detail":"no such resource"}',
                status_code=404,
                media_type="application/json",
            )
        allowed.add("OPTIONS")
        headers = {"Allow": ", ".join(sorted(allowed))}
        if "POST" in allowed and scope["path"].startswith(("/whip/", "/whep/")):
            headers["Accept-Post"] = "application/sdp"
        return Response(status_code=204, headers=headers)


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    """Every method some route takes at the scope's path (an `Allow` header lists them
    all; Starlette's own 405 names only the first route's)."""
    allowed: set[str] = set()
    for route in routes:
        match, _ = route.matches({**scope, "method": "GET"})
        methods = getattr(route, "methods", None)
        if match != Match.NONE and methods:
            allowed |= set(methods)
    return allowed
