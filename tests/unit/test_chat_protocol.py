import pytest

from tchat.chat.cql import bucket_of
from tchat.chat.ids import IdGenerator, first_id_at, id_time_ms
from tchat.chat.protocol import Auth, Ping, Post, ProtocolError, RateLimiter, decode_frame


def code_of(data: str | bytes, max_chars: int = 10) -> str:
    with pytest.raises(ProtocolError) as err:
        decode_frame(data, max_chars)
    return err.value.code


def test_valid_frames() -> None:
    assert decode_frame('{"type":"post","text":"  hi  ","nonce":"n"}', 10) == Post("hi", "n")
    assert decode_frame(b'{"type":"auth","token":"t"}', 10) == Auth("t")
    assert decode_frame('{"type":"ping"}', 10) == Ping()
    assert decode_frame('{"type":"post","text":"a\\nb"}', 10) == Post("a\nb", None)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("nope", "malformed_json"),
        ('"str"', "malformed_frame"),
        ('{"type":1}', "unknown_type"),
        ('{"type":"post"}', "bad_text"),
        ('{"type":"post","text":""}', "empty_text"),
        ('{"type":"post","text":"12345678901"}', "text_too_long"),
        ('{"type":"post","text":"a\\u0000b"}', "control_character"),
        ('{"type":"post","text":"a\\u001bb"}', "control_character"),
        ('{"type":"post","text":"a\\ud800"}', "control_character"),
        ('{"type":"post","text":"ok","nonce":7}', "bad_nonce"),
        ('{"type":"auth","token":""}', "bad_token"),
        (b"\xc3\x28", "invalid_utf8"),
        ("x" * 20000, "frame_too_large"),
    ],
)
def test_rejections(data: str | bytes, code: str) -> None:
    assert code_of(data) == code


def test_length_counts_characters_not_bytes() -> None:
    assert decode_frame('{"type":"post","text":"ééééééééé😀"}', 10) == Post("ééééééééé😀", None)


def test_rate_limiter_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # per author
    assert limiter.retry_after("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] = 100.0
    assert sum(limiter.allow("a") for _ in range(10)) == 3  # never more than the burst


def test_rate_limiter_forgets_idle_authors() -> None:
    """Issue 14.2: a bucket idle for burst/rate seconds is full again and is forgotten
    (the old prune kept every bucket below the burst, i.e. all of them)."""
    now = [0.0]
    limiter = RateLimiter(rate=5.0, burst=10, clock=lambda: now[0])
    for i in range(5000):
        limiter.allow(f"author-{i}")
        now[0] += 0.0001  # 0.5 s in all: everyone still owes tokens
    assert len(limiter) == 5000
    now[0] += 2.0  # burst/rate: every bucket is full again
    assert limiter.allow("newcomer")
    assert len(limiter) == 1
    # an author who was forgotten gets exactly what a remembered full bucket holds
    assert sum(limiter.allow("author-1") for _ in range(20)) == 10


def test_rate_limiter_bounded_and_still_limits_active_authors() -> None:
    """More distinct authors than `max_keys` in one instant: the structure stays bounded
    (the oldest go first), and an author active among them is still limited."""
    now = [0.0]
    limiter = RateLimiter(rate=5.0, burst=10, clock=lambda: now[0])
    for i in range(limiter.max_keys + 50):
        limiter.allow(f"a{i}")
    assert len(limiter) == limiter.max_keys
    assert "a0" not in limiter._buckets and f"a{limiter.max_keys + 49}" in limiter._buckets
    spammer = [limiter.allow("spam") for _ in range(30)]
    for i in range(1000):  # churn by others does not reset an active author
        limiter.allow(f"b{i}")
    spammer += [limiter.allow("spam") for _ in range(30)]
    assert sum(spammer) == 10


def test_ids_sortable_unique_and_timed() -> None:
    now = [1_800_000_000_000]
    gen = IdGenerator(node=5, clock_ms=lambda: now[0])
    ids = [gen.next_id() for _ in range(10_000)]  # > 4096 in one ms: borrows the next ms
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert id_time_ms(ids[0]) == now[0]
    now[0] -= 5000  # the wall clock steps back: ids keep increasing
    assert gen.next_id() > ids[-1]
    assert first_id_at(now[0]) <= ids[0]


def test_buckets_are_uniform_for_sequential_ids() -> None:
    gen = IdGenerator(node=1, clock_ms=iter(range(10**12, 10**12 + 80_000)).__next__)
    counts = [0] * 8
    for _ in range(80_000):
        counts[bucket_of(gen.next_id(), 8)] += 1
    mean = sum(counts) / 8
    assert max(abs(c - mean) for c in counts) / mean < 0.05
