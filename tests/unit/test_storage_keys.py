"""Object keys, content types and cache policy shared by every store."""

from __future__ import annotations

import pytest

from tchat.storage.base import (
    CACHE_FINAL_PLAYLIST,
    CACHE_IMMUTABLE,
    CACHE_LIVE,
    cache_control_for,
    content_type_for,
    validate_key,
    validate_prefix,
)


@pytest.mark.parametrize("key", ["recordings/ab12/seg_00000.ts", "a", "x/y=1/z-2.m3u8"])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "/a", "a/", "a//b", "../a", "a/../b", ".meta", "a/.b", "-x", "a b", "é", "a" * 513]
)
def test_bad_keys(key: str) -> None:
    with pytest.raises(ValueError):
        validate_key(key)


def test_prefixes() -> None:
    assert validate_prefix("recordings/") == "recordings/"
    assert validate_prefix("") == ""
    with pytest.raises(ValueError, match="must end"):
        validate_prefix("recordings")


def test_content_types() -> None:
    assert content_type_for("r/index.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type_for("r/seg_00001.ts") == "video/mp2t"
    assert content_type_for("r/noext") == "application/octet-stream"
    assert content_type_for("dir.v2/noext") == "application/octet-stream"


def test_cache_policy() -> None:
    assert cache_control_for("r/seg_00001.ts") == CACHE_IMMUTABLE
    assert cache_control_for("r/index.m3u8", b"#EXTM3U\n") == CACHE_LIVE
    assert cache_control_for("r/index.m3u8", b"#EXTM3U\n#EXT-X-ENDLIST\n") == CACHE_FINAL_PLAYLIST
