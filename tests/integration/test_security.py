"""Issue 14 against a real `tchat serve`: bodies capped and refused before they are read,
room names checked at every entry, half-open WHEP sessions limited, local-only routes
not served to the public listener, tokens re-checked, HLS behind the viewer gate."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
import websockets

from tchat.auth import issue_token
from tchat.perf.server import free_port
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.webrtc_peer import ClientPeer, Identity

from .sfu_helpers import SDP, SECRET

DEADLINE_S = 15.0  # generous: the box is shared; an unread body never answers at all


async def raw_exchange(port: int, head: str, parts: list[bytes]) -> tuple[int, bytes]:
    """Send a request head and some body bytes, then wait for the answer without sending
    the rest: (status, response bytes). A server that reads the whole body first never
    answers, and this raises TimeoutError."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"".join(parts))
        await writer.drain()
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        lines = head_bytes.decode("latin-1").split("\r\n")
        fields = dict(h.lower().partition(":")[::2] for h in lines[1:] if h)
        length = int(fields.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), DEADLINE_S)
        return int(lines[0].split()[1]), body
    finally:
        writer.close()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_bodies_capped_and_refused_before_they_are_read(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.3: a 100 MB declared body, or a chunked one that never ends, gets its
    401/413 at once; the server does not wait to read it (before: it read it all)."""
    server = server_factory()
    port = server.port
    token = issue_token(SECRET, "r", "chat")
    post = "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n{extra}"
    # declared too large: 413 from the Content-Length alone, whatever the route
    for path in ("/rooms/r/messages", "/whip/r", "/dev/token", "/no/such/route"):
        head = post.format(path=path, ctype="application/json", extra="")
        status, body = await raw_exchange(
            port, head + "Content-Length: 100000000\r\n\r\n", [b"x" * 1024]
        )
        assert status == 413 and b"payload_too_large" in body, (path, status, body)
    # chunked, no token: 401 without reading the body (it never ends)
    chunked = "Transfer-Encoding: chunked\r\n"
    for path, ctype in (("/rooms/r/messages", "application/json"), ("/whip/r", SDP)):
        head = post.format(path=path, ctype=ctype, extra=chunked) + "\r\n"
        status, body = await raw_exchange(port, head, [chunk(b"{" + b" " * 1000)])
        assert status == 401, (path, status, body)
    head = "PUT /whep/r/s/layer HTTP/1.1\r\nHost: x\r\n" + chunked + "\r\n"
    status, _ = await raw_exchange(port, head, [chunk(b"{" + b" " * 1000)])
    assert status == 401
    # chunked past the route's cap, with a valid token: 413 once the cap is passed
    bearer = f"Authorization: Bearer {token}\r\n"
    cases = [
        (port, "/rooms/r/messages", "application/json", 8 * 1024),  # chat: a few KiB
        (port, "/whip/r", SDP, 70 * 1024),  # SDP: 64 KiB
        (server.admin_port, "/dev/token", "application/json", 70 * 1024),  # others: 64 KiB
    ]
    for to, path, ctype, size in cases:
        head = post.format(path=path, ctype=ctype, extra=chunked + bearer) + "\r\n"
        whip_token = issue_token(SECRET, "r", "publisher")
        if path == "/whip/r":
            head = head.replace(token, whip_token)
        parts = [chunk(b" " * 1024) for _ in range(size // 1024)]
        status, body = await raw_exchange(to, head, parts)
        assert status == 413 and b"payload_too_large" in body, (path, status, body)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        # still answering, and a post of normal size works
        r = await client.post(
            "/rooms/r/messages", json={"text": "hi"}, headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 201, r.text
        bad = await client.post(
            "/rooms/r/messages", json={"txt": "hi"}, headers={"authorization": f"Bearer {token}"}
        )
        # validated after the capped read, answered like every validation error (400)
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request", bad.text


async def test_room_name_checked_at_every_entry(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.12: `a\\nb` (with a wildcard token that matches it) is a clean 400 at WHIP,
    WHEP, DELETE, layer and recordings, and leaves nothing behind: the room's neighbours
    and a valid room still work (before: a session was made, the Location header failed,
    and the orphan blocked the room)."""
    server = server_factory()
    star_pub = {"authorization": f"Bearer {issue_token(SECRET, '*', 'publisher')}"}
    offer = ClientPeer(Identity.create()).offer(rids=["h"], publish=True)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for room in ("a\nb", "a\r\nX-Injected: 1", "a b", "-x", "x" * 65):
            q = quote(room, safe="")
            for method, path in (
                ("POST", f"/whip/{q}"),
                ("POST", f"/whep/{q}"),
                ("DELETE", f"/whip/{q}/abc"),
                ("PUT", f"/whep/{q}/abc/layer"),
            ):
                r = await client.request(
                    method, path, content=offer, headers={**star_pub, "content-type": SDP}
                )
                assert r.status_code == 400, (room, method, path, r.status_code, r.text)
                assert r.json()["error"] == "bad_request" and "room" in r.json()["detail"]
            r = await client.get("/recordings", params={"room": room})
            assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
            r = await client.get(f"/rooms/{q}/messages")
            assert r.status_code in (400, 422), r.text
        stats = (await client.get("/sfu/stats")).json()
        assert stats["peers"] == 0 and stats["rooms"] == 0
        r = await client.post("/whip/a", content=offer, headers={**star_pub, "content-type": SDP})
        assert r.status_code == 201, r.text


async def _publish(client: httpx.AsyncClient, room: str) -> SyntheticPublisher:
    from tchat.perf.sfu_load import MEDIA_CACHE
    from tchat.perf.sfu_media import prepare

    pub = SyntheticPublisher(Identity.create(), prepare(MEDIA_CACHE), ["l"])
    await pub.start(client, room, issue_token(SECRET, room, "publisher"))
    return pub


async def test_chat_socket_closes_when_its_token_expires(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.8: the grant is re-checked after the handshake: at the token's expiry the
    socket closes with 4401 "token expired" (before: a post 3.5 s after expiry was acked)."""
    server = server_factory()
    token = issue_token(SECRET, "exp", "chat", ttl_s=3)
    url = server.url.replace("http://", "ws://") + f"/rooms/exp/ws?token={token}"
    async with websockets.connect(url) as ws:
        frames = [json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))]
        assert frames[0]["type"] == "hello" and frames[0]["can_post"] is True
        await ws.send(json.dumps({"type": "post", "text": "in time", "nonce": "a"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(DEADLINE_S):
                while True:
                    frames.append(json.loads(await ws.recv()))
                    if time.time() > jwt.decode(token, options={"verify_signature": False})["exp"]:
                        # past expiry: a post must not be acked
                        await ws.send(json.dumps({"type": "post", "text": "late", "nonce": "b"}))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert any(f["type"] == "ack" and f["nonce"] == "a" for f in frames)
    assert not any(f["type"] == "ack" and f["nonce"] == "b" for f in frames)


def test_databases_and_secret_are_private(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.8: the chat and recording databases (and their WAL files) are 0600, like
    the generated secret; the data directory 0700."""
    server = server_factory(TCHAT_SECRET="")
    data = Path(server.env["TCHAT_DATA_DIR"])
    token = issue_token((data / "secret").read_text().strip(), "p", "chat")
    r = httpx.post(
        f"{server.url}/rooms/p/messages",
        json={"text": "hi"},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    files = sorted(p.name for p in data.iterdir() if p.is_file())
    assert {"secret", "chat.sqlite3", "recordings.sqlite3"} <= set(files), files
    for name in files:
        mode = (data / name).stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{name} is {mode:o}"
    assert data.stat().st_mode & 0o077 == 0


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """A real nginx reverse proxy with the default `proxy_pass` (Host: 127.0.0.1:PORT, no
    forwarding headers) in front of a port; returns its URL."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(exe).exists():
        pytest.fail("nginx is not installed: run scripts/setup-system.sh")
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream: int) -> str:
        port = free_port()
        root = tmp_path / f"nginx-{port}"
        root.mkdir()
        (root / "nginx.conf").write_text(
            f"""
            worker_processes 1;
            pid {root}/nginx.pid;
            error_log {root}/error.log;
            events {{ worker_connections 64; }}
            http {{
              access_log off;
              client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
              fastcgi_temp_path {root}/f; uwsgi_temp_path {root}/u; scgi_temp_path {root}/s;
              server {{
                listen 127.0.0.1:{port};
                location / {{ proxy_pass http://127.0.0.1:{upstream}; }}
              }}
            }}
            """
        )
        proc = subprocess.Popen(
            [exe, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"]
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not proxy: {(root / 'error.log').read_text()[-1000:]}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_local_only_routes_not_served_through_a_reverse_proxy(server_factory, nginx) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.9: behind nginx's default proxy_pass (loopback peer, Host 127.0.0.1:PORT),
    /dev/token and /sfu/stats?viewers=true are refused; the admin listener, which a proxy
    never forwards to, still serves them to this host (before: both answered through the
    proxy)."""
    server = server_factory()
    proxied = nginx(server.port)
    body = {"room": "demo", "role": "chat"}
    assert httpx.get(proxied + "/sfu/stats", timeout=10).status_code == 200  # it proxies
    r = httpx.post(proxied + "/dev/token", json=body, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    r = httpx.get(proxied + "/sfu/stats", params={"viewers": "true"}, timeout=10)
    assert r.status_code == 403, r.text
    live = httpx.get(proxied + "/live", timeout=10).json()
    assert live["dev_token_url"] == server.admin_url + "/dev/token"
    r = httpx.post(live["dev_token_url"], json=body, timeout=10)
    assert r.status_code == 200 and r.json()["identity"].startswith("dev-"), r.text
    r = httpx.get(server.admin_url + "/sfu/stats", params={"viewers": "true"}, timeout=10)
    assert r.status_code == 200 and r.json()["viewers"] == []


async def test_half_open_sessions_limited_and_publishers_keep_a_share(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.4: WHEP offers that never connect are limited per token identity and per
    client address (429 with Retry-After), and viewers cannot take the publishers' share
    of SFU_MAX_PEERS (before: one viewer token made 759 half-open peers, and WHIP got 503).
    The client address is the X-Forwarded-For of a trusted proxy (here loopback, the
    default TCHAT_TRUSTED_PROXIES)."""
    server = server_factory(
        SFU_MAX_PEERS="12",
        SFU_MAX_CONNECTING_PER_ADDRESS="6",
        SFU_CONNECT_TIMEOUT="120s",  # nothing here connects; the box may be slow
    )
    offer = ClientPeer(Identity.create()).offer()
    pub_offer = ClientPeer(Identity.create()).offer(rids=["h"], publish=True)

    async def post(path: str, role: str, who: str, addr: str, body: str) -> httpx.Response:
        room = path.rsplit("/", 1)[1]
        headers = {
            "authorization": f"Bearer {issue_token(SECRET, room, role, who)}",
            "content-type": SDP,
            "x-forwarded-for": addr,
        }
        return await client.post(path, content=body, headers=headers)

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (
            await post("/whip/half", "publisher", "p", "10.0.0.1", pub_offer)
        ).status_code == 201
        for _ in range(4):  # SFU_MAX_CONNECTING_PER_IDENTITY defaults to 4
            assert (
                await post("/whep/half", "viewer", "alice", "10.0.0.1", offer)
            ).status_code == 201
        r = await post("/whep/half", "viewer", "alice", "10.0.0.9", offer)
        assert r.status_code == 429 and r.json()["error"] == "too_many_sessions", r.text
        assert "token" in r.json()["detail"] and int(r.headers["retry-after"]) > 0
        assert (await post("/whep/half", "viewer", "bob", "10.0.0.1", offer)).status_code == 201
        r = await post("/whep/half", "viewer", "carol", "10.0.0.1", offer)  # 6 from 10.0.0.1
        assert r.status_code == 429 and "address" in r.json()["detail"], r.text
        for i in range(5):  # fill the viewers' share: 11 of 12 sessions
            r = await post("/whep/half", "viewer", f"v{i}", f"10.0.1.{i}", offer)
            assert r.status_code == 201, r.text
        r = await post("/whep/half", "viewer", "dave", "10.0.2.1", offer)
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        r = await post("/whip/second", "publisher", "p2", "10.0.2.2", pub_offer)
        assert r.status_code == 201, r.text  # the publishers' reserve
        r = await post("/whip/third", "publisher", "p3", "10.0.2.3", pub_offer)
        assert r.status_code == 503, r.text
        assert (await client.get("/sfu/stats")).json()["peers"] == 12
