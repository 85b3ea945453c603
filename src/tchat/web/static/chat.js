// The chat panel: history on join, live messages over the WebSocket, posting, inline errors.
import { clock, failure } from "./common.js";

const epochMs = () => performance.timeOrigin + performance.now();

export function renderMessage(m) {
  const li = document.createElement("li");
  li.dataset.id = m.id;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = clock(m.created_at);
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.author;
  const text = document.createElement("span");
  text.textContent = m.text; // textContent: a message is never HTML
  li.append(when, who, text);
  return li;
}

// History of a room between two times (Unix s), oldest first, paging back with `before`.
export async function history(room, since = 0, until = Infinity, maxPages = 20) {
  const out = [];
  let before = null;
  for (let page = 0; page < maxPages; page++) {
    const q = new URLSearchParams({ limit: "200" });
    if (before) q.set("before", before);
    const resp = await fetch(`/rooms/${encodeURIComponent(room)}/messages?${q}`);
    if (!resp.ok) throw await failure(resp);
    const body = await resp.json();
    for (const m of body.messages) if (m.created_at >= since && m.created_at <= until) out.push(m);
    const oldest = body.messages[body.messages.length - 1];
    if (!body.next_before || !oldest || oldest.created_at < since) break;
    before = body.next_before;
  }
  return out.reverse();
}

export class ChatPanel {
  constructor(root, room) {
    this.room = room;
    this.list = root.querySelector("ol");
    this.form = root.querySelector("form");
    this.input = root.querySelector("form input");
    this.error = root.querySelector(".error");
    this.status = root.querySelector(".chat-status");
    this.seen = new Set();
    // text -> epoch ms: when posted here / when it arrived here (the tests time the
    // round trip from one page's post to another page's arrival)
    this.sent = new Map();
    this.arrivals = new Map();
    this.nonce = 0;
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.post(); });
  }

  add(m) {
    if (this.seen.has(m.id)) return;
    this.seen.add(m.id);
    const atBottom = this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 4;
    this.list.append(renderMessage(m));
    if (atBottom) this.list.scrollTop = this.list.scrollHeight;
  }

  async start(token) {
    this.token = token;
    try {
      for (const m of await history(this.room, 0, Infinity, 1)) this.add(m);
    } catch (err) {
      this.fail(`Chat history unavailable: ${err.message}`);
    }
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/rooms/${encodeURIComponent(this.room)}/ws`);
    this.ws = ws;
    ws.onopen = () => { if (this.token) ws.send(JSON.stringify({ type: "auth", token: this.token })); };
    ws.onmessage = (e) => this.frame(JSON.parse(e.data));
    ws.onclose = () => {
      this.status.textContent = "chat disconnected, reconnecting…";
      this.input.disabled = true;
      setTimeout(() => this.connect(), 2000);
    };
  }

  frame(f) {
    if (f.type === "hello") {
      this.canPost = f.can_post;
      this.input.disabled = !f.can_post;
      this.input.maxLength = f.max_chars;
      this.input.placeholder = f.can_post ? "Say something…" : "Read-only: no chat token";
      this.status.textContent = f.can_post ? "chat connected" : "chat connected (read-only)";
    } else if (f.type === "message") {
      this.arrivals.set(f.message.text, epochMs());
      this.add(f.message);
    } else if (f.type === "ack") {
      this.fail("");
    } else if (f.type === "error") {
      const why = { unauthorized: "Token rejected for chat", rate_limited: "Slow down",
        text_too_long: "Message too long" }[f.code] || f.code;
      this.fail(`${why}: ${f.detail}`);
      if (f.code === "unauthorized") this.input.disabled = true;
    }
  }

  post() {
    const text = this.input.value.trim();
    if (!text) return;
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this.fail("Chat is not connected yet");
      return;
    }
    const nonce = `n${++this.nonce}`;
    this.sent.set(text, epochMs());
    this.ws.send(JSON.stringify({ type: "post", text, nonce }));
    this.input.value = "";
  }

  fail(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }
}
