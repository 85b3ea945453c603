"""One room over several SFU instance processes (origin → edge relay), for real.

`tchat serve` with NUM_SFU_INSTANCES > 1 spawns its instance processes; a synthetic
simulcast publisher and generator viewers talk ICE/DTLS/SRTP to them over loopback
UDP, the relay between instances is real UDP, routing is in-process or real Redis.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tchat.auth import issue_token
from tchat.perf.server import free_port
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.dtls import DtlsState
from tchat.sfu.rtp import h264_keyframe_start

from .sfu_helpers import (
    SECRET,
    WAIT_S,
    assert_continuous_layer_switches,
    auth,
    eventually,
    join_viewer,
    wait_for,
)

# Instance processes (each imports aiortc, PyAV…), restarts and the relay: on a busy
# 2-core box a restart alone took over 10 s; deadlines bound failures, not successes.
CLUSTER_WAIT_S = 2 * WAIT_S


def payloads(peer: ClientPeer) -> int:
    return sum(s.payloads for s in peer.stats.streams.values())


def received(peer: ClientPeer) -> int:
    return sum(s.received for s in peer.stats.streams.values())


def instance_of(location: str) -> str:
    return location.rsplit("/", 1)[1].split(".", 1)[0]


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get("/sfu/stats")).json()
    return data


def assert_clean(peer: ClientPeer, where: str = "") -> None:
    assert peer.stats.decrypt_errors == 0
    for ssrc, s in peer.stats.streams.items():
        assert s.bad_payloads == 0 and s.gaps == 0, (
            f"viewer on {where}: ssrc {ssrc} gaps {s.gaps} bad {s.bad_payloads} "
            f"of {s.received} received"
        )


@pytest.mark.parametrize("instances", [2, 3])
async def test_every_viewer_on_every_instance_receives_the_stream(
    server_factory: Any, media: PreparedMedia, instances: int
) -> None:
    server = server_factory(NUM_SFU_INSTANCES=str(instances))
    room = "cluster"
    identity = Identity.create()
    known = media.known_payloads()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        assert "." in pub.location.rsplit("/", 1)[1]
        viewers: list[tuple[ClientPeer, str]] = []
        for i in range(2 * instances):
            peer = ClientPeer(
                identity, decrypt=True, known_payloads=known, keyframe_test=h264_keyframe_start
            )
            viewers.append((peer, await join_viewer(client, room, peer, ("low", "mid")[i % 2])))
        placed = {instance_of(loc) for _, loc in viewers}
        assert len(placed) == instances, f"viewers not spread: {placed}"
        await wait_for(lambda: all(payloads(p) >= 150 for p, _ in viewers), CLUSTER_WAIT_S)
        for peer, loc in viewers:
            assert_clean(peer, instance_of(loc))
            video = [s for s in peer.stats.streams.values() if s.keyframe_first is not None]
            assert [s.keyframe_first for s in video] == [True]
        data = await stats(client)
        per = data["instances"]
        assert len(per) == instances
        edges = [s for s in per if room in s["edge_rooms"]]
        origins = [s for s in per if room in s["origin_rooms"]]
        assert len(origins) == 1 and len(edges) == instances - 1
        # one relay stream per edge and layer in use, not one per viewer
        relayed = origins[0]["relay_edges"]
        assert len(relayed) == instances - 1
        for e in relayed:
            # per track: audio's one layer; video's low and/or mid (no viewer wants high)
            assert all(0 < mask < 4 for mask in e["layers"]), e
        # last viewer of an edge leaves → the edge stops pulling
        edge_id = edges[0]["id"]
        for peer, loc in viewers:
            if instance_of(loc) == edge_id:
                r = await client.delete(loc, headers=auth(room, "viewer"))
                assert r.status_code == 200
                peer.close()

        await eventually(
            lambda: stats(client),
            lambda d: (
                not any(s["id"] == edge_id and room in s["edge_rooms"] for s in d["instances"])
            ),
            CLUSTER_WAIT_S,
            what="the edge stops pulling the room",
        )
        for peer, _ in viewers:
            peer.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


async def test_layer_switch_on_an_edge_keeps_the_stream_continuous(
    server_factory: Any, media: PreparedMedia
) -> None:
    server = server_factory(NUM_SFU_INSTANCES="2")
    room = "edge-switch"
    identity = Identity.create()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        origin = instance_of(pub.location)
        # the first viewer lands on the origin (tie → no relay), the next on the edge; on a
        # busy host an instance's late heartbeat can place one more on the origin
        # (placement is tested above): join until one is on the edge
        others = [ClientPeer(identity)]
        await join_viewer(client, room, others[0])
        for _ in range(6):
            peer = ClientPeer(identity, decrypt=True, keep_packets=True)
            location = await join_viewer(client, room, peer)
            if instance_of(location) != origin:
                break
            others.append(peer)
        else:
            raise AssertionError(f"no viewer placed on the edge: {await stats(client)}")
        steps = [(2, "h"), (1, "m"), (0, "l")]
        await assert_continuous_layer_switches(
            client, room, location, peer, media, steps, 80, CLUSTER_WAIT_S
        )
        assert peer.stats.decrypt_errors == 0
        peer.close()
        for other in others:
            other.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


def _pid_of(per: list[dict[str, Any]], instance_id: str) -> int:
    return int(next(s["pid"] for s in per if s["id"] == instance_id))


async def test_killing_an_edge_loses_only_its_viewers_who_reconnect(
    server_factory: Any, media: PreparedMedia
) -> None:
    server = server_factory(NUM_SFU_INSTANCES="2")
    room = "edge-kill"
    identity = Identity.create()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        origin = instance_of(pub.location)
        viewers = []
        for _ in range(4):
            peer = ClientPeer(identity)
            viewers.append((peer, await join_viewer(client, room, peer)))
        on_edge = [p for p, loc in viewers if instance_of(loc) != origin]
        on_origin = [p for p, loc in viewers if instance_of(loc) == origin]
        assert len(on_edge) == 2 and len(on_origin) == 2
        await wait_for(lambda: all(received(p) >= 100 for p, _ in viewers), CLUSTER_WAIT_S)
        edge_id = next(instance_of(loc) for _, loc in viewers if instance_of(loc) != origin)
        os.kill(_pid_of((await stats(client))["instances"], edge_id), signal.SIGKILL)

        async def origin_viewers_get(more: int) -> None:
            marks = [received(p) for p in on_origin]
            await wait_for(
                lambda: all(received(p) > m + more for p, m in zip(on_origin, marks, strict=True)),
                CLUSTER_WAIT_S,
                what="the origin's viewers keep receiving",
            )

        # media flows on through the origin; what the edge sent before it died drains
        # meanwhile (our viewers read it in this loop), then nothing more reaches its viewers
        await origin_viewers_get(50)
        marks = [received(p) for p in on_edge]
        await origin_viewers_get(50)
        assert [received(p) for p in on_edge] == marks, "viewers of the killed edge still receive"

        await eventually(
            lambda: stats(client),
            lambda d: d["restarts"] >= 1 and all("error" not in s for s in d["instances"]),
            CLUSTER_WAIT_S,
            what="the supervisor restarts the edge",
        )
        # the lost viewers reconnect (to whichever instance is now least loaded)
        again = []
        for _ in on_edge:
            peer = ClientPeer(identity)
            await join_viewer(client, room, peer)
            again.append(peer)
        await wait_for(lambda: all(received(p) >= 100 for p in again), CLUSTER_WAIT_S)
        for p in on_origin + on_edge + again:
            p.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


async def test_killing_the_origin_ends_the_room_everywhere(
    server_factory: Any, media: PreparedMedia
) -> None:
    server = server_factory(NUM_SFU_INSTANCES="2")
    room = "origin-kill"
    identity = Identity.create()
    token = issue_token(SECRET, room, "publisher")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, token)
        origin = instance_of(pub.location)
        viewers = []
        for _ in range(4):
            peer = ClientPeer(identity)
            viewers.append((peer, await join_viewer(client, room, peer)))
        await wait_for(lambda: all(received(p) >= 100 for p, _ in viewers), CLUSTER_WAIT_S)
        os.kill(_pid_of((await stats(client))["instances"], origin), signal.SIGKILL)
        on_edge = [p for p, loc in viewers if instance_of(loc) != origin]
        on_origin = [p for p, loc in viewers if instance_of(loc) == origin]
        # edge viewers get a DTLS close_notify (the stream ended), not a silent hang
        await wait_for(
            lambda: all(p.dtls is not None and p.dtls.state == DtlsState.CLOSED for p in on_edge),
            10,
        )
        marks = [received(p) for p in on_origin]
        await asyncio.sleep(1.0)
        assert [received(p) for p in on_origin] == marks  # its process is gone
        # new viewers are told there is no stream; the publisher can go live again
        late = ClientPeer(identity)
        await late.open()
        r = await client.post(
            f"/whep/{room}",
            content=late.offer(),
            headers={**auth(room, "viewer"), "content-type": "application/sdp"},
        )
        assert r.status_code == 404, r.text
        late.close()
        pub.peer.close()
        pub2 = SyntheticPublisher(identity, media, ["l", "m", "h"])
        deadline = asyncio.get_running_loop().time() + CLUSTER_WAIT_S
        while True:  # the supervisor notices the death within a heartbeat
            try:
                await pub2.start(client, room, token)
                break
            except RuntimeError:
                assert asyncio.get_running_loop().time() < deadline, "no new publish accepted"
                await asyncio.sleep(0.2)
        assert pub2.location
        viewer = ClientPeer(identity)
        await join_viewer(client, room, viewer)
        await wait_for(lambda: received(viewer) >= 100, CLUSTER_WAIT_S)

        # the dead origin's recording ends as failed, not "recording" for ever; the new
        # publish records on its own origin
        async def states() -> list[str]:
            recs = (await client.get("/recordings", params={"room": room})).json()
            return [r["state"] for r in recs["recordings"]]

        await eventually(
            states, lambda s: s == ["recording", "failed"], CLUSTER_WAIT_S, what="recordings"
        )
        viewer.close()
        for p, _ in viewers:
            p.close()
        await pub2.stop(client, token)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private redis-server (not the shared one): this test stops it on purpose."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


async def test_two_servers_on_one_redis_serve_one_room_and_survive_redis_loss(
    server_factory: Any, media: PreparedMedia, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, redis_proc = own_redis
    env = {"NUM_SFU_INSTANCES": "2", "REDIS_URL": url}
    a = server_factory(**env)
    b = server_factory(**env)
    room = "two-hosts-" + secrets.token_hex(3)
    identity = Identity.create()
    known = media.known_payloads()
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as ca,
        httpx.AsyncClient(base_url=b.url, timeout=10) as cb,
    ):
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(ca, room, issue_token(SECRET, room, "publisher"))
        viewers = []
        for i in range(8):  # WHEP alternately to either server
            peer = ClientPeer(
                identity, decrypt=True, known_payloads=known, keyframe_test=h264_keyframe_start
            )
            viewers.append((peer, await join_viewer((ca, cb)[i % 2], room, peer)))
        await wait_for(lambda: all(payloads(p) >= 150 for p, _ in viewers), CLUSTER_WAIT_S)
        for p, loc in viewers:
            assert_clean(p, instance_of(loc))
        ids_a = {s["id"] for s in (await stats(ca))["instances"]}
        ids_b = {s["id"] for s in (await stats(cb))["instances"]}
        placed = {instance_of(loc) for _, loc in viewers}
        assert placed & ids_a and placed & ids_b, "one room served by both servers' instances"
        # Redis goes away: live sessions keep flowing, new ones fail with a clear 503
        redis_proc.terminate()
        redis_proc.wait(10)
        marks = [received(p) for p, _ in viewers]
        await wait_for(
            lambda: all(received(p) > m + 50 for (p, _), m in zip(viewers, marks, strict=True)),
            CLUSTER_WAIT_S,
            what="every viewer keeps receiving without Redis",
        )
        late = ClientPeer(identity)
        await late.open()
        r = await cb.post(
            f"/whep/{room}",
            content=late.offer(),
            headers={**auth(room, "viewer"), "content-type": "application/sdp"},
        )
        assert r.status_code == 503 and "routing store unavailable" in r.json()["detail"]
        r = await ca.post(
            "/whip/another-room",
            content=late.offer(),
            headers={**auth("another-room", "publisher"), "content-type": "application/sdp"},
        )
        assert r.status_code == 503
        late.close()
        for p, _ in viewers:
            p.close()
        pub.peer.close()


async def test_redis_route_is_claimed_once_by_concurrent_publishes(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Two servers taking a WHIP of one room at the same moment: one claim wins."""
    from tchat.sfu.cluster.routing import RedisRouting

    url, _ = own_redis
    a, b = RedisRouting(url), RedisRouting(url)
    await a.start()
    await b.start()
    try:
        won = await asyncio.gather(
            *(r.set_route("race", r_id, None) for r, r_id in ((a, "x"), (b, "y")))
        )
        assert sorted(won) == [False, True]
        winner = "x" if won[0] else "y"
        assert await a.route("race") == winner
        # a stale route (its instance died) is taken over by naming it
        assert await b.set_route("race", "z", winner)
        assert not await a.set_route("race", "w", winner)
        assert await a.route("race") == "z"
    finally:
        await a.close()
        await b.close()
