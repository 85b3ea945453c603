import time

import pytest

from tchat.auth import TokenError, bearer, issue_token, verify_token

SECRET = "s" * 32


def test_round_trip_and_grants() -> None:
    token = issue_token(SECRET, "room1", "publisher", "alice")
    grant = verify_token(SECRET, token, "room1", "chat")
    assert grant.identity == "alice" and grant.role == "publisher"
    viewer = issue_token(SECRET, "room1", "viewer")
    with pytest.raises(TokenError, match="does not allow 'chat'"):
        verify_token(SECRET, viewer, "room1", "chat")


def test_wrong_room_secret_expiry_and_garbage() -> None:
    token = issue_token(SECRET, "room1", "chat")
    with pytest.raises(TokenError, match="room"):
        verify_token(SECRET, token, "room2", "chat")
    with pytest.raises(TokenError, match="invalid token"):
        verify_token("other" * 8, token, "room1", "chat")
    old = issue_token(SECRET, "room1", "chat", ttl_s=10, now=1000.0)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, old, "room1", "chat")
    with pytest.raises(TokenError, match="invalid"):
        verify_token(SECRET, "not.a.jwt", "room1", "chat")
    with pytest.raises(TokenError, match="missing"):
        verify_token(SECRET, None, "room1", "chat")


def test_bad_role_rejected() -> None:
    with pytest.raises(ValueError, match="role"):
        issue_token(SECRET, "r", "admin")


def test_bearer() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer(None) is None


def test_default_identities_are_unique() -> None:
    """Issue 14.8: rate limits go by identity; tokens made in one millisecond (the old
    `role-ms%1e6` default) must not share one."""
    now = time.time()
    subs = {
        verify_token(SECRET, issue_token(SECRET, "r", "chat", now=now), "r", "chat").identity
        for _ in range(2000)
    }
    assert len(subs) == 2000
