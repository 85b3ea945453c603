// Shared helpers of the tchat pages: tokens, WHIP/WHEP signalling, errors.

export const $ = (sel) => document.querySelector(sel);

export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

export class HttpError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds the server asked us to wait (429, 503), or null
  }
}

export async function failure(resp) {
  let code = "", detail = "";
  try {
    const body = await resp.json();
    code = body.error || "";
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch { detail = resp.statusText; }
  const wait = Number(resp.headers.get("retry-after"));
  return new HttpError(resp.status, code, detail, resp.headers.has("retry-after") && wait >= 0 ? wait : null);
}

// GET JSON; with a token (RECORDING_ACCESS=private needs one for recordings and /live).
export async function getJson(url, token = "") {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const resp = await fetch(url, { headers });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

// A token given in the URL fragment (#token=…; never sent to the server in logs).
export function tokenFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get("token") || "";
}

// A viewer/chat token: the fragment's, one remembered for the room, or one the server
// hands out in local development (POST /dev/token on its admin listener, whose URL
// /live gives); "" when none is available.
export async function viewerToken(room) {
  const key = `tchat:token:${room}`;
  const given = tokenFromHash() || sessionStorage.getItem(key);
  if (given) return given;
  try {
    const url = (await getJson("/live")).dev_token_url;
    if (!url) return "";
    const resp = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ room, role: "chat" }),
    });
    if (resp.ok) return (await resp.json()).token;
  } catch { /* offline server: the page says so elsewhere */ }
  return "";
}

export function rememberToken(room, token) {
  sessionStorage.setItem(`tchat:token:${room}`, token);
}

// Wait until ICE gathering completes: WHIP/WHEP here send one offer, no trickle.
export function gathered(pc, timeoutMs = 2000) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

// POST the offer to a WHIP/WHEP endpoint; returns the session URL. Throws HttpError.
export async function signal(url, pc, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const resp = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/sdp", authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  if (resp.status !== 201) throw await failure(resp);
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  return new URL(resp.headers.get("location"), location.href).href;
}

// ICE restart over the session URL (WHIP/WHEP PATCH, RFC 9725 §4.3), for a network path
// that broke (Wi-Fi → cellular): the browser's new ICE credentials out, the server's back,
// patched into the answer it gave. DTLS and the media go on in the same session.
export async function restartIce(pc, sessionUrl, token) {
  const offer = await pc.createOffer({ iceRestart: true });
  await pc.setLocalDescription(offer);
  const ice = (sdp) => [/a=ice-ufrag:(\S+)/.exec(sdp), /a=ice-pwd:(\S+)/.exec(sdp)].map((m) => m && m[1]);
  const [ufrag, pwd] = ice(offer.sdp);
  const resp = await fetch(sessionUrl, {
    method: "PATCH",
    headers: { "content-type": "application/trickle-ice-sdpfrag", "if-match": "*",
      authorization: `Bearer ${token}` },
    body: `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\n`,
  });
  if (resp.status !== 200) {
    await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
    throw await failure(resp);
  }
  const [ourUfrag, ourPwd] = ice(await resp.text());
  const sdp = pc.remoteDescription.sdp
    .replace(/a=ice-ufrag:\S+/g, `a=ice-ufrag:${ourUfrag}`)
    .replace(/a=ice-pwd:\S+/g, `a=ice-pwd:${ourPwd}`);
  await pc.setRemoteDescription({ type: "answer", sdp });
}

export function explain(err, room) {
  if (err instanceof HttpError) {
    // 401: no valid token (none, or malformed, expired…); 403: a valid one without the right
    if (err.status === 401 && err.message === "missing token") return "A token is needed: paste one below.";
    if (err.status === 401 || err.status === 403) return `Token rejected: ${err.message}`;
    if (err.status === 404) return `Room "${room}" is offline.`;
    if (err.status === 409) return `Room "${room}" is already live from another publisher.`;
    if (err.status === 429) return `Too many connections are starting from here: ${err.message}.`;
    if (err.status === 503) {
      const when = err.retryAfter === null ? "shortly" : `in ${err.retryAfter} s`;
      return `The server is busy: ${err.message}. Try again ${when}.`;
    }
    return `Error ${err.status}: ${err.message}`;
  }
  return String(err && err.message ? err.message : err);
}

export function kbps(bytes, seconds) {
  return seconds > 0 ? Math.round((bytes * 8) / seconds / 1000) : 0;
}

export function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

export function duration(seconds) {
  const s = Math.round(seconds || 0);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export function header(active) {
  const links = [["/", "Live & recordings"], ["/studio", "Go live"]];
  const nav = links.map(([href, text]) =>
    `<a href="${href}"${href === active ? ' aria-current="page"' : ""}>${text}</a>`).join("");
  document.querySelector("header").innerHTML =
    `<a class="brand" href="/">tchat</a><nav aria-label="main">${nav}</nav>`;
}
