// The chat panel: history on join, live messages over the WebSocket, posting, inline errors.
// Moderation: a broadcaster or moderator token gets controls (delete, timeout 10 min, ban on
// each message; slow mode, clear, unban, the log); everyone sees their own restriction as a
// banner, the slow-mode wait, and how many watch and chat (presence).
// A deleted message is removed, not replaced by a placeholder: history (GET …/messages)
// leaves it out too, so a page opened later shows the same chat as one that was open, and
// an empty "message deleted" line would only point at what the moderator wanted gone.
import { clock, failure } from "./common.js";

const epochMs = () => performance.timeOrigin + performance.now();
const TIMEOUT_S = 600; // the one-click timeout: 10 minutes
const SLOW_CHOICES = [5, 10, 30, 60];

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function left(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export function renderMessage(m, tools = null) {
  const li = document.createElement("li");
  li.dataset.id = m.id;
  li.dataset.author = m.author;
  const when = el("span", { className: "when", textContent: clock(m.created_at) });
  const who = el("span", { className: "who", textContent: m.author });
  const text = el("span", { className: "text", textContent: m.text }); // never HTML
  li.append(when, who, text);
  if (typeof tools === "function") li.append(tools(m)); // not Array.map's index
  return li;
}

// History of a room between two times (Unix s), oldest first, paging back with `before`.
// Deleted and cleared messages are not in it (the server leaves them out).
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
    this.root = root;
    this.list = root.querySelector("ol");
    this.form = root.querySelector("form");
    this.input = root.querySelector("form input");
    this.sendButton = root.querySelector("form button");
    this.error = root.querySelector(".error");
    this.status = root.querySelector(".chat-status");
    this.seen = new Set();
    this.messages = new Map(); // id → message, for re-rendering when controls appear
    // text -> epoch ms: when posted here / when it arrived here (the tests time the
    // round trip from one page's post to another page's arrival)
    this.sent = new Map();
    this.arrivals = new Map();
    this.nonce = 0;
    this.identity = null;
    this.canModerate = false;
    this.restriction = null; // {kind, until} of this page's own identity
    this.slowModeS = 0;
    this.waitUntil = 0; // epoch ms: slow mode, may post again
    this.presence = { watching: 0, chatting: 0 };
    this.restricted = new Map(); // moderators: identity → {kind, until}
    this.watching = null;
    this.onPresence = null;
    this.build();
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.post(); });
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  build() {
    this.presenceLine = el("p", { className: "muted chat-presence", hidden: true });
    this.presenceLine.setAttribute("aria-live", "off");
    this.status.after(this.presenceLine);
    this.banner = el("p", { className: "banner", hidden: true });
    this.banner.setAttribute("role", "status");
    this.slowLine = el("p", { className: "muted chat-slow", hidden: true });
    this.slowLine.setAttribute("aria-live", "polite");
    this.form.before(this.banner, this.slowLine);
    // moderator tools (hidden until the hello says the token may moderate)
    this.slowToggle = el("input", { type: "checkbox", id: `${this.root.id}-slow` });
    this.slowSeconds = el("select", { id: `${this.root.id}-slow-s` },
      ...SLOW_CHOICES.map((s) => el("option", { value: String(s), textContent: `${s} s` })));
    this.slowSeconds.value = "10";
    this.slowSeconds.setAttribute("aria-label", "Slow mode interval");
    const slowLabel = el("label", { className: "inline", htmlFor: this.slowToggle.id },
      this.slowToggle, " Slow mode");
    const clear = el("button", { type: "button", className: "secondary mini", textContent: "Clear chat" });
    this.restrictedList = el("ul", { className: "restricted" });
    this.log = el("ol", { className: "modlog" });
    const logBox = el("details", {}, el("summary", { textContent: "Moderation log" }), this.log);
    logBox.addEventListener("toggle", () => { if (logBox.open) this.loadLog(); });
    this.logBox = logBox;
    this.tools = el("div", { className: "chat-tools", hidden: true },
      el("div", { className: "row" }, slowLabel, this.slowSeconds, clear),
      this.restrictedList, logBox);
    this.tools.setAttribute("aria-label", "moderation");
    this.presenceLine.after(this.tools);
    const setSlow = () => this.moderate("slow_mode",
      { seconds: this.slowToggle.checked ? Number(this.slowSeconds.value) : 0 });
    this.slowToggle.addEventListener("change", setSlow);
    this.slowSeconds.addEventListener("change", () => { if (this.slowToggle.checked) setSlow(); });
    clear.addEventListener("click", () => {
      if (confirm("Clear the chat for everyone?")) this.moderate("clear", {});
    });
  }

  // per-message controls for moderators (not on one's own messages)
  controls(m) {
    const box = el("span", { className: "tools" });
    if (!this.canModerate || m.author === this.identity) return box;
    const button = (label, title, action, args) => {
      const b = el("button", { type: "button", className: "secondary mini", textContent: label });
      b.setAttribute("aria-label", `${title} (${m.author}: ${m.text.slice(0, 40)})`);
      b.dataset.action = action;
      b.addEventListener("click", () => this.moderate(action, args));
      return b;
    };
    box.append(
      button("Delete", "Delete message", "delete", { message_id: m.id }),
      button("Timeout 10 min", `Time out ${m.author} for 10 minutes`, "timeout",
        { message_id: m.id, seconds: TIMEOUT_S }),
      button("Ban", `Ban ${m.author}`, "ban", { message_id: m.id }),
    );
    return box;
  }

  add(m) {
    if (this.seen.has(m.id)) return;
    this.seen.add(m.id);
    this.messages.set(m.id, m);
    const atBottom = this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 4;
    this.list.append(renderMessage(m, (x) => this.controls(x)));
    if (atBottom) this.list.scrollTop = this.list.scrollHeight;
  }

  remove(ids) {
    for (const id of ids) {
      this.messages.delete(id);
      const li = this.list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
      if (li) li.remove();
    }
  }

  rerender() {
    this.list.replaceChildren(...[...this.messages.values()].map(
      (m) => renderMessage(m, (x) => this.controls(x))));
    this.list.scrollTop = this.list.scrollHeight;
  }

  async start(token) {
    this.token = token;
    this.closed = false;
    try {
      for (const m of await history(this.room, 0, Infinity, 1)) this.add(m);
    } catch (err) {
      this.fail(`Chat history unavailable: ${err.message}`);
    }
    this.connect();
  }

  // Another room or token (studio): forget this one's messages and reconnect.
  restart(room, token) {
    this.close();
    this.room = room;
    this.seen.clear();
    this.messages.clear();
    this.list.replaceChildren();
    this.start(token);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }

  // An HLS watch page says so on its chat socket: presence counts it as watching.
  setWatching(transport) {
    this.watching = transport;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "watch", transport }));
    }
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/rooms/${encodeURIComponent(this.room)}/ws`);
    this.ws = ws;
    ws.onopen = () => {
      if (this.token) ws.send(JSON.stringify({ type: "auth", token: this.token }));
      if (this.watching) ws.send(JSON.stringify({ type: "watch", transport: this.watching }));
    };
    ws.onmessage = (e) => this.frame(JSON.parse(e.data));
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.input.disabled = true;
      if (this.closed) return;
      this.status.textContent = "chat disconnected, reconnecting…";
      setTimeout(() => this.connect(), 2000);
    };
  }

  frame(f) {
    if (f.type === "hello") {
      this.canPost = f.can_post;
      this.input.disabled = !f.can_post;
      this.input.maxLength = f.max_chars;
      this.input.placeholder = f.can_post ? "Say something…" : "Read-only: no chat token";
      const role = f.role && f.role !== "chatter" && f.role !== "reader" ? ` as ${f.role}` : "";
      this.status.textContent = f.can_post ? `chat connected${role}` : "chat connected (read-only)";
      this.identity = f.identity ?? null;
      const could = this.canModerate;
      this.canModerate = Boolean(f.can_moderate);
      this.tools.hidden = !this.canModerate;
      if (could !== this.canModerate) this.rerender();
      this.setRestriction(f.restriction);
      this.setSlowMode(f.slow_mode_s || 0);
      if (f.presence) this.setPresence(f.presence);
      if (this.canModerate) this.loadState();
    } else if (f.type === "message") {
      this.arrivals.set(f.message.text, epochMs());
      this.add(f.message);
    } else if (f.type === "ack") {
      this.fail("");
      if (this.slowModeS && !this.canModerate) this.waitUntil = epochMs() + this.slowModeS * 1000;
      this.tick();
    } else if (f.type === "deleted") {
      this.remove(f.ids);
      if (this.canModerate) this.refreshLog();
    } else if (f.type === "cleared") {
      const before = BigInt(f.before);
      this.remove([...this.messages.keys()].filter((id) => BigInt(id) <= before));
      if (this.canModerate) this.refreshLog();
    } else if (f.type === "restriction") {
      if (f.identity === this.identity) this.setRestriction(f.kind ? f : null);
      if (f.kind) this.restricted.set(f.identity, f); else this.restricted.delete(f.identity);
      this.renderRestricted();
      if (this.canModerate) this.refreshLog();
    } else if (f.type === "slow_mode") {
      this.setSlowMode(f.seconds);
      if (this.canModerate) this.refreshLog();
    } else if (f.type === "presence") {
      this.setPresence(f);
    } else if (f.type === "moderated") {
      const e = f.entry;
      this.fail("");
      this.status.textContent = {
        delete: `deleted a message of ${e.target}`,
        timeout: `timed out ${e.target} for ${e.detail.seconds} s`,
        ban: `banned ${e.target}`,
        unban: `lifted the ${e.detail.lifted} of ${e.target}`,
        slow_mode: e.detail.seconds ? `slow mode on (${e.detail.seconds} s)` : "slow mode off",
        clear: "chat cleared",
      }[e.action] || e.action;
    } else if (f.type === "error") {
      if (f.code === "timed_out" || f.code === "banned") {
        this.setRestriction({ kind: f.code === "banned" ? "ban" : "timeout", until: f.until });
      }
      if (f.code === "slow_mode") this.waitUntil = epochMs() + f.retry_after * 1000;
      const why = { unauthorized: "Token rejected for chat", rate_limited: "Slow down",
        text_too_long: "Message too long", timed_out: "Not sent", banned: "Not sent",
        slow_mode: "Not sent",
        not_moderator: "Not allowed", target_is_broadcaster: "Not allowed",
        target_is_moderator: "Not allowed" }[f.code] || f.code;
      this.fail(`${why}: ${f.detail}`);
      if (f.code === "unauthorized") this.input.disabled = true;
      this.tick();
    }
  }

  setRestriction(r) {
    this.restriction = r && r.kind ? { kind: r.kind, until: r.until } : null;
    this.tick();
  }

  setSlowMode(seconds) {
    this.slowModeS = seconds;
    this.slowToggle.checked = seconds > 0;
    if (seconds > 0 && SLOW_CHOICES.includes(seconds)) this.slowSeconds.value = String(seconds);
    if (!seconds) this.waitUntil = 0;
    this.tick();
  }

  setPresence(p) {
    this.presence = { watching: p.watching, chatting: p.chatting };
    this.presenceLine.textContent = `${p.watching} watching · ${p.chatting} in chat`;
    this.presenceLine.hidden = false;
    if (this.onPresence) this.onPresence(this.presence);
  }

  // once a second: the banner's countdown, the slow-mode wait
  tick() {
    const now = epochMs();
    const r = this.restriction;
    if (r && r.kind === "timeout" && r.until && r.until * 1000 <= now) this.restriction = null;
    const held = this.restriction;
    if (held) {
      this.banner.textContent = held.kind === "ban"
        ? "You are banned from this chat."
        : `You are timed out until ${clock(held.until)} (${left(held.until - now / 1000)} left).`;
    }
    this.banner.hidden = !held;
    const wait = (this.waitUntil - now) / 1000;
    if (this.slowModeS && !this.canModerate) {
      this.slowLine.textContent = wait > 0
        ? `Slow mode: you can post again in ${Math.ceil(wait)} s.`
        : `Slow mode: one message every ${this.slowModeS} s.`;
    } else if (this.slowModeS) {
      this.slowLine.textContent = `Slow mode is on (${this.slowModeS} s); moderators are exempt.`;
    }
    this.slowLine.hidden = !this.slowModeS;
    this.sendButton.disabled = wait > 0;
  }

  post() {
    const text = this.input.value.trim();
    if (!text) return;
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this.fail("Chat is not connected yet");
      return;
    }
    if (this.waitUntil > epochMs()) return; // slow mode: the line above says how long
    const nonce = `n${++this.nonce}`;
    this.sent.set(text, epochMs());
    this.ws.send(JSON.stringify({ type: "post", text, nonce }));
    this.input.value = "";
  }

  moderate(action, args) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this.fail("Chat is not connected yet");
      return;
    }
    const nonce = `m${++this.nonce}`;
    this.ws.send(JSON.stringify({ type: "moderate", action, nonce, ...args }));
  }

  async api(path) {
    const resp = await fetch(`/rooms/${encodeURIComponent(this.room)}/moderation${path}`, {
      headers: { authorization: `Bearer ${this.token}`, accept: "application/json" },
    });
    if (!resp.ok) throw await failure(resp);
    return resp.json();
  }

  // moderators: who is restricted now (with Unban buttons)
  async loadState() {
    try {
      const state = await this.api("");
      this.restricted = new Map(state.restrictions.map((r) => [r.identity, r]));
      this.renderRestricted();
    } catch (err) {
      this.fail(`Moderation state unavailable: ${err.message}`);
    }
  }

  renderRestricted() {
    const now = Date.now() / 1000;
    const items = [...this.restricted.values()]
      .filter((r) => r.kind === "ban" || (r.until && r.until > now))
      .map((r) => {
        const unban = el("button", { type: "button", className: "secondary mini", textContent: "Unban" });
        unban.setAttribute("aria-label", `Lift the ${r.kind} of ${r.identity}`);
        unban.addEventListener("click", () => this.moderate("unban", { target: r.identity }));
        const what = r.kind === "ban" ? "banned" : `timed out until ${clock(r.until)}`;
        return el("li", {}, el("span", { textContent: `${r.identity}: ${what} ` }), unban);
      });
    this.restrictedList.replaceChildren(...items);
  }

  refreshLog() {
    if (this.logBox.open) this.loadLog();
  }

  async loadLog() {
    try {
      const page = await this.api("/log?limit=20");
      this.log.replaceChildren(...page.entries.map((e) => {
        const what = e.action === "timeout" ? `timeout ${e.detail.seconds} s`
          : e.action === "slow_mode" ? `slow mode ${e.detail.seconds} s` : e.action;
        const target = e.target ? ` → ${e.target}` : "";
        return el("li", { textContent: `${clock(e.created_at)} ${e.actor}: ${what}${target}` });
      }));
    } catch (err) {
      this.fail(`Moderation log unavailable: ${err.message}`);
    }
  }

  fail(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }
}
