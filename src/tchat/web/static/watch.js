// Watch: WHEP player (quality, latency), chat beside it, HLS fallback on the live recording.
// A moderator token in the fragment (#token=…) also brings the chat's moderation controls.
import { $, explain, getJson, header, HttpError, kbps, rememberToken, restartIce, showError,
  signal, viewerToken } from "/static/common.js";
import { ChatPanel } from "/static/chat.js";

header("");
const room = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const params = new URLSearchParams(location.search);
$("#title").textContent = room;
document.title = `tchat — ${room}`;
const video = $("#video");
const chat = new ChatPanel($("#chat"), room);
window.tchatChat = chat;
// figures the browser tests read
window.tchatWatch = { transport: null, joinMs: null, width: 0, height: 0, latencyMs: null,
  error: "", iceRestarts: 0, iceProtocol: null };
const state = { pc: null, session: null, token: "", sessionToken: "", last: null, retry: null, hls: null };
const OFFLINE_RETRY_MS = 3000;
const RESTART_AFTER_MS = 2000; // "disconnected" this long (room still live): restart ICE
const BUSY_TRIES = 5; // WebRTC attempts a full SFU answers (503) before the HLS fallback
// how long WebRTC may take to connect before the HLS fallback (?fallback_after=ms)
const ICE_TIMEOUT_MS = Number(params.get("fallback_after")) || 10000;

function setStatus(text) { $("#status").textContent = text; }
function fail(message) {
  window.tchatWatch.error = message;
  showError($("#error"), message);
}

async function start() {
  state.token = await viewerToken(room);
  if (!state.token) {
    $("#tokenform").hidden = false;
    fail("This server needs a viewer or chat token to watch: paste one below.");
    chat.start("");
    return;
  }
  chat.start(state.token);
  if (params.get("transport") === "hls") return hlsFallback("HLS requested");
  watch();
}

async function watch() {
  clearTimeout(state.retry);
  const t0 = performance.now();
  const pc = new RTCPeerConnection();
  state.pc = pc;
  clearTimeout(state.restartTimer);
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (e) => {
    if (e.track.kind !== "video") return;
    video.srcObject = e.streams[0] || new MediaStream([e.track]);
    // join time: WHEP request → first decoded frame on screen
    const first = () => {
      // pc !== state.pc: WebRTC was abandoned (HLS fallback); that start is timed there
      if (pc === state.pc && window.tchatWatch.joinMs === null) {
        window.tchatWatch.joinMs = Math.round(performance.now() - t0);
      }
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(first);
    else video.addEventListener("playing", first, { once: true });
  });
  const iceTimer = setTimeout(() => {
    if (pc === state.pc && pc.connectionState !== "connected") hlsFallback("WebRTC did not connect");
  }, ICE_TIMEOUT_MS);
  pc.addEventListener("connectionstatechange", () => {
    if (pc !== state.pc) return;
    const s = pc.connectionState;
    if (s === "connected") {
      clearTimeout(iceTimer);
      clearTimeout(state.restartTimer);
      state.busyTries = 0;
      window.tchatWatch.transport = "webrtc";
      setStatus("● live (WebRTC)");
      showError($("#error"), "");
    } else if (s === "failed" && window.tchatWatch.transport !== "webrtc") {
      hlsFallback("WebRTC connection failed");
    } else if (s === "failed") {
      reconnect(pc); // the path broke for good: one ICE restart, else a new session
    } else if (s === "closed") {
      ended(pc);
    } else if (s === "disconnected") {
      // no DTLS close seen (lost): if the room is not live any more, the stream ended;
      // if it is (or /live cannot tell: our network is changing), restart ICE if it
      // stays disconnected
      const later = () => {
        clearTimeout(state.restartTimer);
        state.restartTimer = setTimeout(() => {
          if (pc === state.pc && pc.connectionState === "disconnected") reconnect(pc);
        }, RESTART_AFTER_MS);
      };
      getJson("/live").then((live) => {
        if (pc !== state.pc) return;
        if (!live.rooms.some((r) => r.room === room)) ended(pc);
        else later();
      }).catch(later);
    }
  });
  const layer = ["low", "mid", "high"][Number($("#quality").value)];
  try {
    const token = state.token; // the session's: only it may end or cap the session
    state.session = await signal(`/whep/${encodeURIComponent(room)}?layer=${layer}`, pc, token);
    state.sessionToken = token;
  } catch (err) {
    clearTimeout(iceTimer);
    pc.close();
    // abandoned meanwhile (a slow WHEP answer outlived ICE_TIMEOUT_MS and the HLS fallback
    // took over): its error, e.g. setRemoteDescription on the closed pc, is no news
    if (pc !== state.pc) return;
    state.pc = null;
    if (err instanceof HttpError && err.status === 404) {
      setStatus("offline");
      fail(`Room "${room}" is offline. Waiting for it to go live…`);
      state.retry = setTimeout(watch, OFFLINE_RETRY_MS);
    } else if (err instanceof HttpError && (err.status === 429 || err.status === 503)) {
      // 429: too many sessions of this token/address still connecting; 503: the SFU (every
      // instance of it) is full or overloaded. Either says when to come back: do as told.
      const waitMs = err.retryAfter === null ? OFFLINE_RETRY_MS : Math.max(1, err.retryAfter) * 1000;
      state.busyTries = (state.busyTries || 0) + 1;
      if (err.status === 503 && state.busyTries > BUSY_TRIES) {
        hlsFallback(explain(err, room)); // still full after a while: the recording's HLS
        return;
      }
      setStatus("busy");
      const why = err.status === 503 ? `The server is busy: ${err.message}.` : explain(err, room);
      fail(`${why} Retrying in ${Math.round(waitMs / 1000)} s…`);
      state.retry = setTimeout(watch, waitMs);
    } else if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
      setStatus("no access");
      $("#tokenform").hidden = false;
      fail(explain(err, room));
    } else {
      hlsFallback(explain(err, room));
    }
  }
}

// ICE restart in the same session (docs/sfu.md); a new session if the server refuses it
// (the session ended meanwhile: 404) or it does not connect.
async function reconnect(pc) {
  if (state.restarting === pc) return; // one restart at a time; its own timeout decides
  if (!state.session) return ended(pc);
  state.restarting = pc;
  setStatus("reconnecting…");
  try {
    await restartIce(pc, state.session, state.sessionToken);
    window.tchatWatch.iceRestarts += 1;
    if (pc.connectionState === "connected") setStatus("● live (WebRTC)"); // it never dropped
  } catch {
    state.restarting = null;
    if (pc === state.pc) rejoin(pc); // refused (e.g. the session ended): a new one
    return;
  }
  setTimeout(() => {
    if (state.restarting === pc) state.restarting = null;
    if (pc === state.pc && pc.connectionState !== "connected") rejoin(pc);
  }, ICE_TIMEOUT_MS);
}

// Give up on this session (ended for the SFU too: it would hold a place until its consent
// timeout) and start a new one.
function rejoin(pc) {
  if (state.session) {
    fetch(state.session, { method: "DELETE", headers: { authorization: `Bearer ${state.sessionToken}` } })
      .catch(() => {});
  }
  setStatus("reconnecting…");
  pc.close();
  state.pc = null;
  state.session = null;
  state.retry = setTimeout(watch, 0);
}

// for the browser tests
window.tchatWatch.restartIce = () => state.pc && reconnect(state.pc);
window.tchatWatchPc = () => state.pc;

// The publisher left (the SFU ends its viewers): wait for the room to come back.
function ended(pc) {
  setStatus("stream ended");
  pc.close();
  state.pc = null;
  state.session = null;
  state.retry = setTimeout(watch, OFFLINE_RETRY_MS);
}

// The room's live recording (EVENT playlist) through hls.js: a few seconds behind, but
// it works wherever plain HTTPS does.
async function hlsFallback(why) {
  if (state.hls) return;
  if (state.pc) { state.pc.close(); state.pc = null; }
  video.srcObject = null; // set at setRemoteDescription already; it would win over src
  if (state.session) { // free the SFU session at once rather than at its connect timeout
    fetch(state.session, { method: "DELETE", headers: { authorization: `Bearer ${state.sessionToken}` } })
      .catch(() => {});
    state.session = null;
  }
  const t0 = performance.now();
  setStatus(`HLS (${why})`);
  let url = null;
  try {
    const query = `/recordings?room=${encodeURIComponent(room)}&state=recording&limit=1`;
    const recs = (await getJson(query, state.token)).recordings; // private mode: the token
    url = recs.length ? recs[0].playlist_url : null;
  } catch (err) { fail(`Cannot list recordings: ${err.message}`); return; }
  if (!url) { fail(`${why}, and room "${room}" has no live recording to fall back to.`); return; }
  if (!window.Hls || !window.Hls.isSupported()) {
    if (video.canPlayType("application/vnd.apple.mpegurl")) { video.src = url; }
    else { fail("hls.js is missing (run make setup) and this browser has no native HLS."); return; }
  } else {
    const hls = new window.Hls({ liveSyncDurationCount: 2 });
    state.hls = hls;
    hls.on(window.Hls.Events.ERROR, (_, data) => { if (data.fatal) fail(`HLS error: ${data.details}`); });
    hls.loadSource(url);
    hls.attachMedia(video);
  }
  window.tchatWatch.transport = "hls";
  chat.setWatching("hls"); // presence: WHEP sessions are counted by the SFU, HLS pages say so
  video.addEventListener("playing", () => {
    if (window.tchatWatch.joinMs === null) window.tchatWatch.joinMs = Math.round(performance.now() - t0);
  }, { once: true });
  video.play().catch(() => {});
}

// "udp" or "tcp" (ICE-TCP, when the network blocks UDP): the selected pair's local side
function iceProtocol(report) {
  for (const s of report.values()) {
    if (s.type !== "transport" || !s.selectedCandidatePairId) continue;
    const pair = report.get(s.selectedCandidatePairId);
    const local = pair && report.get(pair.localCandidateId);
    if (local) return local.protocol;
  }
  return null;
}

// Frames stopped while the connection holds: if the broadcaster's connection dropped and
// may come back (the SFU keeps the room for a while), say so; media resumes by itself.
async function paused(w) {
  const now = performance.now();
  if (w.frames !== state.lastFrames) {
    state.lastFrames = w.frames;
    state.framesAt = now;
    if (w.reconnecting) { w.reconnecting = false; setStatus("● live (WebRTC)"); }
    return;
  }
  if (w.transport !== "webrtc" || now - state.framesAt < 3000 || now - (state.pausedAt || 0) < 3000) return;
  state.pausedAt = now;
  try {
    const mine = (await getJson("/live")).rooms.find((r) => r.room === room);
    w.reconnecting = Boolean(mine && mine.reconnecting);
    if (w.reconnecting) setStatus("reconnecting… (the broadcaster's connection dropped)");
  } catch { /* the next second tries again */ }
}

async function stats() {
  const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  const w = window.tchatWatch;
  w.width = video.videoWidth; w.height = video.videoHeight;
  w.frames = q ? q.totalVideoFrames : 0;
  paused(w);
  let rate = 0, fps = 0;
  if (state.pc && state.pc.connectionState === "connected") {
    let rtt = 0, buffer = null;
    const now = performance.now();
    const report = await state.pc.getStats();
    w.iceProtocol = iceProtocol(report);
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        if (state.last) rate = kbps(s.bytesReceived - state.last.bytes, (now - state.last.at) / 1000);
        state.last = { bytes: s.bytesReceived, at: now };
        fps = Math.round(s.framesPerSecond || 0);
        if (s.jitterBufferEmittedCount) buffer = (s.jitterBufferDelay / s.jitterBufferEmittedCount) * 1000;
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime) rtt = s.currentRoundTripTime * 1000;
    });
    // glass-to-glass less the capture/encode side: network one way + jitter buffer
    if (buffer !== null) w.latencyMs = Math.round(rtt / 2 + buffer);
  } else if (state.hls && state.hls.latency) {
    w.latencyMs = Math.round(state.hls.latency * 1000);
  }
  const layer = $("#quality").selectedOptions[0].textContent;
  const over = w.transport === "webrtc" && w.iceProtocol ? ` (${w.iceProtocol})` : "";
  $("#stats").innerHTML = `<div>transport<b>${w.transport || "…"}${over}</b></div>
    <div>quality<b id="q">${w.width}×${w.height}${w.transport === "webrtc" ? ` (${layer})` : ""}</b></div>
    <div>latency<b id="latency">${w.latencyMs ?? "…"} ms</b></div>
    <div>bitrate<b>${w.transport === "hls" ? "—" : `${rate} kbit/s · ${fps} fps`}</b></div>
    <div>joined in<b>${w.joinMs ?? "…"} ms</b></div>`;
}
setInterval(stats, 1000);

$("#quality").addEventListener("change", async () => {
  if (!state.session) return;
  const resp = await fetch(`${state.session}/layer`, {
    method: "PUT",
    headers: { "content-type": "application/json", authorization: `Bearer ${state.sessionToken}` },
    body: JSON.stringify({ max_layer: Number($("#quality").value) }),
  });
  if (!resp.ok) fail(`Cannot change quality (HTTP ${resp.status})`);
});
$("#unmute").addEventListener("click", () => {
  video.muted = !video.muted;
  $("#unmute").textContent = video.muted ? "Unmute" : "Mute";
  video.play().catch(() => {});
});
$("#tokenform").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("#token").value.trim();
  rememberToken(room, state.token);
  $("#tokenform").hidden = true;
  showError($("#error"), "");
  chat.token = state.token;
  if (chat.ws) chat.ws.close(); // reconnects and authenticates with the new token
  watch();
});
start();
