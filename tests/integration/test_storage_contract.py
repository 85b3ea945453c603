"""One contract, every ObjectStore: the local directory and the real S3 server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tchat.storage import NotFound, ObjectStore, StoreError
from tchat.storage.base import CACHE_FINAL_PLAYLIST, CACHE_IMMUTABLE, CACHE_LIVE
from tchat.storage.s3 import S3Store


@pytest.fixture
def prefix() -> str:
    return f"contract/{uuid.uuid4().hex[:12]}/"


async def test_put_get_head_round_trip(object_store: ObjectStore, prefix: str) -> None:
    key = prefix + "seg_00000.ts"
    await object_store.put_bytes(key, b"\x47" * 1880)
    assert await object_store.get(key) == b"\x47" * 1880
    info = await object_store.head(key)
    assert info is not None
    assert (info.key, info.size) == (key, 1880)
    assert info.content_type == "video/mp2t"
    assert info.cache_control == CACHE_IMMUTABLE


async def test_playlist_headers_follow_endlist(object_store: ObjectStore, prefix: str) -> None:
    live, final = prefix + "live.m3u8", prefix + "final.m3u8"
    await object_store.put_bytes(live, b"#EXTM3U\n#EXT-X-PLAYLIST-TYPE:EVENT\n")
    await object_store.put_bytes(final, b"#EXTM3U\n#EXT-X-ENDLIST\n")
    live_info, final_info = await object_store.head(live), await object_store.head(final)
    assert live_info and live_info.content_type == "application/vnd.apple.mpegurl"
    assert live_info.cache_control == CACHE_LIVE
    assert final_info and final_info.cache_control == CACHE_FINAL_PLAYLIST


async def test_put_file_and_overwrite(
    object_store: ObjectStore, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "a.ts"
    src.write_bytes(b"one")
    assert await object_store.put_file(prefix + "a.ts", src) == 3
    await object_store.put_bytes(prefix + "a.ts", b"two!")
    assert await object_store.get(prefix + "a.ts") == b"two!"


async def test_missing_key(object_store: ObjectStore, prefix: str) -> None:
    with pytest.raises(NotFound):
        await object_store.get(prefix + "nope.ts")
    assert await object_store.head(prefix + "nope.ts") is None


async def test_list_and_delete_prefix(object_store: ObjectStore, prefix: str) -> None:
    keys = [f"{prefix}r1/seg_{i:05d}.ts" for i in range(3)] + [prefix + "r1/index.m3u8"]
    for key in keys:
        await object_store.put_bytes(key, key.encode())
    await object_store.put_bytes(prefix + "r2/index.m3u8", b"#EXTM3U\n")
    listed = await object_store.list(prefix + "r1/")
    assert [i.key for i in listed] == sorted(keys)
    assert [i.size for i in listed] == [len(k) for k in sorted(keys)]
    assert await object_store.delete_prefix(prefix + "r1/") == 4
    assert await object_store.list(prefix + "r1/") == []
    assert [i.key for i in await object_store.list(prefix)] == [prefix + "r2/index.m3u8"]
    assert await object_store.delete_prefix(prefix + "r1/") == 0


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a//b", "/abs", ".hidden/x", "a/../b"])
async def test_bad_keys_are_refused(object_store: ObjectStore, bad: str) -> None:
    with pytest.raises(ValueError):
        await object_store.put_bytes(bad, b"x")
    with pytest.raises(ValueError):
        await object_store.get(bad)


async def test_prefix_must_be_a_directory(object_store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        await object_store.list("recordings")
    with pytest.raises(ValueError):
        await object_store.delete_prefix("")


async def test_expiration_rule(object_store: ObjectStore, prefix: str) -> None:
    result = await object_store.apply_expiration(prefix, 30)
    if object_store.name == "s3":
        # SeaweedFS implements lifecycle rules: it must be applied and read back.
        assert result.supported and result.verified, result.detail
    else:
        assert not result.supported and "sweeper" in result.detail
    assert (result.prefix, result.days) == (prefix, 30)


async def test_s3_down_is_a_store_error(services_answering: dict[str, str]) -> None:
    dead = S3Store("http://127.0.0.1:9", "tchat-it", max_attempts=1, connect_timeout_s=0.5)
    with pytest.raises(StoreError):
        await dead.put_bytes("x/a.ts", b"x")
    await dead.close()
