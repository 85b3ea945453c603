"""The HTTP surface as an outside client sees it: a valid, complete OpenAPI document
(checked by openapi-spec-validator, library and CLI), one error shape, one 401/403
rule, ETag and Link headers on WHIP/WHEP answers, and session URLs that only the
token that created them can end."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from tchat.app import create_app
from tchat.auth import issue_token
from tchat.config import load_settings
from tchat.sfu.worker import SessionError

SECRET = "surface-secret-0123456789abcdef0123"
ANSWER = "v=0\r\na=ice-ufrag:abcd1234\r\n"


class FakeSfu:
    """The routes' SFU backend: sessions by id, what was ended and capped."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[str, str]] = {}  # id → (room, role)
        self.ended: list[str] = []
        self.layers: list[tuple[str, int]] = []

    async def publish(
        self, room: str, offer: str, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        sid = f"pub{len(self.sessions)}"
        self.sessions[sid] = (room, "publisher")
        return sid, ANSWER

    async def view(
        self, room: str, offer: str, max_layer: int, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        sid = f"view{len(self.sessions)}"
        self.sessions[sid] = (room, "viewer")
        return sid, ANSWER

    async def end(self, room: str, session: str, role: str) -> None:
        if self.sessions.pop(session, None) != (room, role):
            raise SessionError(404, f"no {role} session {session!r}")
        self.ended.append(session)

    async def set_layer(self, room: str, session: str, max_layer: int) -> None:
        if self.sessions.get(session) != (room, "viewer"):
            raise SessionError(404, "no such session")
        self.layers.append((session, max_layer))

    async def stats(self, viewers: bool) -> dict[str, object]:
        return {}


def make_app(tmp_path: Path, **env: str) -> tuple[FastAPI, FakeSfu]:
    settings = load_settings(TCHAT_SECRET=SECRET, TCHAT_DATA_DIR=str(tmp_path), **env)
    app = create_app(settings)
    sfu = FakeSfu()
    # what the lifespan sets; the routes here need no more
    app.state.services.token_secret = SECRET
    app.state.services.sfu_backend = sfu
    return app, sfu


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)),
        base_url="http://127.0.0.1:8080",
    )


def bearer(room: str, role: str, **kw: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(SECRET, room, role, **kw)}"}


SDP = {"content-type": "application/sdp"}


# -- OpenAPI ------------------------------------------------------------------------
async def test_openapi_document_validates_and_is_complete(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns "Duplicate Operation ID"
        async with client(app) as c:
            r = await c.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    validate(spec)
    ops = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids)), ids
    for path in ("/whip/{room}", "/whep/{room}"):
        post = spec["paths"][path]["post"]
        assert list(post["requestBody"]["content"]) == ["application/sdp"]
        created = post["responses"]["201"]
        assert list(created["content"]) == ["application/sdp"]
        assert {"Location", "ETag", "Link"} <= set(created["headers"])
        assert post["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/rooms/{room}/ws" in spec["paths"] and "/metrics" in spec["paths"]
    # no FastAPI 422 left: validation errors are 400/415 with the error body
    assert not [(p, m) for p, m, op in ops if "422" in op["responses"]]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, op in ops:
        for status, resp in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = resp["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method)


def test_openapi_spec_validator_command_accepts_the_document(tmp_path: Path) -> None:
    """The validator's own command line, as a user would run it on /openapi.json."""
    app, _ = make_app(tmp_path)
    doc = tmp_path / "openapi.json"
    doc.write_text(json.dumps(app.openapi()))
    cli = Path(sys.executable).with_name("openapi-spec-validator")
    run = subprocess.run([str(cli), str(doc)], capture_output=True, text=True)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout + run.stderr


# -- errors ------------------------------------------------------------------------
async def test_validation_errors_have_the_error_shape(tmp_path: Path) -> None:
    app, sfu = make_app(tmp_path)
    async with client(app) as c:
        auth = bearer("r", "viewer")
        r = await c.post("/whep/r", content="v=0", headers={**auth, **SDP})
        loc = r.headers["location"]
        r = await c.put(f"{loc}/layer", json={"max_layer": 7}, headers=auth)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
        assert "max_layer" in r.json()["detail"]
        r = await c.put(
            f"{loc}/layer", content=b"{", headers={**auth, "content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = await c.post("/rooms/r/messages", data={"text": "hi"}, headers=bearer("r", "chat"))
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type", r.text
        r = await c.get("/rooms/r/messages", params={"limit": 0})
        assert r.status_code == 400 and set(r.json()) == {"error", "detail"}
        r = await c.put(loc, headers=auth)  # (PATCH is taken since ICE restarts)
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
        assert "DELETE" in r.headers["allow"] and "PATCH" in r.headers["allow"]
        r = await c.get("/no/such/path")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert sfu.layers == []


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("POST", "/whip/r", "publisher"),
        ("POST", "/whep/r", "viewer"),
        ("POST", "/rooms/r/messages", "chat"),
    ],
)
async def test_one_rule_for_401_and_403(tmp_path: Path, method: str, path: str, role: str) -> None:
    """401: no valid token (with a Bearer challenge); 403: a valid token without the right."""
    app, _ = make_app(tmp_path)
    body = {"json": {"text": "hi"}} if "messages" in path else {"content": "v=0"}
    ctype = {} if "messages" in path else SDP
    expired = issue_token(SECRET, "r", role, ttl_s=1, now=1000.0)
    weaker = {"publisher": "viewer", "viewer": "viewer", "chat": "viewer"}[role]
    cases: list[tuple[dict[str, str], int]] = [
        ({}, 401),
        ({"authorization": "Bearer not-a-jwt"}, 401),
        ({"authorization": f"Bearer {expired}"}, 401),
        (
            bearer("r", role, ttl_s=60)
            | {"authorization": "Bearer " + issue_token("x" * 32, "r", role)},
            401,
        ),
        (bearer("other-room", role), 403),
    ]
    if weaker != role:
        cases.append((bearer("r", weaker), 403))
    async with client(app) as c:
        for headers, status in cases:
            r = await c.request(method, path, headers={**headers, **ctype}, **body)  # type: ignore[arg-type]
            assert r.status_code == status, (headers, r.text)
            assert r.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
            if status == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")


# -- WHIP/WHEP headers and session ownership ------------------------------------------
async def test_created_sessions_carry_etag_and_ice_server_links(tmp_path: Path) -> None:
    app, _ = make_app(
        tmp_path,
        ICE_SERVERS="stun:stun.example.net, turn:turn.example.net?transport=udp",
        ICE_USERNAME="user",
        ICE_CREDENTIAL="pass",
    )
    async with client(app) as c:
        r = await c.post("/whip/r", content="v=0", headers={**bearer("r", "publisher"), **SDP})
        assert r.status_code == 201 and r.headers["content-type"] == "application/sdp"
        assert r.headers["etag"].startswith('"') and r.headers["etag"].endswith('"')
        assert r.headers.get_list("link") == [
            '<stun:stun.example.net>; rel="ice-server"',
            '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; '
            'credential="pass"; credential-type="password"',
        ]
        other = await c.post("/whep/r", content="v=0", headers={**bearer("r", "viewer"), **SDP})
        assert other.headers["etag"] != r.headers["etag"]
    app, _ = make_app(tmp_path)  # no ICE servers configured: no Link
    async with client(app) as c:
        r = await c.post("/whep/r", content="v=0", headers={**bearer("r", "viewer"), **SDP})
        assert "link" not in r.headers and "etag" in r.headers


@pytest.mark.parametrize(("kind", "role"), [("whip", "publisher"), ("whep", "viewer")])
async def test_only_the_creating_token_ends_a_session(tmp_path: Path, kind: str, role: str) -> None:
    app, sfu = make_app(tmp_path)
    mine, theirs = bearer("r", role, identity="a"), bearer("r", role, identity="b")
    async with client(app) as c:
        r = await c.post(f"/{kind}/r", content="v=0", headers={**mine, **SDP})
        loc = r.headers["location"]
        session, tag = loc.rsplit("/", 1)[1].rsplit(".", 1)
        assert loc == f"/{kind}/r/{session}.{tag}" and len(tag) == 16
        for headers, target in [
            (theirs, loc),  # another valid token of the room
            (bearer("r", "publisher"), loc),  # even one with more rights
            (mine, f"/{kind}/r/{session}.{'A' * 16}"),  # a forged tag
        ]:
            r = await c.delete(target, headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
            if kind == "whep":
                r = await c.put(f"{target}/layer", json={"max_layer": 0}, headers=headers)
                assert r.status_code == 403
        assert sfu.ended == [] and sfu.layers == []
        assert (await c.delete(f"/{kind}/r/{session}", headers=mine)).status_code == 404
        if kind == "whep":
            r = await c.put(f"{loc}/layer", json={"max_layer": 1}, headers=mine)
            assert r.status_code == 200 and r.json() == {"max_layer": 1}
        assert (await c.delete(loc, headers=mine)).status_code == 200
        assert (await c.delete(loc, headers=mine)).status_code == 404
    assert sfu.ended == [session]
