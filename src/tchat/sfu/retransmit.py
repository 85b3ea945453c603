"""NACK answers: what a viewer reports lost, resent from the cache of the layer each
packet came from — as RTX (original sequence number first) when the viewer negotiated
it — bounded per viewer (`RetransmitBudget`), per RTCP datagram (`NACK_MAX`) and per
sequence number (at most once per round trip). Part of the forwarder; no I/O."""

from __future__ import annotations

from tchat.sfu.downtrack import NACK_MAX, DownTrack, RetransmitBudget

RTX_OSN = 2  # an RTX payload starts with the original sequence number (RFC 4588)


def resend(
    dt: DownTrack,
    lost: list[int],
    now: float = 0.0,
    budget: RetransmitBudget | None = None,
    limit: int = NACK_MAX,
) -> int:
    """Resend what `dt`'s viewer reports lost: at most `limit` packets, within `budget`,
    each sequence number at most once per round trip. Returns packets resent;
    `dt.nack_stats` says what became of each number."""
    stats = dt.nack_stats
    stats.requested += len(lost)
    sent = 0
    rtx = dt.rtx_ssrc
    header = dt.header_size() + (RTX_OSN if rtx else 0)
    for i, out_seq in enumerate(lost):
        if sent >= limit:
            stats.over_limit += len(lost) - i
            break
        out_seq &= 0xFFFF
        seg = dt.segment_of(out_seq)
        if seg is None:
            stats.not_cached += 1
            continue
        layer = seg[1]
        if layer is None:
            # our padding (no RTX): a one-byte padding packet fills the viewer's gap,
            # else its frame continuity waits for it until the next keyframe
            ts, marker, payload = seg[3], 0, b""
        else:
            entry = layer.cache.get((out_seq - seg[2]) & 0xFFFF)
            if entry is None:
                stats.not_cached += 1
                continue
            _, ts, marker, payload = entry
            ts = (ts + seg[3]) & 0xFFFFFFFF
        if dt.resent_recently(out_seq, now):
            stats.repeated += 1
            continue
        if budget is not None and not budget.allow(header + len(payload) + 1, now):
            stats.over_budget += len(lost) - i
            break
        dt.mark_resent(out_seq, now)
        if rtx:
            seq = dt.rtx_seq
            dt.rtx_seq = (seq + 1) & 0xFFFF
            body = out_seq.to_bytes(2, "big") + payload
            pkt = dt.packet(marker | dt.rtx_pt, seq, ts, body, now, rtx)
        elif payload:
            pkt = dt.packet(marker | dt.pt, out_seq, ts, payload, now)
        else:
            pkt = dt.packet(dt.pt, out_seq, ts, b"\x01", now)
            pkt = bytes([pkt[0] | 0x20]) + pkt[1:]
        dt.send(dt.protect(pkt))
        dt.rtx_octets += len(pkt)
        sent += 1
    stats.answered += sent
    return sent
