"""Who may end a WHIP/WHEP session: only the token that created it (issue 13 item 9),
with one SFU worker in the server and with a cluster of instance processes.

Real viewers (ICE, DTLS, SRTP) watch a real publish; another valid token of the same
room gets 403 on DELETE and on PUT …/layer, and the viewer keeps receiving."""

from __future__ import annotations

import httpx
import pytest

from tchat.auth import issue_token
from tchat.perf.sfu_load import SyntheticPublisher, whep_join
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity

from .sfu_helpers import SECRET, wait_for


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def received(peer: ClientPeer) -> int:
    return sum(s.received for s in peer.stats.streams.values())


@pytest.mark.parametrize("instances", [1, 2])
async def test_sessions_are_ended_only_by_the_token_that_created_them(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
    instances: int,
) -> None:
    server = server_factory(NUM_SFU_INSTANCES=str(instances), SFU_RECORD="false")
    room = f"owned-{instances}"
    ident = Identity.create()
    alice_token = issue_token(SECRET, room, "viewer", "alice")
    bob_token = issue_token(SECRET, room, "viewer", "bob")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(ident, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher", "studio"))
        alice, bob = ClientPeer(ident), ClientPeer(ident)
        await alice.open()
        await bob.open()
        alice_url = await whep_join(client, room, alice_token, alice, "low", 20)
        bob_url = await whep_join(client, room, bob_token, bob, "low", 20)
        await wait_for(lambda: received(alice) > 50 and received(bob) > 50, 20)

        # Bob's token is valid for the room, but Alice's session is not his
        r = await client.delete(alice_url, headers=bearer(bob_token))
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        r = await client.put(f"{alice_url}/layer", json={"max_layer": 2}, headers=bearer(bob_token))
        assert r.status_code == 403, r.text
        # nor is it the publisher's (a publisher token also grants viewing)
        r = await client.delete(alice_url, headers=bearer(pub.token))
        assert r.status_code == 403, r.text
        before = received(alice)
        await wait_for(lambda: received(alice) > before + 50, 20)  # still watching

        # each ends their own
        assert (await client.delete(alice_url, headers=bearer(alice_token))).status_code == 200
        assert (await client.delete(alice_url, headers=bearer(alice_token))).status_code == 404
        r = await client.put(f"{bob_url}/layer", json={"max_layer": 1}, headers=bearer(bob_token))
        assert r.status_code == 200, r.text

        # a second publisher token of the room cannot end the publish either
        other_pub = issue_token(SECRET, room, "publisher", "intruder")
        r = await client.delete(pub.location, headers=bearer(other_pub))
        assert r.status_code == 403, r.text
        assert (await client.delete(pub.location, headers=bearer(pub.token))).status_code == 200
        pub.location = ""
        await pub.stop(client)
        alice.close()
        bob.close()
