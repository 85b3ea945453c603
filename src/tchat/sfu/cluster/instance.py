"""One SFU instance as its own process.

`python -m tchat.instance` is the instance `tchat serve` supervises: this module's
`main` with the recording of the rooms it originates as a reader (tchat/instance.py
wires it; the SFU does not import the recorder). `python -m tchat.sfu.cluster.instance`
runs the SFU alone.

An `SfuWorker` (media UDP port) with a `Relay` (relay UDP port: sfu/cluster/relay.py) and
a small internal control API (HTTP on SFU_UDP_HOST, every request signed with the
control key derived from the token secret: control.py) that the signalling processes
call. On start it prints one JSON line
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
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tchat.config import Settings
from tchat.rooms import ROOM_PATTERN
from tchat.sfu.admission import release
from tchat.sfu.cluster.control import ControlAuth, ControlVerifier, SignedOnly, control_key
from tchat.sfu.cluster.relay import Relay
from tchat.sfu.cluster.wire import media_from_json
from tchat.sfu.sdp import SdpError
from tchat.sfu.sdpfrag import IceFragment
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import Peer, SessionError, SfuWorker

log = logging.getLogger("tchat.sfu.cluster.instance")
KEY_ENV = "TCHAT_SFU_CONTROL_KEY"
FINALIZE_BUDGET_S = 20.0  # on exit, recordings this node holds may finalize this long
# Readers attached to the worker before it serves (the recorder): called once, they
# return what to await after the worker stopped (finalizing), or None.
Closer = Callable[[], Awaitable[None]]
Readers = Callable[[SfuWorker, Settings], Awaitable[Closer | None]]


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
    # longest wait for a handshake slot here (None: SFU_JOIN_WAIT); the signalling gives
    # the instances it may still pass the viewer to a share of it
    max_wait: float | None = Field(None, gt=0, le=300)


class RelayBody(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)
    sid: int = Field(ge=1, lt=2**32)
    host: str
    port: int = Field(ge=1, le=65535)


class LayerBody(BaseModel):
    max_layer: int = Field(ge=0, le=2)


class IceBody(BaseModel):
    """A parsed WHIP/WHEP PATCH fragment (sfu/sdpfrag.py) and what If-Match expects."""

    ufrag: str | None = Field(None, max_length=256)
    pwd: str | None = Field(None, max_length=256)
    end_of_candidates: bool = False
    expect: list[str] | None = Field(None, max_length=16)


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, SdpError):
        return JSONResponse({"status": 400, "detail": str(exc)}, status_code=400)
    assert isinstance(exc, SessionError)
    body = {"status": exc.status, "detail": str(exc), "retry_after": exc.retry_after}
    return JSONResponse(body, status_code=exc.status)


class Control:
    """The instance's control API, called by the signalling processes (backend.py)."""

    def __init__(self, worker: SfuWorker, relay: Relay, key: str, instance_id: str) -> None:
        self.worker = worker
        self.relay = relay
        self.instance_id = instance_id
        self.client = httpx.AsyncClient(timeout=5.0, auth=ControlAuth(key))
        self.joining: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # room → lock, users
        self.viewing: Counter[str] = Counter()  # view requests in progress, per room

    async def publish(self, body: PublishBody) -> Any:
        # the room moved here: stop relaying the old one
        self.relay.edge.end(body.room, "publisher moved")
        try:
            peer, answer = self.worker.add_publisher(body.room, body.offer, body.owner, body.source)
        except (SdpError, SessionError) as exc:
            return _error(exc)
        return {"peer": peer.id, "answer": answer}

    async def _ensure_edge(self, room: str, origin: Origin) -> None:
        edge = self.relay.edge
        sub = edge.subs.get(room)
        if sub is not None and sub.origin_id == origin.id:
            return
        if sub is not None:
            edge.end(room, "room moved to another origin")
        sid = edge.new_sid()
        try:
            resp = await self.client.post(
                origin.control + "/relay",
                json={"room": room, "sid": sid, "host": self.relay.host,
                      "port": self.relay.port},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise SessionError(503, f"origin instance unreachable: {exc}") from None
        if resp.status_code != 200:
            detail = resp.json().get("detail", resp.text) if resp.content else ""
            raise SessionError(404 if resp.status_code == 404 else 503, str(detail))
        media = media_from_json(resp.json()["media"])
        edge.open(room, sid, (origin.relay_host, origin.relay_port), origin.id, media)

    async def _pull(self, room: str, origin: Origin) -> None:
        # one subscription per room even when viewers arrive together
        lock, users = self.joining.setdefault(room, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                await self._ensure_edge(room, origin)
        finally:
            users[0] -= 1
            if not users[0]:
                self.joining.pop(room, None)

    async def view(self, body: ViewBody) -> Any:
        self.viewing[body.room] += 1
        try:
            if body.origin is not None and body.origin.id != self.instance_id:
                await self._pull(body.room, body.origin)
            peer, answer = await self.worker.admit_viewer(
                body.room, body.offer, body.max_layer, body.owner, body.source, body.max_wait
            )
        except (SdpError, SessionError) as exc:
            sub = self.relay.edge.subs.get(body.room)
            # pulled for viewers none of whom got in, and none still waiting to
            if sub is not None and not sub.room.viewers and self.viewing[body.room] == 1:
                self.relay.edge.end(body.room, "no viewer")
            return _error(exc)
        finally:
            release(self.viewing, [body.room])
        return {"peer": peer.id, "answer": answer}

    async def relay_to(self, body: RelayBody) -> Any:
        try:
            media = self.relay.origin.subscribe(body.room, body.sid, (body.host, body.port))
        except SessionError as exc:
            return _error(exc)
        return {"media": media}

    def _peer(self, room: str, peer_id: str, role: str) -> Peer | None:
        peer = self.worker.peers.get(peer_id)
        if peer is None or peer.room.name != room or peer.role != role:
            return None
        return peer

    async def delete(self, room: str, role: str, peer_id: str) -> Any:
        peer = self._peer(room, peer_id, role)
        if peer is None:
            return JSONResponse({"status": 404, "detail": "no such session"}, status_code=404)
        self.worker.close_peer(peer, "DELETE")
        return {}

    async def layer(self, room: str, peer_id: str, body: LayerBody) -> Any:
        peer = self._peer(room, peer_id, "viewer")
        if peer is None:
            return JSONResponse({"status": 404, "detail": "no such session"}, status_code=404)
        self.worker.set_max_layer(peer, body.max_layer)
        return {"max_layer": body.max_layer}

    async def ice(self, room: str, role: str, peer_id: str, body: IceBody) -> Any:
        peer = self._peer(room, peer_id, role)
        if peer is None:
            return JSONResponse({"status": 404, "detail": "no such session"}, status_code=404)
        fragment = IceFragment(body.ufrag, body.pwd, (), body.end_of_candidates)
        expect = tuple(body.expect) if body.expect is not None else None
        try:
            return {"answer": self.worker.patch_ice(peer, fragment, expect)}
        except (SdpError, SessionError) as exc:
            return _error(exc)

    async def room_state(self, room: str) -> Any:
        origin = self.relay.origin
        state = {"publisher": origin.has_publisher(room)}
        if origin.waiting(room):  # a lost publisher's grace runs here (sessions.py)
            state["waiting"] = True
        return state

    async def stats(self) -> Any:
        out = self.worker.stats()
        out.update(self.relay.stats())
        out["pid"] = os.getpid()
        out["id"] = self.instance_id
        return out


def control_app(worker: SfuWorker, relay: Relay, key: str, instance_id: str) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(SignedOnly, verifier=ControlVerifier(key))  # every request signed
    control = Control(worker, relay, key, instance_id)
    app.post("/publish")(control.publish)
    app.post("/view")(control.view)
    app.post("/relay")(control.relay_to)
    app.delete("/rooms/{room}/{role}/{peer_id}")(control.delete)
    app.put("/rooms/{room}/viewer/{peer_id}/layer")(control.layer)
    app.patch("/rooms/{room}/{role}/{peer_id}/ice")(control.ice)
    app.get("/rooms/{room}")(control.room_state)
    app.get("/stats")(control.stats)
    return app


async def _serve(args: argparse.Namespace, settings: Settings, readers: Readers | None) -> None:
    import uvicorn

    sfu = SfuSettings.from_settings(settings)
    if args.udp_port is not None:
        sfu = SfuSettings(**{**_fields(sfu), "udp_port": args.udp_port})
    if args.tcp_port is not None:
        sfu = SfuSettings(**{**_fields(sfu), "tcp_port": args.tcp_port})
    key = os.environ.get(KEY_ENV) or control_key(settings.token_secret())
    # this process runs the SFU only: its CPU is the SFU's work (admission, placement)
    worker = SfuWorker(sfu, cpu_clock=time.process_time)
    relay = Relay(worker, host=sfu.udp_host)
    await worker.start()
    await relay.start()
    close_readers = await readers(worker, settings) if readers is not None else None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((sfu.udp_host, 0))
    app = control_app(worker, relay, key, args.id)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    print(
        json.dumps(
            {
                "udp_port": worker.port,
                "relay_port": relay.port,
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
    await relay.stop()
    await worker.stop()
    if close_readers is not None:
        await close_readers()


def _fields(s: SfuSettings) -> dict[str, Any]:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}


def main(
    readers: Readers | None = None, prog: str = "python -m tchat.sfu.cluster.instance"
) -> None:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--id", required=True, help="instance id (routing key)")
    parser.add_argument("--udp-port", type=int, default=None)
    parser.add_argument("--tcp-port", type=int, default=None)
    args = parser.parse_args()
    from tchat.config import load_settings
    from tchat.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level)
    import uvloop

    uvloop.run(_serve(args, settings, readers))


if __name__ == "__main__":
    main()
