// Studio: go live over WHIP from the camera and microphone, simulcast, live stats, stop;
// the room's chat with moderation controls (the publisher token is the broadcaster's).
import { $, explain, getJson, header, kbps, showError, signal, tokenFromHash } from "/static/common.js";
import { ChatPanel } from "/static/chat.js";

header("/studio");
const params = new URLSearchParams(location.search);
const state = { pc: null, stream: null, session: null, last: new Map(), timer: null };
// figures the browser tests read: join time (ms, Go live → connected), layers sent
window.tchatStudio = { joinMs: null, layers: {}, viewers: 0, live: false,
  presence: { watching: 0, chatting: 0 } };

$("#room").value = params.get("room") || "demo";
$("#token").value = tokenFromHash() || sessionStorage.getItem("tchat:publisher") || "";
const obs = () => {
  $("#whipurl").value = new URL(`/whip/${encodeURIComponent($("#room").value)}`, location.href).href;
  $("#bearer").value = $("#token").value;
};
obs();
$("#room").addEventListener("input", obs);
$("#token").addEventListener("input", obs);

// The chat opens with the page (no need to be live) and follows the room and token fields.
const chat = new ChatPanel($("#chat"), $("#room").value);
window.tchatChat = chat;
chat.onPresence = (p) => { window.tchatStudio.presence = p; };
const chatToken = () => $("#token").value.trim();
chat.start(chatToken());
const rejoin = () => {
  if ($("#room").checkValidity()) chat.restart($("#room").value, chatToken());
};
$("#room").addEventListener("change", rejoin);
$("#token").addEventListener("change", rejoin);

function setStatus(text, live = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("live", live);
}

async function goLive(event) {
  event.preventDefault();
  showError($("#error"), "");
  const room = $("#room").value, token = $("#token").value.trim();
  sessionStorage.setItem("tchat:publisher", token);
  state.token = token; // only the token that published may end the session
  $("#golive").disabled = true;
  setStatus("starting camera…");
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
      audio: true,
    });
  } catch (err) {
    const why = err.name === "NotAllowedError"
      ? "Camera or microphone access was denied: allow it in the browser's site settings and try again."
      : err.name === "NotFoundError" ? "No camera or microphone was found."
      : `Cannot open the camera: ${err.message}`;
    return fail(why);
  }
  $("#preview").srcObject = state.stream;
  const t0 = performance.now();
  const pc = new RTCPeerConnection();
  state.pc = pc;
  pc.addTransceiver(state.stream.getAudioTracks()[0], { direction: "sendonly" });
  const video = pc.addTransceiver(state.stream.getVideoTracks()[0], {
    direction: "sendonly",
    sendEncodings: [
      { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
      { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
      { rid: "f", maxBitrate: 2_000_000 },
    ],
  });
  // H.264 first: recordings copy it into HLS as is (VP8 must be transcoded, at 640×360)
  const codecs = RTCRtpSender.getCapabilities("video").codecs;
  const isH264 = (c) => c.mimeType.toLowerCase() === "video/h264"; // names are case-insensitive
  const h264 = codecs.filter(isH264);
  if (h264.length) video.setCodecPreferences([...h264, ...codecs.filter((c) => !isH264(c))]);
  pc.addEventListener("connectionstatechange", () => {
    if (pc !== state.pc) return;
    if (pc.connectionState === "connected") {
      window.tchatStudio.joinMs = Math.round(performance.now() - t0);
      window.tchatStudio.live = true;
      setStatus("● LIVE", true);
    } else if (pc.connectionState === "failed") {
      fail("The media connection failed (ICE/DTLS). Check that UDP to the server is allowed.");
    }
  });
  setStatus("connecting…");
  try {
    state.session = await signal(`/whip/${encodeURIComponent(room)}`, pc, token);
  } catch (err) {
    return fail(explain(err, room));
  }
  $("#stop").disabled = false;
  const watch = new URL(`/watch/${encodeURIComponent(room)}`, location.href).href;
  $("#watch").href = watch;
  $("#watch").textContent = watch;
  $("#watchlink").hidden = false;
  state.timer = setInterval(stats, 1000);
}

async function stats() {
  const pc = state.pc;
  if (!pc) return;
  const rows = [];
  const now = performance.now();
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "outbound-rtp" || s.kind !== "video") return;
    const prev = state.last.get(s.id);
    state.last.set(s.id, { bytes: s.bytesSent, at: now });
    const rate = prev ? kbps(s.bytesSent - prev.bytes, (now - prev.at) / 1000) : 0;
    const layer = { rid: s.rid || "-", width: s.frameWidth || 0, height: s.frameHeight || 0,
      fps: Math.round(s.framesPerSecond || 0), kbps: rate, limit: s.qualityLimitationReason || "" };
    window.tchatStudio.layers[layer.rid] = layer;
    rows.push(layer);
  });
  rows.sort((a, b) => a.width - b.width);
  $("#layers tbody").replaceChildren(...rows.map((l) => {
    const tr = document.createElement("tr");
    for (const v of [l.rid, `${l.width}×${l.height}`, l.fps, l.kbps, l.limit]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    return tr;
  }));
  $("#layers").hidden = rows.length === 0;
  try {
    const live = await getJson("/live");
    const me = live.rooms.find((r) => r.room === $("#room").value);
    window.tchatStudio.viewers = me ? me.viewers : 0;
    const total = rows.reduce((a, l) => a + l.kbps, 0);
    const p = window.tchatStudio.presence;
    $("#stats").innerHTML = `<div>viewers<b id="viewers">${window.tchatStudio.viewers}</b></div>
      <div>watching · in chat<b id="presence">${p.watching} · ${p.chatting}</b></div>
      <div>sending<b>${total} kbit/s</b></div>
      <div>joined in<b>${window.tchatStudio.joinMs ?? "…"} ms</b></div>`;
  } catch { /* the next second tries again */ }
}

async function stop() {
  clearInterval(state.timer);
  const { pc, session, stream } = state;
  state.pc = null;
  if (session) {
    try {
      await fetch(session, { method: "DELETE", headers: { authorization: `Bearer ${state.token}` } });
    } catch { /* the SFU ends an idle publish by itself */ }
  }
  if (pc) pc.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  state.session = state.stream = null;
  window.tchatStudio.live = false;
  $("#preview").srcObject = null;
  $("#stop").disabled = true;
  $("#golive").disabled = false;
  setStatus("offline — the recording is being finalized");
}

function fail(message) {
  showError($("#error"), message);
  setStatus("offline");
  const { pc, stream } = state;
  state.pc = null;
  if (pc) pc.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  clearInterval(state.timer);
  $("#golive").disabled = false;
  $("#stop").disabled = true;
}

$("#form").addEventListener("submit", goLive);
$("#stop").addEventListener("click", stop);
