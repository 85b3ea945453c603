"""A publisher's blip does not end the show (issue 17 item 1), against a real `tchat
serve`: a synthetic publisher watched by 50 viewers (5 of them decrypting) vanishes as a
killed process does (no DTLS close_notify, no DELETE); within the grace period a new
publish of the room resumes media to every waiting viewer, none of whose sessions
ended; the recording goes on as the same recording, with one discontinuity, and every
segment plays (ffprobe)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tchat.perf.results import TestResult, percentile, record_test
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.recording.playlist import parse, validate

from .hls_checks import probe_all
from .sfu_helpers import eventually, join_viewer, media_received, token, wait_for

VIEWERS = 50
DECRYPTING = 5  # the others count packets from their headers (cheap on a 2-core box)
AUDIO_PT = 111  # Opus in the viewers' offer (tchat.perf.webrtc_peer)


class ResumeProbe(ClientPeer):
    """A viewer noting its first video packet after `armed_at` (monotonic): the first
    of the new publisher's keyframe, where the forwarder resumes each viewer."""

    armed_at: float | None = None
    resumed_at: float | None = None

    def _rtp(self, data: bytes) -> None:
        video = len(data) > 1 and data[1] & 0x7F != AUDIO_PT  # the header is in the clear
        if video and self.armed_at is not None and self.resumed_at is None:
            self.resumed_at = time.monotonic()
        super()._rtp(data)


@pytest.mark.parametrize("instances", [1, 2], ids=["one-process", "cluster"])
async def test_a_publisher_that_vanishes_is_resumed_by_a_new_publish(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
    instances: int,
) -> None:
    # a vanished publisher is noticed after 4 s (consent, idle) instead of 30; with two
    # instances the viewers spread over the origin and an edge (relayed)
    server = server_factory(
        SFU_CONSENT_TIMEOUT="4s",
        SFU_IDLE_TIMEOUT="4s",
        RECORDING_SEGMENT_SECONDS="2",
        NUM_SFU_INSTANCES=str(instances),
    )
    room = f"blip{instances}"
    identity = Identity.create()
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        first = SyntheticPublisher(identity, media, ["l"])
        await first.start(client, room, token(room, "publisher"))
        viewers = [ResumeProbe(identity, decrypt=i < DECRYPTING) for i in range(VIEWERS)]
        for v in viewers:
            await join_viewer(client, room, v, "low")
        await wait_for(lambda: all(media_received(v) >= 100 for v in viewers), what="media before")

        await first.pause()
        first.peer.vanish()  # killed: no close_notify, no DELETE
        vanished = loop.time()
        await wait_for(
            lambda: "waits" in server.log.read_text(), what="the room waiting for its publisher"
        )
        stats = (await client.get("/sfu/stats")).json()
        assert stats["viewers_connected"] == VIEWERS, stats  # nobody was sent away
        before = [media_received(v) for v in viewers]

        # the scenario: it comes back 8 s after it vanished (a restarted app; longer than
        # the recorder's quiet-input timeout, so the recording's stall is exercised too)
        await asyncio.sleep(max(0.0, vanished + 8.0 - loop.time()))
        t0 = time.monotonic()
        for v in viewers:
            v.armed_at = t0
        second = SyntheticPublisher(identity, media, ["l"])
        await second.start(client, room, token(room, "publisher"))
        await wait_for(
            lambda: all(v.resumed_at is not None for v in viewers), what="every viewer resumed"
        )
        await wait_for(
            lambda: all(media_received(v) >= b + 400 for v, b in zip(viewers, before, strict=True)),
            what="media going on after the resume",
        )
        times = [1000 * (v.resumed_at - t0) for v in viewers if v.resumed_at is not None]
        result = TestResult("publisher_resume_" + ("one_process" if instances == 1 else "cluster"))
        result.metrics = {
            "resume_ms_p50": percentile(times, 50),
            "resume_ms_p99": percentile(times, 99),
            "resume_ms_max": max(times),
            "viewers": VIEWERS,
        }
        result.notes = [
            f"A synthetic publisher watched by {VIEWERS} viewers ({DECRYPTING} decrypting) is "
            "killed (no close_notify, no DELETE) and a new one publishes 8 s later; resume = "
            "the new WHIP POST → each viewer's first video packet after it (the new "
            "publisher's keyframe; noted on arrival)."
        ]
        result.evaluate()
        record_test("network", result)
        stats = (await client.get("/sfu/stats")).json()
        assert stats["viewers_connected"] == VIEWERS
        for v in viewers:  # the same SRTP session, numbering going on
            assert v.stats.decrypt_errors == 0 and not v.closed
            assert all(st.reordered == 0 for st in v.stats.streams.values())
        assert sum(st.payloads for v in viewers for st in v.stats.streams.values()) > 0
        await second.stop(client, token(room, "publisher"))
        for v in viewers:
            v.close()

        async def recordings() -> list[dict[str, object]]:
            return list(
                (await client.get("/recordings", params={"room": room})).json()["recordings"]
            )

        recs = await eventually(
            recordings,
            lambda recs: bool(recs) and recs[0]["state"] in ("available", "failed"),
            what="the recording finished",
        )
    assert len(recs) == 1, recs  # one recording across the blip
    rec = recs[0]
    assert rec["state"] == "available", rec
    objects = Path(server.env["TCHAT_DATA_DIR"]) / "objects" / "recordings" / str(rec["id"])
    text = (objects / "index.m3u8").read_text()
    playlist = parse(text)
    assert validate(playlist, final=True) == []
    assert sum(s.discontinuity for s in playlist.segments) == 1, text
    dates = [s.program_date_time for s in playlist.segments if s.program_date_time]
    assert dates == sorted(dates), text  # wall time only goes forward, across the blip
    probed = await probe_all([objects / s.uri for s in playlist.segments])
    assert all(p.end > p.start and p.sizes for p in probed)  # every segment decodes
