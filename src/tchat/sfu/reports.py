"""The RTCP the SFU generates: receiver reports and transport-wide CC feedback towards
publishers, sender reports towards viewers.

Each function builds the plain (unprotected) packets from the forwarding state, with the
clock passed in; the caller protects and sends them. Nothing here reads a clock or a
socket, so a test checks a report's fields against a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tchat.sfu import rtcp, twcc
from tchat.sfu.forwarder import DownTrack, Track

SFU_SSRC = 0x7C4A7000  # sender SSRC of our own RTCP (PLI towards publishers)


def publisher_feedback(rx: twcc.TwccReceiver, tracks: Iterable[Track]) -> Iterator[bytes]:
    """Transport-cc feedback for what the publisher sent since the last call."""
    # media SSRC: any of the publisher's (browsers ignore it); a layer's when known
    media = next((layer.ssrc for track in tracks for layer in track.layers if layer is not None), 0)
    for _ in range(twcc.WINDOW // twcc.MAX_PER_PACKET):
        packet = rx.feedback(SFU_SSRC, media)
        if packet is None:
            break
        yield packet


def receiver_report(tracks: Iterable[Track], now: float) -> bytes | None:
    """What arrived from a publisher, every layer in one RR (browsers adapt on its loss);
    None before anything arrived."""
    blocks = []
    for track in tracks:
        for layer in track.layers:
            if layer is None or layer.max_seq < 0:
                continue
            fraction, lost, highest, lsr, dlsr = layer.report(now)
            blocks.append(
                rtcp.RtcpReceiverInfo(
                    ssrc=layer.ssrc,
                    fraction_lost=fraction,
                    packets_lost=min(lost, 0x7FFFFF),
                    highest_sequence=highest & 0xFFFFFFFF,
                    jitter=0,
                    lsr=lsr,
                    dlsr=dlsr,
                )
            )
    return rtcp.receiver_report(SFU_SSRC, blocks) if blocks else None


def sender_reports(downtracks: Iterable[DownTrack], now: float, wall: float) -> Iterator[bytes]:
    """One SR per downtrack that has sent: `wall` (Unix time) is its NTP time, and the
    RTP time is the last packet's, advanced to `now` at the track's clock rate."""
    for dt in downtracks:
        if dt.packets == 0 or dt.last_time < 0:
            continue
        rtp_ts = dt.last_ts + int((now - dt.last_time) * dt.clock_rate)
        yield rtcp.sender_report(dt.ssrc, wall, rtp_ts, dt.packets, dt.octets)
