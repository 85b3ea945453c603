"""Upload queue policy: order, backoff with a fake clock, bounded buffer, playlist coalescing."""

from __future__ import annotations

from tchat.recording.uploadqueue import UploadJob, UploadQueue


def seg(n: int, size: int = 100) -> UploadJob:
    return UploadJob(f"r/seg_{n:05d}.ts", "segment", size, closed_at=0.0, sequence=n)


def playlist(tag: str) -> UploadJob:
    return UploadJob("r/index.m3u8", "playlist", 10, closed_at=0.0, data=tag.encode())


def test_in_order_one_at_a_time() -> None:
    q = UploadQueue(max_buffer_bytes=1000)
    q.add(seg(0))
    q.add(seg(1))
    job = q.take(now=0.0)
    assert job is not None and job.sequence == 0
    assert q.take(now=0.0) is None  # one in flight
    q.done(job)
    nxt = q.take(now=0.0)
    assert nxt is not None and nxt.sequence == 1


def test_failed_job_backs_off_exponentially_and_stays_first() -> None:
    q = UploadQueue(max_buffer_bytes=1000, backoff_base_s=0.5, backoff_cap_s=3.0)
    q.add(seg(0))
    q.add(seg(1))
    delays = []
    now = 10.0
    for _ in range(5):
        job = q.take(now)
        assert job is not None and job.sequence == 0
        delays.append(q.failed(job, now, "storage down"))
        assert q.take(now) is None  # waits for the backoff
        assert q.next_timer() == now + delays[-1]
        now += delays[-1]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    job = q.take(now)
    assert job is not None and job.attempts == 5 and job.last_error == "storage down"


def test_buffer_full_reports_lost_segment() -> None:
    q = UploadQueue(max_buffer_bytes=250)
    assert q.add(seg(0)) and q.add(seg(1))
    assert not q.add(seg(2))
    assert [s.sequence for s in q.lost] == [2]
    assert "buffer full" in q.lost[0].reason
    assert q.buffered_bytes == 200


def test_only_newest_playlist_waits() -> None:
    q = UploadQueue(max_buffer_bytes=1000)
    q.add(seg(0))
    q.add(playlist("v1"))
    q.add(seg(1))
    q.add(playlist("v2"))
    kinds = [(j.kind, j.data) for j in q.jobs]
    assert kinds == [("segment", None), ("segment", None), ("playlist", b"v2")]


def test_playlist_in_flight_is_not_replaced() -> None:
    q = UploadQueue(max_buffer_bytes=1000)
    q.add(playlist("v1"))
    job = q.take(0.0)
    q.add(playlist("v2"))
    assert [j.data for j in q.jobs] == [b"v1", b"v2"]
    assert job is not None
    q.done(job)
    assert [j.data for j in q.jobs] == [b"v2"]
