"""The admin listener: the only place local-only routes answer (issue 14.9).

`tchat serve` listens twice: on TCHAT_HOST:TCHAT_PORT (the public listener, the one a
reverse proxy forwards to) and on 127.0.0.1:TCHAT_ADMIN_PORT (the admin listener). The
same app answers both; a route that is for the host's own users (dev tokens, per-viewer
stats naming sessions and addresses) checks which socket the connection came in on.

Neither the client address nor the Host header can tell a local user from a reverse
proxy on the same host: nginx's default `proxy_pass http://127.0.0.1:8080` connects from
loopback and sends `Host: 127.0.0.1:8080`. The socket a request arrived on can: a proxy
forwards to the public port, never to the admin one.
"""

from __future__ import annotations

import socket

from fastapi import Request
from fastapi.responses import JSONResponse

from tchat.http import json_error
from tchat.services import services

ADMIN_HOST = "127.0.0.1"
LOCAL_NAMES = {"127.0.0.1", "localhost", "[::1]"}


def admin_url(port: int) -> str:
    return f"http://{ADMIN_HOST}:{port}"


def bind_admin_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ADMIN_HOST, port))
    sock.set_inheritable(True)
    return sock


def is_admin_request(request: Request) -> bool:
    """Came in on the admin socket, addressed by a loopback name (a page whose name was
    DNS-rebound to 127.0.0.1 sends its own name as Host)."""
    port = services(request).admin_port
    server = request.scope.get("server")
    if port is None or not server or server[0] != ADMIN_HOST or server[1] != port:
        return False
    host = request.headers.get("host", "").rsplit(":", 1)[0].lower()
    return host in LOCAL_NAMES


def admin_only(request: Request, what: str) -> JSONResponse | None:
    """403 naming the admin listener unless the request came in on it."""
    if is_admin_request(request):
        return None
    port = services(request).admin_port
    where = f" ({admin_url(port)})" if port else ""
    return json_error(
        403, "forbidden", f"{what} are served on the admin listener{where} only, to this host"
    )
