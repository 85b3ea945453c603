"""The cluster control API's request signatures (issue 14.10), with a fake clock."""

from __future__ import annotations

from tchat.sfu.cluster.control import MAX_SKEW_S, ControlVerifier, control_key, sign

KEY = control_key("unit-secret-0123456789abcdef-0123456789")


def test_signature_binds_method_target_body_and_time() -> None:
    now = [1000.0]
    v = ControlVerifier(KEY, clock=lambda: now[0])
    h = sign(KEY, "POST", "/view?x=1", b"{}", now[0])
    assert v.verify("POST", "/view?x=2", h, b"{}") == "bad signature"
    assert v.verify("PUT", "/view?x=1", h, b"{}") == "bad signature"
    assert v.verify("POST", "/view?x=1", h, b"{ }") == "bad signature"
    assert v.verify("POST", "/view?x=1", h, b"{}") is None
    assert v.verify("POST", "/view?x=1", h, b"{}") == "replayed request"
    assert v.verify("GET", "/stats", {}, b"") == "unsigned request"
    for skew in (-MAX_SKEW_S - 1, MAX_SKEW_S + 1):
        assert "stale" in str(
            v.verify("GET", "/stats", sign(KEY, "GET", "/stats", b"", now[0] + skew), b"")
        )


def test_replay_memory_is_bounded_by_the_window() -> None:
    now = [1000.0]
    v = ControlVerifier(KEY, clock=lambda: now[0])
    for _ in range(1000):
        now[0] += 0.1
        assert v.verify("GET", "/stats", sign(KEY, "GET", "/stats", b"", now[0]), b"") is None
    # only what a replay could still pass with (2 × the allowed skew) is remembered
    assert len(v._seen) <= 2 * MAX_SKEW_S / 0.1 + 1
