"""NACK amplification, measured against a real server (issue 14.1).

`measure_nack_flood` joins one viewer (a `ClientPeer`, viewer token) to a live room,
measures the rate delivered to it, then floods the SFU with compound SRTCP datagrams
of NACKs for packets it just received (still in the SFU's cache) and reports what came
back: the SFU's retransmitted bytes (its `/sfu/stats` tally) against the NACK bytes
sent and against the viewer's delivered rate. Usable by any suite (the abuse suite
records `amplification` per input); loopback only, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from tchat.perf.sfu_load import whep_join
from tchat.perf.webrtc_peer import ClientPeer, Identity

FCI_SEQS = 17  # one NACK item (PID + a full bitmask) names 17 sequence numbers


@dataclass
class NackFloodResult:
    datagrams: int  # compound SRTCP datagrams sent
    nack_items: int  # sequence numbers they asked for
    nack_bytes: int  # bytes on the wire (SRTCP)
    flood_s: float
    delivered_bps: float  # media rate to the viewer before the flood (bits/s, on the wire)
    # the SFU's tally over the flood (+ drain); from a server that keeps none (before
    # issue 14.1), what the viewer received beyond the delivered rate (`measured_by`)
    retransmitted_bytes: int
    retransmitted_bps: float  # over the flood's duration
    received_bytes: int  # everything the viewer got during the flood (media + answers)
    amplification: float  # retransmitted bytes / NACK bytes
    ratio_to_delivered: float  # retransmitted_bps / delivered_bps
    nacks: dict[str, int]  # the SFU's NACK tallies over the flood
    sfu_load: float  # the server process's CPU (cores) right after the flood
    measured_by: str  # "sfu" (its tally) or "viewer" (received beyond the delivered rate)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def nack_datagram(
    sender_ssrc: int, media_ssrc: int, newest: int, nacks: int, items: int
) -> tuple[bytes, int]:
    """`nacks` NACK packets of `items` FCIs each, for the numbers just below `newest`."""
    out = b""
    span = items * FCI_SEQS
    for n in range(nacks):
        base = newest - (n + 1) * span
        # each FCI: a packet id and a bitmask of the 16 after it (all lost)
        fci = b"".join(
            struct.pack("!HH", (base + i * FCI_SEQS) & 0xFFFF, 0xFFFF) for i in range(items)
        )
        out += struct.pack("!BBHII", 0x81, 205, 2 + items, sender_ssrc, media_ssrc) + fci
    return out, nacks * span


def _octets(peer: ClientPeer) -> int:
    return sum(s.octets for s in peer.stats.streams.values())


async def _delivered_rate(peer: ClientPeer, warmup_s: float) -> tuple[int, float]:
    """The viewer's video SSRC (its biggest stream) and its delivered rate in bits/s."""
    await asyncio.wait_for(peer.media_started.wait(), 15)
    await asyncio.sleep(warmup_s / 3)  # past the start-up keyframe
    video = max(peer.stats.streams.items(), key=lambda kv: kv[1].octets)[0]
    before = _octets(peer)
    t0 = time.monotonic()
    await asyncio.sleep(warmup_s)
    delivered = _octets(peer) - before
    return video, 8 * delivered / (time.monotonic() - t0)


@dataclass
class _Flood:
    datagrams: int
    items: int
    nbytes: int
    elapsed: float


async def _flood(
    peer: ClientPeer,
    video: int,
    flood_s: float,
    datagrams_per_s: float,
    nacks_per_datagram: int,
    items_per_nack: int,
) -> _Flood:
    """Send NACK datagrams at `datagrams_per_s` for `flood_s`, each for the newest numbers."""
    datagrams = items = nbytes = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < flood_s:
        stream = peer.stats.streams[video]
        packet, count = nack_datagram(
            0x1234, video, stream.max_ext_seq, nacks_per_datagram, items_per_nack
        )
        assert peer.tx is not None
        wire = peer.tx.protect_rtcp(packet)
        peer._send(wire)
        datagrams += 1
        items += count
        nbytes += len(wire)
        await asyncio.sleep(max(0.0, start + datagrams / datagrams_per_s - now))
    return _Flood(datagrams, items, nbytes, time.monotonic() - start)


def _result(
    flood: _Flood,
    delivered_bps: float,
    received: int,
    stats0: dict[str, Any],
    stats1: dict[str, Any],
    drain_s: float,
) -> NackFloodResult:
    elapsed, nbytes = flood.elapsed, flood.nbytes
    if "retransmitted_bytes" in stats1:
        resent = int(stats1["retransmitted_bytes"]) - int(stats0["retransmitted_bytes"])
        nacks = {k: int(stats1["nacks"][k]) - int(stats0["nacks"][k]) for k in stats1["nacks"]}
        by = "sfu"
    else:
        # a server without the tally: what the viewer got beyond its delivered rate
        resent = max(0, int(received - delivered_bps / 8 * (elapsed + drain_s)))
        nacks, by = {}, "viewer"
    resent_bps = 8 * resent / elapsed
    return NackFloodResult(
        datagrams=flood.datagrams,
        nack_items=flood.items,
        nack_bytes=nbytes,
        flood_s=round(elapsed, 3),
        delivered_bps=round(delivered_bps),
        retransmitted_bytes=resent,
        retransmitted_bps=round(resent_bps),
        received_bytes=received,
        amplification=round(resent / nbytes, 3) if nbytes else 0.0,
        ratio_to_delivered=round(resent_bps / delivered_bps, 3) if delivered_bps else 0.0,
        nacks=nacks,
        sfu_load=float(stats1.get("load", 0.0)),
        measured_by=by,
    )


async def measure_nack_flood(
    base_url: str,
    room: str,
    viewer_token: str,
    *,
    layer: str = "high",
    warmup_s: float = 3.0,
    flood_s: float = 3.0,
    datagrams_per_s: float = 30.0,
    nacks_per_datagram: int = 48,
    items_per_nack: int = 1,
    drain_s: float = 0.5,
) -> NackFloodResult:
    """Flood one viewer's NACKs at the SFU of `base_url` (a room with a live publisher).

    Each datagram holds `nacks_per_datagram` NACK packets of `items_per_nack` FCIs, for
    the most recent numbers the viewer received (so every one is in the SFU's cache)."""
    peer = ClientPeer(Identity.create())
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        await peer.open()
        location = await whep_join(client, room, viewer_token, peer, layer)
        try:
            video, delivered_bps = await _delivered_rate(peer, warmup_s)
            stats0 = (await client.get("/sfu/stats")).json()
            received0 = _octets(peer)
            flood = await _flood(
                peer, video, flood_s, datagrams_per_s, nacks_per_datagram, items_per_nack
            )
            await asyncio.sleep(drain_s)
            received = _octets(peer) - received0
            stats1 = (await client.get("/sfu/stats")).json()
        finally:
            peer.close()
            await client.delete(location, headers={"authorization": f"Bearer {viewer_token}"})
    return _result(flood, delivered_bps, received, stats0, stats1, drain_s)
