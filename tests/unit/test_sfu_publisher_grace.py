"""A publisher lost without a DELETE (issue 17 item 1), in the core with a fake clock and
no socket: its room waits `publisher_grace_s` with its viewers' sessions open; a new
publish of the room resumes their media on its first keyframe with their sequence
numbers and timestamps going on; the stream is not reported ended meanwhile. Past the
grace, or on a DELETE, the stream ends as before."""

from __future__ import annotations

import pytest

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.core import SfuCore
from tchat.sfu.peer import Peer
from tests.unit.test_sfu_core import V1, connect, live_core, publish
from tests.unit.test_sfu_ice_restart import _check

PUB2 = ("10.0.0.7", 5002)
GRACE_S = 20.0


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.create()


def _alive(core: SfuCore, peer: Peer, addr: tuple[str, int]) -> None:
    _check(core, addr, f"{peer.ice.local_ufrag}:{peer.ice.remote_ufrag}", peer.ice.local_pwd)


def _wait(
    core: SfuCore, clock: object, seconds: float, keep: list[tuple[Peer, tuple[str, int]]]
) -> None:
    """Run the timers for `seconds` while the `keep` sessions check in every 5 s."""
    end = clock.t + seconds  # type: ignore[attr-defined]
    while clock.t < end:  # type: ignore[attr-defined]
        clock.t += 1.0  # type: ignore[attr-defined]
        if int(clock.t) % 5 == 0:  # type: ignore[attr-defined]
            for peer, addr in keep:
                _alive(core, peer, addr)
        core.handle_timer(clock.t)  # type: ignore[attr-defined]


def test_a_lost_publisher_is_resumed_by_a_new_publish(identity: Identity) -> None:
    core, wire, clock, pub = live_core(identity, publisher_grace_s=GRACE_S)
    events: list[tuple[str, bool, str | None]] = []
    core.publish_listeners.append(
        lambda p, up: events.append((p.id, up, p.resumes.id if p.resumes else None))
    )
    client = ClientPeer(identity)
    peer, _ = core.add_viewer("r", client.offer(), max_layer=0)
    viewer = connect(core, wire, peer, client, V1)
    publish(core, pub, clock, 1, key=True)
    publish(core, pub, clock, 2, key=False)
    before = viewer.video_rtp(wire)
    assert len(before) == 2

    # the publisher goes silent (its process killed): consent ends it, not its room
    _wait(core, clock, 35.0, keep=[(peer, V1)])
    room = core.rooms["r"]
    assert pub.peer.closed and room.lost is pub.peer and room.publisher is None
    assert not peer.closed and room.media() is pub.peer.media and events == []

    # a new publish of the room (new address, numbering from elsewhere) resumes it
    client2 = ClientPeer(identity)
    pub2_peer, _ = core.add_publisher("r", client2.offer(rids=["h", "m", "l"], publish=True))
    assert pub2_peer.resumes is pub.peer and room.lost is None
    pub2 = connect(core, wire, pub2_peer, client2, PUB2)
    assert events == [(pub2_peer.id, True, pub.peer.id)]  # the same stream, going on
    publish(core, pub2, clock, 900, key=False)  # not a keyframe: viewers wait
    assert viewer.video_rtp(wire) == []
    publish(core, pub2, clock, 901, key=True)
    publish(core, pub2, clock, 902, key=False)
    after = viewer.video_rtp(wire)
    assert [s for s, _ in after] == [before[-1][0] + 1, before[-1][0] + 2]
    gap_ticks = (after[0][1] - before[-1][1]) & 0xFFFFFFFF
    assert 30 * 90000 < gap_ticks < 40 * 90000  # the timestamps moved on with the clock
    assert not peer.closed


def test_the_room_ends_when_the_grace_passes_or_on_delete(identity: Identity) -> None:
    core, wire, clock, pub = live_core(identity, publisher_grace_s=GRACE_S)
    events: list[tuple[str, bool]] = []
    core.publish_listeners.append(lambda p, up: events.append((p.id, up)))
    client = ClientPeer(identity)
    peer, _ = core.add_viewer("r", client.offer(), max_layer=0)
    connect(core, wire, peer, client, V1)
    _wait(core, clock, 35.0, keep=[(peer, V1)])
    assert not peer.closed and "r" in core.rooms
    _wait(core, clock, GRACE_S, keep=[(peer, V1)])
    assert peer.closed and "r" not in core.rooms and events == [(pub.peer.id, False)]

    core, wire, clock, pub = live_core(identity, publisher_grace_s=GRACE_S)
    client = ClientPeer(identity)
    peer, _ = core.add_viewer("r", client.offer(), max_layer=0)
    connect(core, wire, peer, client, V1)
    core.close_peer(pub.peer, "DELETE")  # ended on purpose: no waiting
    assert peer.closed and "r" not in core.rooms
