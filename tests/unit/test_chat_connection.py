"""ChatConnection: what each frame of a chat WebSocket makes it send and do, with no
socket, no service and the clock passed in."""

from __future__ import annotations

from tchat.auth import Grant, TokenError
from tchat.chat.connection import (
    CLOSE_TOKEN_EXPIRED,
    ArmExpiry,
    ChatConnection,
    Close,
    PostMessage,
    Rejected,
    RunModeration,
    SendFrame,
    SendHello,
    WatchHls,
)

GOOD = Grant(room="r", role="chat", identity="ann", expires_at=1000.0)


def verify(token: str) -> Grant:
    if token != "good":
        raise TokenError("bad signature")
    return GOOD


def test_a_reader_then_an_auth_frame_then_posts() -> None:
    conn = ChatConnection(verify, max_chars=10)
    assert conn.open() == []  # no token: a reader; the hello follows the join
    post = '{"type":"post","text":"hi","nonce":"n1"}'
    refused = conn.receive(post, now=1.0)
    assert refused[0] == Rejected("unauthorized")
    assert isinstance(refused[1], SendFrame) and refused[1].frame["nonce"] == "n1"
    assert conn.receive('{"type":"auth","token":"good"}', 1.0) == [ArmExpiry(1000.0), SendHello()]
    assert conn.receive(post, 2.0) == [PostMessage(GOOD, "hi", "n1")]
    assert conn.receive('{"type":"ping"}', 2.0) == [SendFrame({"type": "pong"})]
    bad_auth = conn.receive('{"type":"auth","token":"forged"}', 3.0)
    assert bad_auth[0] == Rejected("unauthorized")
    assert conn.grant is GOOD  # a failed auth keeps the grant it had


def test_a_bad_query_token_leaves_a_reader_with_an_error() -> None:
    conn = ChatConnection(verify, max_chars=10, token="forged")
    (step,) = conn.open()
    assert isinstance(step, SendFrame) and step.frame["code"] == "unauthorized"
    assert conn.grant is None
    assert ChatConnection(verify, 10, token="good").open() == [ArmExpiry(1000.0)]


def test_an_expired_token_closes_the_socket_at_its_next_post() -> None:
    conn = ChatConnection(verify, max_chars=10, token="good")
    conn.open()
    steps = conn.receive('{"type":"post","text":"late","nonce":"n"}', now=1000.0)
    assert steps[0] == Rejected("token_expired") and steps[-1] == Close(
        CLOSE_TOKEN_EXPIRED, "token expired"
    )
    assert isinstance(steps[1], SendFrame) and steps[1].frame["nonce"] == "n"
    assert conn.closed


def test_bad_frames_moderation_and_watching() -> None:
    conn = ChatConnection(verify, max_chars=10, token="good")
    conn.open()
    (rejected, error) = conn.receive("nope", 1.0)
    assert rejected == Rejected("malformed_json") and isinstance(error, SendFrame)
    unknown = conn.receive('{"type":"moderate","action":"nuke","args":{},"nonce":"m"}', 1.0)
    assert unknown[0] == Rejected("unknown_action")
    assert isinstance(unknown[1], SendFrame) and unknown[1].frame["nonce"] == "m"
    bad_args = conn.receive('{"type":"moderate","action":"delete","nonce":"m1"}', 1.0)
    assert bad_args[0] == Rejected("bad_message_id")  # checked here, before any I/O
    (run,) = conn.receive('{"type":"moderate","action":"clear","nonce":"m2"}', 1.0)
    assert isinstance(run, RunModeration) and run.grant is GOOD and run.nonce == "m2"
    assert conn.receive('{"type":"watch","transport":"hls"}', 1.0) == [WatchHls()]
    assert conn.receive('{"type":"watch","transport":"hls"}', 1.0) == []  # counted once
    assert conn.watching
