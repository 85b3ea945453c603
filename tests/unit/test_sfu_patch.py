"""WHIP/WHEP PATCH (RFC 9725 §4.3) through the routes, over a real `SfuCore` without a
socket: ICE restart answered with new credentials and a new ETag, trickled candidates
accepted, If-Match checked, and the usual refusals (type, token, body, ended session)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tchat.auth import issue_token
from tchat.config import load_settings
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.services import Services, install
from tchat.sfu import api as sfu_api
from tchat.sfu import sdpfrag
from tchat.sfu.backend import LocalSfu
from tchat.sfu.core import SfuCore
from tchat.sfu.settings import SfuSettings
from tests.unit.fakes import Clock

SECRET = "patch-secret-0123456789abcdef01234567"
FRAG = {"content-type": sdpfrag.MEDIA_TYPE}


def _app(core: SfuCore) -> httpx.AsyncClient:
    settings = load_settings(TCHAT_SECRET=SECRET)
    app = FastAPI()
    sfu_api.mount(app, settings)
    install(app, Services(settings, token_secret=SECRET, sfu_backend=LocalSfu(core)))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")


def _auth(role: str, identity: str = "me") -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(SECRET, 'r', role, identity=identity)}"}


def _restart(ufrag: str) -> str:
    return f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{'p' * 24}\r\n"


async def test_patch_restarts_ice_or_takes_candidates() -> None:
    core = SfuCore(SfuSettings(), lambda data, addr: None, Clock())
    client = ClientPeer(Identity.create())
    async with _app(core) as c:
        offer = client.offer(rids=["h", "m", "l"], publish=True)
        made = await c.post(
            "/whip/r",
            content=offer,
            headers={**_auth("publisher"), "content-type": "application/sdp"},
        )
        assert made.status_code == 201, made.text
        url, etag = made.headers["location"], made.headers["etag"]
        (peer,) = core.peers.values()
        first_ufrag = peer.ice.local_ufrag
        mine = _auth("publisher")

        refusals = [
            ({**mine, "content-type": "application/sdp"}, _restart("abcd"), 415),
            ({**_auth("publisher", "other"), **FRAG}, _restart("abcd"), 403),
            ({**mine, **FRAG, "if-match": '"nope-0123456789abcdef"'}, _restart("abcd"), 412),
            ({**mine, **FRAG, "if-match": "W/" + etag}, _restart("abcd"), 412),
            ({**mine, **FRAG}, "not sdp\r\n", 400),
            ({**mine, **FRAG}, "a=ice-ufrag:abcd\r\n", 400),  # a restart without a pwd
        ]
        for headers, body, status in refusals:
            r = await c.patch(url, content=body, headers=headers)
            assert r.status_code == status, (headers, body, r.text)
            assert r.json()["error"] and peer.ice.local_ufrag == first_ufrag

        # trickle: the client's current ufrag with a candidate
        trickle = f"a=ice-ufrag:{client.ufrag}\r\na=candidate:1 1 udp 1 192.0.2.7 9 typ host\r\n"
        r = await c.patch(url, content=trickle, headers={**mine, **FRAG, "if-match": etag})
        assert r.status_code == 204 and peer.ice.local_ufrag == first_ufrag

        # restart: 200, our new credentials in a fragment, a new ETag
        r = await c.patch(url, content=_restart("n3wU"), headers={**mine, **FRAG, "if-match": etag})
        assert r.status_code == 200 and r.headers["content-type"] == sdpfrag.MEDIA_TYPE
        answer = sdpfrag.parse_fragment(r.text)
        assert answer.ufrag == peer.ice.local_ufrag != first_ufrag
        assert peer.ice.remote_ufrag == "n3wU" and r.headers["etag"] != etag
        # the old ETag names an ICE session that is gone; `*` restarts whatever is current
        stale = await c.patch(
            url, content=_restart("z9zz"), headers={**mine, **FRAG, "if-match": etag}
        )
        assert stale.status_code == 412 and peer.ice.remote_ufrag == "n3wU"
        again = await c.patch(
            url, content=_restart("z9zz"), headers={**mine, **FRAG, "if-match": "*"}
        )
        assert again.status_code == 200 and peer.ice.remote_ufrag == "z9zz"
        # the same restart asked again (its answer lost on the way): the same answer
        restarts = core.ice_restarts
        dup = await c.patch(url, content=_restart("z9zz"), headers={**mine, **FRAG})
        assert dup.status_code == 200 and dup.text == again.text
        assert core.ice_restarts == restarts
        # a late PATCH of a generation restarted since changes nothing
        late = await c.patch(url, content=_restart("n3wU"), headers={**mine, **FRAG})
        assert late.status_code == 412 and peer.ice.remote_ufrag == "z9zz"
        # If-Match may list tags (RFC 9110): one of them names the session
        listed = {**mine, **FRAG, "if-match": f'"x-0123456789abcdef", {again.headers["etag"]}'}
        r = await c.patch(
            url,
            content="a=ice-ufrag:z9zz\r\na=candidate:1 1 udp 1 192.0.2.7 9 typ host\r\n",
            headers=listed,
        )
        assert r.status_code == 204

        assert (await c.delete(url, headers=mine)).status_code == 200
        gone = await c.patch(url, content=_restart("y8yy"), headers={**mine, **FRAG})
        assert gone.status_code == 404
