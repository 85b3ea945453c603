"""WHIP/WHEP signalling when the SFU runs as several instance processes (N > 1).

Same routes, statuses and bodies as api.py; the session id in a Location is
`<instance id>.<peer id>` so any `tchat serve` sharing the routing store can find
the instance that holds it. A publisher lands on the least-loaded instance, which
becomes the room's origin; a viewer lands on the least-loaded instance (routing.pick)
and, if that is not the origin, the instance pulls the room over the relay first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tchat.config import Settings
from tchat.http import json_error
from tchat.recording.service import RecordingService
from tchat.sfu.api import LAYERS, LayerRequest, _auth, _created, _offer
from tchat.sfu.node import KEY_HEADER, control_key
from tchat.sfu.routing import InstanceRecord, Routing, RoutingUnavailable, make_routing, pick
from tchat.sfu.supervisor import LocalInstance, Supervisor

log = logging.getLogger("tchat.sfu.cluster")

PENDING_S = 10.0  # forget placements after this even if no heartbeat came
_CODES = {400: "bad_sdp", 404: "not_found", 409: "conflict", 503: "unavailable"}


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routing: Routing = make_routing(settings.redis_url)
        self.key = control_key(settings.token_secret())
        self.supervisor = Supervisor(
            settings.num_sfu_instances,
            self.routing,
            self.key,
            host=settings.sfu_udp_host,
            base_udp_port=settings.sfu_udp_port,
            max_load=settings.sfu_max_load,
        )
        self.client = httpx.AsyncClient(timeout=10.0, headers={KEY_HEADER: self.key})
        self._placed: list[tuple[float, str]] = []

    async def start(self) -> None:
        await self.routing.start()
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.client.aclose()
        await self.routing.close()

    def pending(self, insts: list[InstanceRecord]) -> dict[str, int]:
        """Viewers this process placed after each instance's last heartbeat (which does
        not count them yet)."""
        now = time.time()
        self._placed = [p for p in self._placed if now - p[0] < PENDING_S]
        seen = {i.id: i.seen for i in insts}
        out: dict[str, int] = {}
        for t, iid in self._placed:
            if t > seen.get(iid, 0.0):
                out[iid] = out.get(iid, 0) + 1
        return out

    def placed(self, instance_id: str) -> None:
        self._placed.append((time.time(), instance_id))

    async def call(
        self, method: str, inst: InstanceRecord, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        try:
            resp = await self.client.request(method, inst.control + path, json=body)
        except httpx.HTTPError as exc:
            return 503, {"detail": f"SFU instance {inst.id} unreachable: {exc}"}
        try:
            data = resp.json()
        except ValueError:
            data = {"detail": resp.text[:200]}
        return resp.status_code, data if isinstance(data, dict) else {"detail": str(data)}

    async def has_publisher(self, inst: InstanceRecord, room: str) -> bool:
        status, data = await self.call("GET", inst, f"/rooms/{quote(room, safe='')}")
        return status == 200 and bool(data.get("publisher"))


def _fail(status: int, data: dict[str, Any]) -> JSONResponse:
    return json_error(status, _CODES.get(status, "unavailable"), str(data.get("detail", "")))


def _unavailable(exc: RoutingUnavailable) -> JSONResponse:
    return json_error(503, "unavailable", f"SFU routing store unavailable ({exc}); try again")


def _fail_recordings(recording: RecordingService, inst: LocalInstance) -> None:
    """An instance died: the recordings of the rooms it originated end as failed (their
    FFmpeg went with it), so they do not stay "recording" for ever."""
    rooms = inst.stats.get("origin_rooms") or []
    for room in rooms if isinstance(rooms, list) else []:
        n = recording.fail_unowned(room, "the SFU instance of this stream died; segments kept")
        if n:
            log.warning(
                "sfu instance %s died: %d recording(s) of %s failed", inst.record.id, n, room
            )


def mount(app: FastAPI, settings: Settings) -> None:
    @asynccontextmanager
    async def component(app: FastAPI) -> AsyncIterator[None]:
        cluster = Cluster(settings)
        recording = getattr(app.state, "recording", None)
        if recording is not None:
            cluster.supervisor.on_lost = partial(_fail_recordings, recording)
        await cluster.start()
        app.state.sfu_cluster = cluster
        try:
            yield
        finally:
            await cluster.stop()

    app.state.components.append(component)

    def cluster_of(request: Request) -> Cluster:
        cluster: Cluster = request.app.state.sfu_cluster
        return cluster

    async def _session(
        cluster: Cluster, room: str, session: str
    ) -> tuple[InstanceRecord, str] | JSONResponse:
        iid, _, peer = session.partition(".")
        try:
            insts = {i.id: i for i in await cluster.routing.instances()}
        except RoutingUnavailable as exc:
            return _unavailable(exc)
        if not peer or iid not in insts:
            return json_error(404, "not_found", f"no session {session!r} in room {room!r}")
        return insts[iid], peer

    @app.post("/whip/{room}", tags=["sfu"], status_code=201)
    async def whip(room: str, request: Request) -> Response:
        """Publish: SDP offer in (Opus, H.264/VP8, ≤ 3 simulcast rids), answer out."""
        if denied := _auth(request, room, "publisher"):
            return denied
        offer = await _offer(request)
        if isinstance(offer, Response):
            return offer
        cluster = cluster_of(request)
        try:
            insts = await cluster.routing.instances()
            by_id = {i.id: i for i in insts}
            current = await cluster.routing.route(room)
            if current in by_id and await cluster.has_publisher(by_id[current], room):
                return json_error(409, "conflict", f"room {room!r} already has a publisher")
            target = pick(insts, cluster.pending(insts), None)
            if target is None:
                return json_error(503, "unavailable", "no SFU instance is up")
            if not await cluster.routing.set_route(room, target.id, current):
                return json_error(409, "conflict", f"room {room!r} is going live elsewhere")
        except RoutingUnavailable as exc:
            return _unavailable(exc)
        status, data = await cluster.call(
            "POST", target, "/publish", {"room": room, "offer": offer}
        )
        if status != 200:
            return _fail(status, data)
        return _created(str(data["answer"]), f"/whip/{room}/{target.id}.{data['peer']}")

    @app.post("/whep/{room}", tags=["sfu"], status_code=201)
    async def whep(room: str, request: Request, layer: str = "high") -> Response:
        """Watch: SDP offer in (recvonly), answer out; `?layer=low|mid|high` caps quality."""
        if denied := _auth(request, room, "viewer"):
            return denied
        if layer not in LAYERS:
            return json_error(400, "bad_request", "layer must be low, mid or high")
        offer = await _offer(request)
        if isinstance(offer, Response):
            return offer
        cluster = cluster_of(request)
        try:
            insts = await cluster.routing.instances()
            origin_id = await cluster.routing.route(room)
        except RoutingUnavailable as exc:
            return _unavailable(exc)
        origin = next((i for i in insts if i.id == origin_id), None)
        if origin is None:
            return json_error(404, "not_found", f"room {room!r} has no publisher")
        target = pick(insts, cluster.pending(insts), origin.id)
        assert target is not None  # the origin itself is a candidate
        body: dict[str, Any] = {"room": room, "offer": offer, "max_layer": LAYERS[layer]}
        if target.id != origin.id:
            body["origin"] = {
                "id": origin.id,
                "control": origin.control,
                "relay_host": origin.host,
                "relay_port": origin.relay_port,
            }
        cluster.placed(target.id)
        status, data = await cluster.call("POST", target, "/view", body)
        if status != 200:
            return _fail(status, data)
        return _created(str(data["answer"]), f"/whep/{room}/{target.id}.{data['peer']}")

    async def _delete(room: str, session: str, request: Request, role: str) -> Response:
        if denied := _auth(request, room, "publisher" if role == "publisher" else "viewer"):
            return denied
        cluster = cluster_of(request)
        found = await _session(cluster, room, session)
        if isinstance(found, JSONResponse):
            return found
        inst, peer = found
        status, data = await cluster.call(
            "DELETE", inst, f"/rooms/{quote(room, safe='')}/{role}/{peer}"
        )
        if status == 404:
            return json_error(404, "not_found", f"no {role} session {session!r} in room {room!r}")
        if status != 200:
            return _fail(status, data)
        if role == "publisher":
            try:
                await cluster.routing.clear_route(room, inst.id)
            except RoutingUnavailable:
                pass  # a stale route is checked (and replaced) by the next WHIP
        return Response(status_code=200)

    @app.delete("/whip/{room}/{session}", tags=["sfu"])
    async def whip_delete(room: str, session: str, request: Request) -> Response:
        """End a publish session (its viewers end with it, on every instance)."""
        return await _delete(room, session, request, "publisher")

    @app.delete("/whep/{room}/{session}", tags=["sfu"])
    async def whep_delete(room: str, session: str, request: Request) -> Response:
        """End a viewer session."""
        return await _delete(room, session, request, "viewer")

    @app.put("/whep/{room}/{session}/layer", tags=["sfu"])
    async def whep_layer(room: str, session: str, body: LayerRequest, request: Request) -> Response:
        """Cap a viewer's simulcast layer; the switch happens on the next keyframe."""
        if denied := _auth(request, room, "viewer"):
            return denied
        cluster = cluster_of(request)
        found = await _session(cluster, room, session)
        if isinstance(found, JSONResponse):
            return found
        inst, peer = found
        status, data = await cluster.call(
            "PUT",
            inst,
            f"/rooms/{quote(room, safe='')}/viewer/{peer}/layer",
            {"max_layer": body.max_layer},
        )
        if status == 404:
            return json_error(404, "not_found", f"no viewer session {session!r} in room {room!r}")
        if status != 200:
            return _fail(status, data)
        return JSONResponse({"max_layer": body.max_layer})

    @app.get("/sfu/stats", tags=["sfu"])
    async def sfu_stats(request: Request) -> dict[str, object]:
        """This server's instances (per-instance figures) and their sums."""
        cluster = cluster_of(request)
        per = await cluster.supervisor.stats()

        def total(key: str) -> int:
            return sum(int(s.get(key, 0)) for s in per)  # type: ignore[call-overload]

        return {
            "instances": per,
            "restarts": cluster.supervisor.restarts,
            "peers": total("peers"),
            "viewers_connected": total("viewers_connected"),
            "delivered_packets": total("delivered_packets"),
            "relay_packets_out": total("relay_packets_out"),
        }
