"""Taps: readers of a published track that are not WebRTC viewers (the recorder).

A `Tap` is a plain-RTP copy of one track of a room: the same forwarding as a viewer's
(one continuous sequence and timestamp numbering across layer changes, a new layer
joined at its keyframe), unprotected, to a `send` callback. The layer is pinned by the
reader, never by the SFU: it starts paused (`switch(-1)`), and `switch(layer)` moves
it at that layer's next keyframe, so a recorder can change layer only where its
segments cut. The SFU announces publishes to `publish_listeners` (sfu/sessions.py); a
reader opens taps on that publisher's tracks (`taps_of`) — as MediaMTX makes a recorder
one more reader of a stream. Nothing here imports the reader.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from tchat.sfu import sdp
from tchat.sfu.forwarder import DownTrack, Track
from tchat.sfu.peer import Peer


def _identity(data: bytes) -> bytes:
    return data


class Tap:
    def __init__(
        self, media: sdp.Media, track: Track, pt: int, send: Callable[[bytes], None]
    ) -> None:
        self.media = media  # as the publisher negotiated it
        self.track = track
        self.kind = track.kind
        self.mime = track.mime
        self.clock_rate = track.clock_rate
        self.rids = list(track.rids)
        self._dt = DownTrack(
            ssrc=secrets.randbits(31) | 1,
            pt=pt,
            clock_rate=track.clock_rate,
            protect=_identity,
            send=send,
            first_seq=secrets.randbits(16),
            first_ts=secrets.randbits(32),
        )
        self.open = False

    def start(self, now: float) -> None:
        """Join the track: packets flow (on the pinned layer, for video)."""
        if not self.open:
            self.open = True
            self.track.add(self._dt, now)

    def close(self) -> None:
        self.open = False
        self.track.remove(self._dt)

    # -- the layer (video) ---------------------------------------------------------------
    @property
    def layer(self) -> int:
        """The layer being forwarded; -1 until the pinned one's keyframe arrived."""
        return self._dt.current

    @property
    def target(self) -> int:
        """The layer pinned; -1: paused."""
        return self._dt.target

    def switch(self, layer: int, now: float) -> None:
        """Forward `layer` from its next keyframe on (asked for now); -1 pauses."""
        self.track.switch_at_keyframe(self._dt, layer, now)

    def want_keyframe(self, now: float) -> None:
        """Ask the publisher for a keyframe of the layer forwarded (rate-limited)."""
        self.track.keyframe_wanted(self._dt, now)

    def flowing(self, now: float, within_s: float) -> list[int]:
        """The layers whose packets arrived within `within_s`."""
        return [
            layer.index
            for layer in self.track.layers
            if layer is not None and now - layer.last_seen <= within_s
        ]


def taps_of(
    publisher: Peer,
    pick: Callable[[sdp.Media], tuple[int, Callable[[bytes], None]] | None],
) -> list[Tap]:
    """A tap on each of `publisher`'s tracks that `pick` takes: it returns the payload
    type and the send callback, or None to leave the track. Video taps start paused."""
    taps = []
    for media in publisher.media:
        track = publisher.room.tracks.get(media.kind)
        picked = pick(media) if track is not None else None
        if track is None or picked is None:
            continue
        tap = Tap(media, track, *picked)
        if tap.kind == "video":
            tap.switch(-1, 0.0)  # nothing until the reader pins a layer
        taps.append(tap)
    return taps
