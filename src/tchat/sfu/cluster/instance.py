"""One SFU instance as its own process.

`python -m tchat.instance` is the instance `tchat serve` supervises: this module's
`main` with the recording of the rooms it originates as a reader (tchat/instance.py
wires it; the SFU does not import the recorder). `python -m tchat.sfu.node` runs the
SFU alone.

A `ClusterWorker` (media UDP port + relay UDP port) and a small internal control API
(HTTP on SFU_UDP_HOST, every request signed with the control key derived from the
token secret: sfu/control.py) that the signalling processes call. On start it prints one JSON line
with its ports; it exits when its stdin closes (the supervising `tchat serve` died).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tchat.config import Settings
from tchat.rooms import ROOM_PATTERN
from tchat.sfu.control import ControlAuth, ControlVerifier, SignedOnly, control_key
from tchat.sfu.relay import ClusterWorker, media_from_json
from tchat.sfu.sdp import SdpError
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import SessionError

log = logging.getLogger("tchat.sfu.node")
KEY_ENV = "TCHAT_SFU_CONTROL_KEY"
FINALIZE_BUDGET_S = 20.0  # on exit, recordings this node holds may finalize this long
# Readers attached to the worker before it serves (the recorder): called once, they
# return what to await after the worker stopped (finalizing), or None.
Closer = Callable[[], Awaitable[None]]
Readers = Callable[[ClusterWorker, Settings], Awaitable[Closer | None]]


class PublishBody(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)
    offer: str = Field(max_length=64 * 1024)
    owner: str = Field("", max_length=256)  # token identity (limits on connecting sessions)
    source: str = Field("", max_length=64)  # client address


class Origin(BaseModel):
    id: str
    control: str
    relay_host: str
    relay_port: int = Field(ge=1, le=65535)


class ViewBody(PublishBody):
    max_layer: int = Field(2, ge=0, le=2)
    origin: Origin | None = None  # None: this instance is the room's origin


class RelayBody(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)
    sid: int = Field(ge=1, lt=2**32)
    host: str
    port: int = Field(ge=1, le=65535)


class LayerBody(BaseModel):
    max_layer: int = Field(ge=0, le=2)


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, SdpError):
        return JSONResponse({"status": 400, "detail": str(exc)}, status_code=400)
    assert isinstance(exc, SessionError)
    return JSONResponse({"status": exc.status, "detail": str(exc)}, status_code=exc.status)


def control_app(worker: ClusterWorker, key: str, instance_id: str) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    client = httpx.AsyncClient(timeout=5.0, auth=ControlAuth(key))
    joining: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # room → lock, users
    app.add_middleware(SignedOnly, verifier=ControlVerifier(key))  # every request signed

    @app.post("/publish")
    async def publish(body: PublishBody) -> Any:
        try:
            peer, answer = worker.add_publisher(body.room, body.offer, body.owner, body.source)
        except (SdpError, SessionError) as exc:
            return _error(exc)
        return {"peer": peer.id, "answer": answer}

    async def _ensure_edge(room: str, origin: Origin) -> None:
        sub = worker.edge_subs.get(room)
        if sub is not None and sub.origin_id == origin.id:
            return
        if sub is not None:
            worker.end_edge(room, "room moved to another origin")
        sid = worker.new_sid()
        try:
            resp = await client.post(
                origin.control + "/relay",
                json={"room": room, "sid": sid, "host": worker.relay_host,
                      "port": worker.relay_port},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise SessionError(503, f"origin instance unreachable: {exc}") from None
        if resp.status_code != 200:
            detail = resp.json().get("detail", resp.text) if resp.content else ""
            raise SessionError(404 if resp.status_code == 404 else 503, str(detail))
        media = media_from_json(resp.json()["media"])
        worker.open_edge(room, sid, (origin.relay_host, origin.relay_port), origin.id, media)

    @app.post("/view")
    async def view(body: ViewBody) -> Any:
        try:
            if body.origin is not None and body.origin.id != instance_id:
                # one subscription per room even when viewers arrive together
                lock, users = joining.setdefault(body.room, (asyncio.Lock(), [0]))
                users[0] += 1
                try:
                    async with lock:
                        await _ensure_edge(body.room, body.origin)
                finally:
                    users[0] -= 1
                    if not users[0]:
                        joining.pop(body.room, None)
            peer, answer = worker.add_viewer(
                body.room, body.offer, body.max_layer, body.owner, body.source
            )
        except (SdpError, SessionError) as exc:
            sub = worker.edge_subs.get(body.room)
            if sub is not None and not sub.room.viewers:  # pulled for this viewer only
                worker.end_edge(body.room, "no viewer")
            return _error(exc)
        return {"peer": peer.id, "answer": answer}

    @app.post("/relay")
    async def relay(body: RelayBody) -> Any:
        try:
            media = worker.subscribe(body.room, body.sid, (body.host, body.port))
        except SessionError as exc:
            return _error(exc)
        return {"media": media}

    def _peer(room: str, peer_id: str, role: str) -> Any:
        peer = worker.peers.get(peer_id)
        if peer is None or peer.room.name != room or peer.role != role:
            return None
        return peer

    @app.delete("/rooms/{room}/{role}/{peer_id}")
    async def delete(room: str, role: str, peer_id: str) -> Any:
        peer = _peer(room, peer_id, role)
        if peer is None:
            return JSONResponse({"status": 404, "detail": "no such session"}, status_code=404)
        worker.close_peer(peer, "DELETE")
        return {}

    @app.put("/rooms/{room}/viewer/{peer_id}/layer")
    async def layer(room: str, peer_id: str, body: LayerBody) -> Any:
        peer = _peer(room, peer_id, "viewer")
        if peer is None:
            return JSONResponse({"status": 404, "detail": "no such session"}, status_code=404)
        worker.set_max_layer(peer, body.max_layer)
        return {"max_layer": body.max_layer}

    @app.get("/rooms/{room}")
    async def room_state(room: str) -> Any:
        return {"publisher": worker.has_publisher(room)}

    @app.get("/stats")
    async def stats() -> Any:
        out = worker.stats()
        out["pid"] = os.getpid()
        out["id"] = instance_id
        return out

    return app


async def _serve(args: argparse.Namespace, settings: Settings, readers: Readers | None) -> None:
    import uvicorn

    sfu = SfuSettings.from_settings(settings)
    if args.udp_port is not None:
        sfu = SfuSettings(**{**_fields(sfu), "udp_port": args.udp_port})
    key = os.environ.get(KEY_ENV) or control_key(settings.token_secret())
    # this process runs the SFU only: its CPU is the SFU's work (admission, placement)
    worker = ClusterWorker(sfu, relay_host=sfu.udp_host, cpu_clock=time.process_time)
    await worker.start()
    close_readers = await readers(worker, settings) if readers is not None else None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((sfu.udp_host, 0))
    app = control_app(worker, key, args.id)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    print(
        json.dumps(
            {
                "udp_port": worker.port,
                "relay_port": worker.relay_port,
                "control_port": sock.getsockname()[1],
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    # the parent holds our stdin: EOF means it is gone, and so should we be
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.should_exit = True
    await serving
    await worker.stop()
    if close_readers is not None:
        await close_readers()


def _fields(s: SfuSettings) -> dict[str, Any]:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}


def main(readers: Readers | None = None, prog: str = "python -m tchat.sfu.node") -> None:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--id", required=True, help="instance id (routing key)")
    parser.add_argument("--udp-port", type=int, default=None)
    args = parser.parse_args()
    from tchat.config import load_settings
    from tchat.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level)
    import uvloop

    uvloop.run(_serve(args, settings, readers))


if __name__ == "__main__":
    main()
