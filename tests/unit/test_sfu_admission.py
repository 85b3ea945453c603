"""Join storms: at most SFU_MAX_HANDSHAKING sessions handshake at once, the next viewers
wait in arrival order for a slot (sfu/admission.py), publishers never wait."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.admission import JoinQueue, SessionError
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import HANDSHAKE_SLOT_S, SfuWorker


class Slots:
    """The sessions handshaking, as the queue reads them, and a clock."""

    def __init__(self) -> None:
        self.busy = 0
        self.t = 100.0


def queue(slots: Slots, limit: int = 2, max_wait_s: float = 30.0) -> JoinQueue:
    return JoinQueue(limit, max_wait_s, lambda: slots.busy, Counter(), lambda: slots.t)


async def enter(q: JoinQueue, slots: Slots, log: list[str], name: str, keys: list[str]) -> None:
    """A request: waits its turn, then makes its session (a handshake starts)."""
    async with q.turn(keys):
        slots.busy += 1
        log.append(name)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_wait_in_arrival_order_for_a_free_slot() -> None:
    slots, log = Slots(), []
    q = queue(slots, limit=2)
    tasks = [asyncio.create_task(enter(q, slots, log, f"v{i}", ["ip:a"])) for i in range(5)]
    await settle()
    assert log == ["v0", "v1"]  # two handshakes at once, the rest wait
    assert q.stats()["waiting"] == 3 and q.connecting["ip:a"] == 3
    slots.busy -= 1  # v0's handshake ended (the worker pumps then)
    q.pump()
    await settle()
    assert log == ["v0", "v1", "v2"]
    slots.busy -= 2
    q.pump()
    await asyncio.gather(*tasks)
    assert log == ["v0", "v1", "v2", "v3", "v4"]  # arrival order
    assert q.stats()["admitted_after_waiting"] == 3 and q.stats()["waiting"] == 0
    assert not q.connecting  # the per-key counts of waiting requests are gone


async def test_a_request_that_makes_no_session_frees_its_slot_for_the_next() -> None:
    slots, log = Slots(), []
    q = queue(slots, limit=1)
    go_on = asyncio.Event()

    async def fails() -> None:
        async with q.turn():
            await go_on.wait()
            raise SessionError(404, "room has no publisher")

    first = asyncio.create_task(fails())
    await settle()
    second = asyncio.create_task(enter(q, slots, log, "v", []))
    await settle()
    assert log == [] and q.stats()["waiting"] == 1  # behind the first
    go_on.set()
    with pytest.raises(SessionError):
        await first
    await asyncio.wait_for(second, 5)
    assert log == ["v"]


async def test_stopping_refuses_the_waiting_and_admits_no_one() -> None:
    slots = Slots()
    slots.busy = 1
    q = queue(slots, limit=1)
    waiting = asyncio.create_task(enter(q, slots, [], "v", ["ip:a"]))
    await settle()
    q.close()
    with pytest.raises(SessionError) as err:
        await waiting
    assert err.value.status == 503 and not q.connecting
    slots.busy = 0
    with pytest.raises(SessionError):
        async with q.turn():
            pass


async def test_waiting_past_the_deadline_is_503_with_retry_after() -> None:
    slots = Slots()
    slots.busy = 1
    q = queue(slots, limit=1, max_wait_s=0.05)
    with pytest.raises(SessionError) as err:
        async with q.turn(["id:x"]):
            pass
    assert err.value.status == 503 and err.value.retry_after is not None
    assert 1 <= err.value.retry_after <= 30
    assert q.stats()["waiting"] == 0 and not q.connecting and q.refused == 1


async def test_a_client_gone_while_waiting_or_just_granted_keeps_no_slot() -> None:
    slots, log = Slots(), []
    q = queue(slots, limit=1)
    slots.busy = 1
    gone = asyncio.create_task(enter(q, slots, log, "gone", []))
    granted = asyncio.create_task(enter(q, slots, log, "granted-then-gone", []))
    await settle()
    gone.cancel()  # waiting: it just leaves the queue
    await asyncio.gather(gone, return_exceptions=True)
    slots.busy = 0
    q.pump()  # grants the second ...
    granted.cancel()  # ... which is cancelled before it runs: the slot comes back
    await asyncio.gather(granted, return_exceptions=True)
    await enter(q, slots, log, "next", [])
    assert log == ["next"]
    assert q.stats()["waiting"] == 0


def worker(**settings: float) -> SfuWorker:
    clock = [0.0]
    return SfuWorker(SfuSettings(**settings), clock=lambda: clock[0])  # type: ignore[arg-type]


async def test_the_worker_admits_viewers_as_handshakes_end_publishers_never_wait() -> None:
    identity = Identity.create()
    w = worker(max_handshaking=2)
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))  # one slot taken
    first, _ = await w.admit_viewer("r", ClientPeer(identity).offer(), 2, source="10.0.0.1")
    second = asyncio.create_task(
        w.admit_viewer("r", ClientPeer(identity).offer(), 2, source="10.0.0.2")
    )
    await settle()
    assert not second.done() and w.stats()["admission"]["waiting"] == 1  # type: ignore[index]
    # a publisher is not held behind the viewers, though its handshake takes a slot
    other, _ = w.add_publisher("s", ClientPeer(identity).offer(publish=True))
    w.close_peer(first, "DELETE")
    await settle()
    assert not second.done()  # the publisher holds the slot the viewer left
    w.close_peer(other, "DELETE")  # a handshake ends: the waiting viewer goes on
    peer, answer = await asyncio.wait_for(second, 5)
    assert peer.role == "viewer" and answer.startswith("v=0")
    assert len(w.handshaking) == 2


async def test_waiting_viewers_count_against_the_per_address_limit() -> None:
    identity = Identity.create()
    w = worker(max_handshaking=1, max_connecting_per_address=2)
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    waiting = asyncio.create_task(
        w.admit_viewer("r", ClientPeer(identity).offer(), 2, source="10.0.0.9")
    )
    await settle()
    await asyncio.sleep(0)
    other = asyncio.create_task(
        w.admit_viewer("r", ClientPeer(identity).offer(), 2, source="10.0.0.9")
    )
    await settle()
    with pytest.raises(SessionError) as err:  # two of this address wait already
        await w.admit_viewer("r", ClientPeer(identity).offer(), 2, source="10.0.0.9")
    assert err.value.status == 429
    for task in (waiting, other):
        task.cancel()
    await asyncio.gather(waiting, other, return_exceptions=True)
    assert not w.connecting


async def test_an_overloaded_worker_holds_viewers_until_its_load_falls() -> None:
    """Over SFU_MAX_LOAD no slot is free: a storm's own handshakes push the load up for
    a moment, and its viewers wait that out instead of being refused."""
    identity = Identity.create()
    clock, cpu = [0.0], [0.0]
    w = SfuWorker(SfuSettings(max_load=0.9), clock=lambda: clock[0], cpu_clock=lambda: cpu[0])
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    for busy in (0.5, 0.95):
        clock[0] += 1.0
        cpu[0] += busy
        w.tick(clock[0])
    viewer = asyncio.create_task(w.admit_viewer("r", ClientPeer(identity).offer(), 2))
    await settle()
    assert not viewer.done()
    clock[0] += 1.0
    cpu[0] += 0.3
    w.tick(clock[0])
    w.joins.pump()  # what the worker's timer loop does after each tick
    peer, _ = await asyncio.wait_for(viewer, 5)
    assert peer.role == "viewer"


async def test_a_handshake_that_drags_on_frees_its_slot() -> None:
    """A session connecting past HANDSHAKE_SLOT_S goes on connecting but no longer holds
    a slot: a few clients that never finish cannot hold the queue shut."""
    identity = Identity.create()
    clock = [0.0]
    w = SfuWorker(SfuSettings(max_handshaking=1), clock=lambda: clock[0])
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))  # never connects
    viewer = asyncio.create_task(w.admit_viewer("r", ClientPeer(identity).offer(), 2))
    await settle()
    assert not viewer.done()
    clock[0] += HANDSHAKE_SLOT_S + 0.1
    w.joins.pump()  # what the worker's timer loop does after each tick
    peer, _ = await asyncio.wait_for(viewer, 5)
    assert peer.role == "viewer" and len(w.handshaking) == 2
