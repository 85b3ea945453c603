"""A WHIP publisher we did not write: GStreamer's webrtcbin (libnice ICE), driven from the
system Python (`/usr/bin/python3`, where python3-gi lives), run by the tests as a
subprocess. Not a test module.

It publishes as native GStreamer apps do, with webrtcbin's and the payloaders' defaults:
H.264 in 1,400-byte RTP packets (rtph264pay mtu), Opus named `OPUS/48000/2`, ICE kept
alive with STUN binding *indications* (libnice 0.1.21 has RFC 7675 consent off). The
offer goes out whole once gathering completes (no trickle), with `Authorization:
Bearer`; the 201's answer is applied; at the end (after --seconds, or on `stop` on
stdin) it DELETEs the session URL. ICE is kept on loopback (the machine's other
address never reaches a loopback-bound SFU; see /work/shared/INTEROP-NOTES.md).

Every event is one JSON line on stdout: created, connection-state, dtls-state,
stats (outbound RTP counters), deleted, exit.

    /usr/bin/python3 gst_whip.py http://127.0.0.1:8080/whip/room TOKEN --seconds 40
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PIPELINE = """
webrtcbin name=webrtc bundle-policy=max-bundle
videotestsrc is-live=true pattern={pattern} ! video/x-raw,width=640,height=360,framerate=30/1
  ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate={kbps}
  ! video/x-h264,profile=constrained-baseline
  ! rtph264pay config-interval=-1 aggregate-mode=zero-latency {mtu}
  ! application/x-rtp,media=video,encoding-name=H264,payload=96 ! webrtc.
audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc
  ! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=97 ! webrtc.
"""


_emitting = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    # GStreamer's threads emit too (connection-state): one whole line at a time, or two
    # events interleave into unparseable text (a lost `deleted` when the DELETE ends ICE)
    line = json.dumps({"event": event, **fields}) + "\n"
    with _emitting:
        sys.stdout.write(line)
        sys.stdout.flush()


class Publisher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        mtu = f"mtu={args.mtu}" if args.mtu else ""  # empty: rtph264pay's default (1400)
        self.pipe = Gst.parse_launch(PIPELINE.format(kbps=args.kbps, mtu=mtu, pattern=args.pattern))
        self.webrtc = self.pipe.get_by_name("webrtc")
        self.loop = GLib.MainLoop()
        self.location = ""
        self.ended = False
        # kept referenced for the process's life: PyGObject would drop a reference it
        # does not own when these wrappers are collected, and webrtcbin's ICE with it
        self.ice = self.webrtc.get_property("ice-agent")
        self.agent = agent = self.ice.get_property("agent")
        agent.set_property("upnp", False)
        agent.set_property("ice-tcp", False)
        local = Nice.Address()
        local.set_from_string("127.0.0.1")
        agent.add_local_address(local)
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def run(self) -> None:
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add_seconds(self.args.seconds, self.stop)
        GLib.timeout_add(1000, self.poll_stats)
        threading.Thread(target=self.read_stdin, daemon=True).start()
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        emit("exit")

    def read_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                GLib.idle_add(self.stop)
                return

    # -- negotiation ---------------------------------------------------------------
    def on_negotiation_needed(self, element: Any) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        element.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, _: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            emit("error", message=f"no offer: {reply.to_string() if reply else None}")
            GLib.idle_add(self.stop)
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, element: Any, _: Any) -> None:
        if (
            element.get_property("ice-gathering-state")
            != GstWebRTC.WebRTCICEGatheringState.COMPLETE
        ):
            return
        sdp = element.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(
            self.args.url,
            data=sdp.encode(),
            method="POST",
            headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {self.args.token}",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = resp.read().decode()
                status = resp.status
                self.location = urllib.parse.urljoin(self.args.url, resp.headers["Location"])
        except urllib.error.HTTPError as exc:
            emit("refused", status=exc.code, body=exc.read().decode(errors="replace"))
            self.loop.quit()
            return
        rtpmaps = [line for line in sdp.splitlines() if line.startswith("a=rtpmap:")]
        emit("created", status=status, location=self.location, offer_rtpmaps=rtpmaps)
        _, msg = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.webrtc.emit("set-remote-description", desc, Gst.Promise.new())
        GLib.timeout_add(200, self.watch_dtls)

    def watch_dtls(self) -> bool:
        trans = self.webrtc.emit("get-transceiver", 0)
        transport = trans.get_property("sender").get_property("transport") if trans else None
        if transport is None:
            return True  # not yet created: look again
        transport.connect("notify::state", self.on_dtls)
        self.on_dtls(transport, None)  # its state now (it may have moved already)
        return False

    # -- events --------------------------------------------------------------------
    def on_state(self, element: Any, _: Any) -> None:
        state = element.get_property("connection-state")
        emit("connection-state", state=state.value_nick)

    def on_dtls(self, transport: Any, _: Any) -> None:
        emit("dtls-state", state=transport.get_property("state").value_nick)

    def on_error(self, _: Any, message: Gst.Message) -> None:
        err, debug = message.parse_error()
        emit("error", message=str(err), debug=str(debug)[:300])
        self.stop()

    def poll_stats(self) -> bool:
        if self.ended:
            return False
        promise = Gst.Promise.new_with_change_func(self.on_stats, None)
        self.webrtc.emit("get-stats", None, promise)
        return True

    def on_stats(self, promise: Gst.Promise, _: Any) -> None:
        out: dict[str, dict[str, int]] = {}

        def each(_field: Any, value: Any, _data: Any) -> bool:
            if (
                isinstance(value, Gst.Structure)
                and value.get_name() == "application/x-webrtc-stats"
            ):
                kind = value.get_value("kind") if value.has_field("kind") else None
                if value.get_value("type") == GstWebRTC.WebRTCStatsType.OUTBOUND_RTP and kind:
                    out[kind] = {
                        "packets": int(value.get_value("packets-sent") or 0),
                        "bytes": int(value.get_value("bytes-sent") or 0),
                    }
            return True

        reply = promise.get_reply()
        if reply is not None:
            reply.foreach(each, None)
        emit("stats", outbound=out)

    def stop(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        if self.location:
            req = urllib.request.Request(
                self.location,
                method="DELETE",
                headers={"Authorization": f"Bearer {self.args.token}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    status, body = resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read().decode(errors="replace")
            except Exception as exc:  # always say what happened
                status, body = 0, f"{type(exc).__name__}: {exc}"
            emit("deleted", status=status, body=body[:300])
        self.loop.quit()
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip/room")
    parser.add_argument("token", help="a publisher token for the room")
    parser.add_argument("--seconds", type=int, default=30, help="publish this long, then DELETE")
    parser.add_argument("--kbps", type=int, default=2000, help="H.264 bitrate")
    parser.add_argument("--mtu", type=int, default=0, help="rtph264pay mtu (0: its default)")
    parser.add_argument(
        "--pattern", default="ball", help="videotestsrc pattern (snow: every packet full size)"
    )
    Gst.init(None)
    Publisher(parser.parse_args()).run()


if __name__ == "__main__":
    main()
