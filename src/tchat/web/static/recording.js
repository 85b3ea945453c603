// Replay: the recording's HLS VOD through hls.js, and the room's chat shown as the video
// reaches each message's time (program date time of the playing fragment + offset).
import { $, clock, duration, getJson, header, showError, tokenFromHash } from "/static/common.js";
import { history, renderMessage } from "/static/chat.js";

header("");
const id = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const video = $("#video");
const list = $("#chat ol");
// figures the browser tests read: wall clock of the frame on screen, messages shown
window.tchatReplay = { wall: null, shown: 0, messages: 0, error: "", hlsErrors: [] };
let frag = null; // {start (media s), pdt (Unix s)} of the fragment playing
let messages = [];
let shown = 0;

function fail(message) {
  window.tchatReplay.error = message;
  showError($("#error"), message);
}

// Wall-clock time (Unix s) of the frame on screen.
function wallNow(rec) {
  if (frag) return frag.pdt + (video.currentTime - frag.start);
  return rec.started_at + video.currentTime; // no PDT yet: the recording's own start
}

function sync(rec) {
  const wall = wallNow(rec);
  window.tchatReplay.wall = wall;
  let n = 0;
  while (n < messages.length && messages[n].created_at <= wall) n++;
  if (n !== shown) { // seeking back hides what is not said yet
    list.replaceChildren(...messages.slice(0, n).map(renderMessage));
    list.scrollTop = list.scrollHeight;
    shown = n;
    window.tchatReplay.shown = n;
  }
  $("#stats").innerHTML = `<div>at<b>${clock(wall)}</b></div>
    <div>messages<b>${n} / ${messages.length}</b></div>`;
}

async function start() {
  let rec;
  try {
    // private deployments (RECORDING_ACCESS=private): the link carries a viewer token
    rec = await getJson(`/recordings/${encodeURIComponent(id)}`, tokenFromHash());
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      return fail(`This recording is private: open its link with a viewer token (#token=…). ${err.message}`);
    }
    return fail(err.status === 404 ? `No recording "${id}".` : `Cannot load the recording: ${err.message}`);
  }
  $("#title").textContent = `Recording of ${rec.room}`;
  document.title = `tchat — ${rec.room} recording`;
  $("#meta").textContent = `${new Date(rec.started_at * 1000).toLocaleString()} · ${rec.state}` +
    ` · ${duration(rec.duration_s)}${rec.detail ? ` · ${rec.detail}` : ""}`;
  if (!rec.playlist_url) return fail(`This recording has nothing to play (${rec.state}).`);
  try {
    messages = await history(rec.room, rec.started_at, rec.ended_at || Infinity);
    window.tchatReplay.messages = messages.length;
  } catch (err) {
    fail(`Chat replay unavailable: ${err.message}`);
  }
  if (window.Hls && window.Hls.isSupported()) {
    const hls = new window.Hls();
    hls.on(window.Hls.Events.FRAG_CHANGED, (_, data) => {
      const f = data.frag;
      if (f.programDateTime) frag = { start: f.start, pdt: f.programDateTime / 1000 };
    });
    hls.on(window.Hls.Events.ERROR, (_, data) => {
      window.tchatReplay.hlsErrors.push(`${data.fatal ? "fatal " : ""}${data.details}`);
      if (data.fatal) fail(`HLS error: ${data.details}`);
    });
    hls.loadSource(rec.playlist_url);
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = rec.playlist_url; // Safari: native HLS (no PDT here: start time + offset)
  } else {
    return fail("hls.js is missing (run make setup) and this browser has no native HLS.");
  }
  video.addEventListener("timeupdate", () => sync(rec));
  video.addEventListener("seeked", () => sync(rec));
  sync(rec);
}
start();
