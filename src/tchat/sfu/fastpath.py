"""Which per-packet path the SFU runs, and the native one's glue.

The native path is the `tchat_fastpath` extension (native/, Rust + PyO3, built by
`make native`): for one packet, every viewer's rewrite, SRTP protect and one
`sendmmsg` for all the datagrams, in one call (`Fanout.forward`). The Python path —
forwarder.py's loop, pylibsrtp, one `sendto` per datagram — stays the reference and
the fallback where no Rust toolchain exists. `SFU_FASTPATH=auto|native|python`
(default auto: native when built). Everything else (switches, padding, NACK answers,
RTCP, policy) is the same Python code on both paths: a `NativeDownTrack` keeps its
rewrite state in a native `Slot`, under the names a `DownTrack` uses.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pylibsrtp import Session

from tchat.sfu.downtrack import HIGH, TWCC_RING, DownTrack, Send, TwccSender
from tchat.sfu.dtls import NativeTx
from tchat.sfu.ice import Addr

if TYPE_CHECKING:
    from tchat.sfu.forwarder import Track
    from tchat.sfu.layer import Layer

MODES = ("auto", "native", "python")
MODULE = "tchat_fastpath"


@dataclass(frozen=True)
class FastPath:
    module: ModuleType | None  # tchat_fastpath when the native path runs
    why: str  # what chose the path

    @property
    def native(self) -> bool:
        return self.module is not None

    def describe(self) -> str:
        if self.module is None:
            return f"python ({self.why})"
        return f"native ({MODULE} {self.module.__version__}: {self.why})"


def choose(mode: str = "auto") -> FastPath:
    """The path `SFU_FASTPATH=mode` runs; native when asked for but not built is an
    error (said at start-up, not found out under load)."""
    if mode not in MODES:
        raise ValueError(f"SFU_FASTPATH must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "python":
        return FastPath(None, "SFU_FASTPATH=python")
    try:
        module = importlib.import_module(MODULE)
    except ImportError as exc:
        if mode == "native":
            raise RuntimeError(
                f"SFU_FASTPATH=native, but the native fast path is not built ({exc}): "
                "run `make native` (needs cargo)"
            ) from exc
        return FastPath(None, f"the native fast path is not built: {exc}; `make native`")
    return FastPath(module, f"SFU_FASTPATH={mode}")


def _on_slot(name: str) -> Any:
    """A DownTrack attribute kept in the native slot, where the fan-out reads it."""

    def get(self: NativeDownTrack) -> Any:
        return getattr(self.slot, name)

    def put(self: NativeDownTrack, value: Any) -> None:
        setattr(self.slot, name, value)

    return property(get, put)


class NativeDownTrack(DownTrack):
    """A `DownTrack` whose per-packet state lives in a native `Slot`: the track's
    `Fanout` sends from it; the Python methods (switch, padding, NACK answers) read and
    write the same state through these properties and protect with the same native
    SRTP state (`session`), so each stream has one rollover counter."""

    __slots__ = ("module", "slot")

    current = _on_slot("current")
    target = _on_slot("target")
    seq_offset = _on_slot("seq_offset")
    ts_offset = _on_slot("ts_offset")
    last_seq = _on_slot("last_seq")
    last_ts = _on_slot("last_ts")
    last_time = _on_slot("last_time")
    packets = _on_slot("packets")
    octets = _on_slot("octets")
    frames = _on_slot("frames")
    ssrc = _on_slot("ssrc")
    pt = _on_slot("pt")

    def __init__(
        self,
        module: ModuleType,
        session: Any,
        ssrc: int,
        pt: int,
        clock_rate: int,
        send: Send,
        max_layer: int = HIGH,
        first_seq: int = 0,
        first_ts: int = 0,
    ) -> None:
        self.module = module
        self.slot = module.Slot(session, ssrc, pt)
        protect = session.protect
        super().__init__(ssrc, pt, clock_rate, protect, send, max_layer, first_seq, first_ts)
        self.slot.route(-1, None, send)

    def new_twcc(self) -> TwccSender:
        ring: TwccSender = self.module.TwccRing(TWCC_RING)
        return ring

    def enable_twcc(self, tw: TwccSender, twcc_id: int) -> None:
        super().enable_twcc(tw, twcc_id)
        self._push_ext()

    def set_playout_delay(self, playout_id: int, min_ms: int, max_ms: int) -> None:
        super().set_playout_delay(playout_id, min_ms, max_ms)
        self._push_ext()

    def _push_ext(self) -> None:
        if self.tw is not None:
            words, id_byte = self.ext_head
            block = struct.pack("!HHBH", 0xBEDE, words, id_byte, 0) + self.ext_tail
            self.slot.set_twcc(self.tw, block)

    def route(self, fd: int, addr: Addr | None, send: Send) -> None:
        super().route(fd, addr, send)
        self.slot.route(fd, addr, send)


def forward_native(
    track: Track, layer: Layer, marker: int, seq: int, ts: int, payload: bytes, now: float
) -> int:
    """`Track.forward` for its native viewers: those waiting for this layer are re-based
    (in Python, `DownTrack.switch_to`) when the packet starts a keyframe, then one call
    rewrites, protects and sends to every viewer on the layer. Packets sent."""
    fan = track.fanout
    index = layer.index
    if fan.waiting(index) and track.is_keyframe_start(payload):
        for dt in track.downtracks:
            if isinstance(dt, NativeDownTrack) and dt.target == index and dt.current != index:
                dt.switch_to(layer, seq, ts, now)
    sent: int = fan.forward(index, marker, seq, ts, payload, now)
    return sent


def downtrack(
    tx: Session | NativeTx,
    ssrc: int,
    pt: int,
    clock_rate: int,
    send: Send,
    max_layer: int = HIGH,
    first_seq: int = 0,
    first_ts: int = 0,
) -> DownTrack:
    """A viewer's downtrack protected by `tx`: native when the session is (the DTLS made
    it so, `dtls.outbound`), else the Python one."""
    if isinstance(tx, NativeTx):
        return NativeDownTrack(
            tx.module, tx.rtp, ssrc, pt, clock_rate, send, max_layer, first_seq, first_ts
        )
    return DownTrack(ssrc, pt, clock_rate, tx.protect, send, max_layer, first_seq, first_ts)
