"""Signed HLS paths of private deployments (issue 14.7), pure."""

from __future__ import annotations

from tchat.recording.access import check_signed, hls_key, recording_prefix, signed_path

KEY = hls_key("unit-secret-0123456789abcdef-0123456789")


def test_one_signature_covers_one_recording_until_it_expires() -> None:
    path = signed_path(KEY, "recordings/abc/index.m3u8", 2000)
    grant = path.split("/")[1]
    assert check_signed(KEY, path, 1999.0) == ("recordings/abc/index.m3u8", "")
    # a segment of the same recording, resolved relatively by the player
    assert check_signed(KEY, f"s/{grant}/recordings/abc/seg_00001.ts", 1999.0)[0]
    assert check_signed(KEY, path, 2001.0) == (None, "signed URL expired")
    assert check_signed(KEY, f"s/{grant}/recordings/abd/index.m3u8", 0.0)[1] == "bad signature"
    assert check_signed(hls_key("another-secret-0123456789abcdef"), path, 0.0)[0] is None
    assert check_signed(KEY, path.replace("s/2000.", "s/2999."), 0.0)[1] == "bad signature"
    assert check_signed(KEY, "s/x/recordings/abc/i.m3u8", 0.0)[1] == "malformed signed path"
    assert check_signed(KEY, "recordings/abc/i.m3u8", 0.0)[1] == "not a signed path"
    assert recording_prefix("recordings/abc/seg.ts") == "recordings/abc/"
    assert recording_prefix("recordings") == ""
