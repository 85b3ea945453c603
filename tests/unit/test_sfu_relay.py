"""Origin ↔ edge relay logic with a fake clock and an in-memory "network" between two
instances, each a worker and its `Relay` (relay sockets replaced by a queue): demand →
layers relayed, NACK on a relay gap, keepalive timeouts, BYE, source checks."""

from __future__ import annotations

import struct

import pytest

from tchat.perf.webrtc_peer import ClientPeer, Identity, rtp_header
from tchat.sfu.cluster.relay import Relay
from tchat.sfu.cluster.routing import InstanceRecord, pick
from tchat.sfu.cluster.wire import BYE, DEMAND, MEDIA, NACK, PREFIX, media_from_json, pick_layers
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import SessionError, SfuWorker

ORIGIN, EDGE = ("10.0.0.1", 4000), ("10.0.0.2", 4000)
KEYFRAME = bytes([0x65, 0x88, 0x84])  # an H.264 IDR NAL unit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Net:
    """Datagrams queued per (source, destination); `pump` delivers them."""

    def __init__(self) -> None:
        self.queue: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
        self.workers: dict[tuple[str, int], Relay] = {}
        self.drop: set[int] = set()  # RTP sequence numbers the network loses once

    def attach(self, relay: Relay, addr: tuple[str, int]) -> None:
        self.workers[addr] = relay
        net = self

        class Transport:
            def sendto(self, data: bytes, to: tuple[str, int]) -> None:
                net.queue.append((addr, to, data))

        relay.transport = Transport()  # type: ignore[assignment]

    def pump(self) -> list[bytes]:
        sent = []
        while self.queue:
            src, dst, data = self.queue.pop(0)
            sent.append(data)
            if data[0] == MEDIA:
                seq = int.from_bytes(data[PREFIX.size + 2 : PREFIX.size + 4], "big")
                if seq in self.drop:
                    self.drop.discard(seq)
                    continue
            self.workers[dst].received(data, src)
        return sent


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.create()


def setup(identity: Identity) -> tuple[Clock, Net, Relay, Relay]:
    clock = Clock()
    net = Net()
    origin = Relay(SfuWorker(SfuSettings(), clock=clock))
    edge = Relay(SfuWorker(SfuSettings(), clock=clock))
    net.attach(origin, ORIGIN)
    net.attach(edge, EDGE)
    origin.core.add_publisher("r", ClientPeer(identity).offer(rids=["h", "m", "l"], publish=True))
    return clock, net, origin, edge


def publish(origin: Relay, now: float, rid: str, seq: int, key: bool = False) -> None:
    ssrc = {"l": 11, "m": 22, "h": 33}[rid]
    payload = KEYFRAME if key else bytes([0x41, 0x9A, seq & 0xFF])
    origin.core.rooms["r"].tracks["video"].forward(
        rtp_header(102, seq, seq * 3000, ssrc, True, rid) + payload, now
    )


def test_demand_selects_layers_and_packets_reach_the_edge(identity: Identity) -> None:
    clock, net, origin, edge = setup(identity)
    for rid in "lmh":
        publish(origin, clock.t, rid, 1, key=True)
    media = origin.origin.subscribe("r", 7, EDGE)
    assert {m["kind"] for m in media} == {"audio", "video"}
    edge.edge.open("r", 7, ORIGIN, "o", media_from_json(media))
    viewer, answer = edge.core.add_viewer("r", ClientPeer(identity).offer(), max_layer=1)
    assert "H264" in answer or "h264" in answer.lower()
    net.pump()  # the DEMAND
    sub = origin.origin.subs[7]
    video = [m["kind"] for m in media].index("video")
    assert sub.masks[video] == 0b010  # only mid: the one layer this edge's viewer caps at
    clock.t += 0.1
    for seq in (2, 3):
        for rid in "lmh":
            publish(origin, clock.t, rid, seq)
    sent = net.pump()
    assert [d[0] for d in sent].count(MEDIA) == 2 and edge.edge.relay_in == 2
    edge_track = edge.core.rooms["r"].tracks["video"]
    assert edge_track.layers[1] is not None and edge_track.layers[1].ssrc == 22
    assert edge_track.layers[0] is None and edge_track.layers[2] is None
    # a second viewer capped at high adds the high layer (and asks the publisher for its IDR)
    edge.core.add_viewer("r", ClientPeer(identity).offer(), max_layer=2)
    net.pump()
    assert sub.masks[video] == 0b110
    # a relay gap is NACKed and answered from the origin's cache
    net.drop.add(5)
    for seq in (4, 5, 6):
        publish(origin, clock.t, "m", seq)
    sent = net.pump()
    nacks = [d for d in sent if d[0] == NACK]
    assert len(nacks) == 1 and struct.unpack("!H", nacks[0][PREFIX.size :]) == (5,)
    assert edge_track.layers[1] is not None and edge_track.layers[1].cache.get(5) is not None
    # the last viewer leaves: BYE, and the origin stops relaying to this edge
    for peer in list(edge.core.rooms["r"].viewers.values()):
        edge.core.close_peer(peer, "DELETE")
    assert viewer.closed and "r" not in edge.core.rooms and edge.edge.subs == {}
    assert [d[0] for d in net.pump()] == [BYE]
    assert origin.origin.subs == {} and origin.core.rooms["r"].tracks["video"].relays == []


def test_silence_ends_the_relay_on_both_sides(identity: Identity) -> None:
    clock, net, origin, edge = setup(identity)
    media = origin.origin.subscribe("r", 9, EDGE)
    edge.edge.open("r", 9, ORIGIN, "o", media_from_json(media))
    viewer, _ = edge.core.add_viewer("r", ClientPeer(identity).offer())
    net.pump()
    clock.t += 1.0
    origin.tick(clock.t)
    edge.tick(clock.t)
    net.pump()  # keepalives both ways
    assert 9 in origin.origin.subs and "r" in edge.edge.subs
    clock.t += 4.0  # nothing in between: the origin "died", the edge "died"
    net.queue.clear()
    edge.tick(clock.t)
    assert viewer.closed and edge.edge.subs == {}  # its viewers see the stream end
    origin.tick(clock.t)
    assert origin.origin.subs == {}


def test_publisher_leaving_ends_edge_rooms(identity: Identity) -> None:
    _clock, net, origin, edge = setup(identity)
    media = origin.origin.subscribe("r", 5, EDGE)
    edge.edge.open("r", 5, ORIGIN, "o", media_from_json(media))
    viewer, _ = edge.core.add_viewer("r", ClientPeer(identity).offer())
    net.pump()
    publisher = origin.core.rooms["r"].publisher
    assert publisher is not None
    origin.core.close_peer(publisher, "DELETE")
    net.pump()
    assert viewer.closed and edge.core.rooms == {}


def test_relay_accepts_only_the_agreed_source(identity: Identity) -> None:
    _clock, _net, origin, edge = setup(identity)
    with pytest.raises(SessionError) as unknown:
        origin.origin.subscribe("nope", 1, EDGE)
    assert unknown.value.status == 404
    origin.origin.subscribe("r", 3, EDGE)
    origin.received(PREFIX.pack(DEMAND, 3, 0, 0) + b"\x07\x07", ("10.9.9.9", 1))
    origin.received(PREFIX.pack(DEMAND, 4, 0, 0) + b"\x07\x07", EDGE)
    origin.received(b"\x01\x02", EDGE)
    edge.received(PREFIX.pack(MEDIA, 3, 0, 0) + b"x" * 20, ORIGIN)
    assert origin.core.drops["relay_unknown_source"] == 2 and origin.core.drops["relay_short"] == 1
    assert edge.core.drops["relay_unknown_source"] == 1
    assert origin.origin.subs[3].caps == [0, 0]


def test_layer_and_instance_choice_rules() -> None:
    assert pick_layers(0b001, [0, 1, 2]) == 0b001
    assert pick_layers(0b110, [0, 1, 2]) == 0b110
    assert pick_layers(0b100, [0, 1]) == 0b010  # high wanted, not published: mid
    assert pick_layers(0b001, [2]) == 0b100  # nothing under the cap: the lowest live
    assert pick_layers(0b111, []) == 0

    def rec(iid: str, viewers: int, load: float = 0.1) -> InstanceRecord:
        return InstanceRecord(iid, 1, "h", "c", 2, 3, viewers=viewers, load=load)

    insts = [rec("a", 5), rec("b", 3), rec("c", 3)]
    assert pick(insts, {}, None) is insts[1]
    assert pick(insts, {}, "c") is insts[2]  # a tie goes to the origin: no relay
    assert pick(insts, {"b": 1, "c": 1}, None) is insts[1]
    assert pick(insts, {"b": 3}, None) is insts[2]
    assert pick([rec("a", 9), rec("b", 1, load=0.95)], {}, None).id == "a"  # type: ignore[union-attr]
    assert pick([], {}, None) is None


async def test_memory_routing_routes_die_with_their_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tchat.sfu.cluster import routing

    r = routing.MemoryRouting()
    a = InstanceRecord("a", 1, "h", "c", 2, 3)
    await r.put_instance(a)
    await r.put_instance(InstanceRecord("b", 1, "h", "c", 2, 4))
    assert await r.set_route("room", "a", None)
    assert not await r.set_route("room", "b", None)  # claimed meanwhile: refused
    await r.clear_route("room", "b")  # not its route: kept
    assert await r.route("room") == "a"
    await r.remove_instance("a")
    assert await r.route("room") is None
    assert [i.id for i in await r.instances()] == ["b"]
    now = routing.time.time()
    monkeypatch.setattr(routing.time, "time", lambda: now + routing.INSTANCE_TTL_S + 1)
    assert await r.instances() == []  # no heartbeat within the TTL: gone


def test_an_adaptive_edge_viewer_demands_every_layer_up_to_its_cap(identity: Identity) -> None:
    """Its policy may move it to any of them and needs each one's measured rate."""
    from tchat.abr.controller import ViewerAbr
    from tchat.sfu.allocator import Adaptive
    from tchat.sfu.forwarder import TwccSender

    clock, net, origin, edge = setup(identity)
    for rid in "lmh":
        publish(origin, clock.t, rid, 1, key=True)
    media = origin.origin.subscribe("r", 7, EDGE)
    edge.edge.open("r", 7, ORIGIN, "o", media_from_json(media))
    viewer, _ = edge.core.add_viewer("r", ClientPeer(identity).offer(), max_layer=1)
    # as once its DTLS is up and it negotiated transport-wide CC
    edge.core.allocator.viewers[viewer] = Adaptive(
        ViewerAbr(edge.core.allocator.config, 1, clock.t), TwccSender()
    )
    edge.edge.send_demand(edge.edge.subs["r"])
    net.pump()
    video = [m["kind"] for m in media].index("video")
    assert origin.origin.subs[7].masks[video] == 0b011  # low and mid, not high
    edge_track = edge.core.rooms["r"].tracks["video"]
    for second in range(4):  # rates are measured once a second over ≥ 2 s
        clock.t += 1.0
        for rid in "lmh":
            publish(origin, clock.t, rid, 2 + second)
        net.pump()
        edge_track.tick(clock.t)
    # the policy's positions map to these indices (StreamAllocator.tick)
    assert [index for index, _ in edge_track.layer_rates()] == [0, 1]


def test_a_viewer_placed_while_the_stats_were_in_flight_counts_as_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat's counts are as of the /stats request; one stored seconds later (a
    busy host) must not hide a viewer placed in between: it stays pending, so the next
    viewer goes to the other instance."""
    from tchat.config import load_settings
    from tchat.sfu.cluster import backend as cluster_api

    cluster = cluster_api.Cluster(load_settings(NUM_SFU_INSTANCES=2))
    clock = [1000.0]
    monkeypatch.setattr(cluster_api.time, "time", lambda: clock[0])
    cluster.placed("a")  # at 1000.0, after a's stats were asked (999.5)
    a = InstanceRecord("a", 1, "127.0.0.1", "http://a", 2, 1, viewers=0, seen=1002.0)
    b = InstanceRecord("b", 2, "127.0.0.1", "http://b", 3, 2, viewers=0, seen=1002.0)
    a.sampled = b.sampled = 999.5
    clock[0] = 1002.5
    assert cluster.pending([a, b]) == {"a": 1}
    assert pick([a, b], cluster.pending([a, b]), "a") is b
    a.sampled = 1000.5  # a later sample counts it in `viewers`: no longer pending
    assert cluster.pending([a, b]) == {}
