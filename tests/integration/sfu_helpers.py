"""Shared steps of the SFU integration tests: tokens and joining a generator viewer."""

from __future__ import annotations

import httpx

from tchat.auth import issue_token
from tchat.perf.webrtc_peer import ClientPeer

SECRET = "integration-secret-0123456789abcdef"
SDP = "application/sdp"


def auth(room: str, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(SECRET, room, role)}"}


async def join_viewer(
    client: httpx.AsyncClient, room: str, peer: ClientPeer, layer: str = "low"
) -> str:
    """Open the peer, WHEP it into `room` at `layer`, connect; returns the session URL."""
    await peer.open()
    resp = await client.post(
        f"/whep/{room}",
        params={"layer": layer},
        content=peer.offer(),
        headers={**auth(room, "viewer"), "content-type": SDP},
    )
    assert resp.status_code == 201, resp.text
    await peer.connect(resp.text)
    return str(resp.headers["location"])
