"""The relay's wire format between SFU instances, without I/O.

Relay datagrams (private network, never exposed to clients) start with `PREFIX`
(`!BIBB`): type, subscription id (chosen by the edge), kind index, layer index.
  origin → edge: MEDIA (+ the RTP packet as received), KEEPALIVE, END, RESTART (the
                 room's source started over — a resumed publisher —, kind index =
                 a generation number mod 256)
  edge → origin: PLI, NACK (+ !H original sequence numbers), DEMAND (+ one byte per
                 kind: bitmask of the layer caps its viewers have), BYE
The subscription's media description travels as JSON (`media_to_json`) in the control
API's subscribe answer; `pick_layers` is the rule both sides apply to a DEMAND.
"""

from __future__ import annotations

import struct
from typing import Any

from tchat.sfu import sdp
from tchat.sfu.forwarder import HIGH

MEDIA, PLI, NACK, DEMAND, KEEPALIVE, END, BYE, RESTART = 1, 2, 3, 4, 5, 6, 7, 8
PREFIX = struct.Struct("!BIBB")
RELAY_TIMEOUT_S = 3.0  # a subscription silent this long is over (both send ≥ 1/s)
NACK_WINDOW = 64  # a relay gap wider than this is a restart or a long outage: no NACK
RTP_HEADER = struct.Struct("!BBHII").pack  # a NACK answer rebuilt from the origin's cache


def media_to_json(media: list[sdp.Media]) -> list[dict[str, Any]]:
    """The publisher's negotiated media, as the edge needs it to answer its viewers."""
    out = []
    for m in media:
        if m.codec is None:
            continue
        c = m.codec
        out.append(
            {
                "kind": m.kind,
                "mime": c.mime,
                "payload_type": c.payload_type,
                "clock_rate": c.clock_rate,
                "channels": c.channels,
                "fmtp": [list(p) for p in c.fmtp],
                "rids": list(m.rids),
                "rid_ext": m.rid_ext,
            }
        )
    return out


def media_from_json(items: list[dict[str, Any]]) -> list[sdp.Media]:
    out = []
    for i, d in enumerate(items):
        codec = sdp.Codec(
            mime=sdp.canonical_mime(str(d["mime"])),
            payload_type=int(d["payload_type"]),
            clock_rate=int(d["clock_rate"]),
            channels=None if d.get("channels") is None else int(d["channels"]),
            fmtp=tuple((str(k), str(v)) for k, v in d.get("fmtp", [])),
        )
        out.append(
            sdp.Media(
                mid=str(i),
                kind=str(d["kind"]),
                codec=codec,
                rids=[str(r) for r in d.get("rids", [])],
                rid_ext=int(d.get("rid_ext", 0)),
            )
        )
    return out


def pick_layers(caps: int, live: list[int]) -> int:
    """Layers to relay for a set of viewer caps: per cap, the best live layer under it
    (else the lowest live one) — the same rule `Track` applies to each viewer."""
    mask = 0
    if not live:
        return 0
    for cap in range(HIGH + 1):
        if caps >> cap & 1:
            under = [i for i in live if i <= cap]
            mask |= 1 << (max(under) if under else min(live))
    return mask
