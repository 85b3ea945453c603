"""Issue 14.10 with real processes: an SFU node's control API takes only fresh signed
requests (the fixed key in a header, a replay, a stale or altered request are 403), and
stopping a node lets it finish (its recordings' finalize) before SIGKILL, bounded."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tchat.sfu.cluster.control import ControlAuth, control_key, sign
from tchat.sfu.cluster.instance import KEY_ENV
from tchat.sfu.cluster.supervisor import end

KEY = control_key("integration-secret-0123456789abcdef")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[str]:
    """A real `python -m tchat.sfu.cluster.instance`; yields its control URL."""
    import subprocess

    env = {
        **os.environ,
        KEY_ENV: KEY,
        "TCHAT_DATA_DIR": str(tmp_path / "data"),
        "TCHAT_SECRET": "integration-secret-0123456789abcdef",
        "SFU_RECORD": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tchat.sfu.cluster.instance", "--id", "t-1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        yield f"http://127.0.0.1:{ports['control_port']}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def test_control_api_takes_only_fresh_signed_requests(node: str) -> None:
    with httpx.Client(base_url=node, timeout=10) as plain:
        # the old scheme: the key itself in a header
        r = plain.get("/stats", headers={"x-tchat-sfu-key": KEY})
        assert r.status_code == 403 and r.json()["detail"] == "unsigned request"
        # signed: accepted once
        headers = sign(KEY, "GET", "/stats", b"", time.time())
        assert plain.get("/stats", headers=headers).status_code == 200
        r = plain.get("/stats", headers=headers)  # the same request again
        assert r.status_code == 403 and r.json()["detail"] == "replayed request"
        stale = sign(KEY, "GET", "/stats", b"", time.time() - 120)
        r = plain.get("/stats", headers=stale)
        assert r.status_code == 403 and "stale" in r.json()["detail"]
        # signed for one body, another sent; signed for one path, another asked
        body = json.dumps({"room": "r", "offer": "v=0"}).encode()
        headers = sign(KEY, "POST", "/publish", body, time.time())
        r = plain.post("/publish", content=body.replace(b'"r"', b'"x"'), headers=headers)
        assert r.status_code == 403 and r.json()["detail"] == "bad signature"
        headers = sign(KEY, "GET", "/stats", b"", time.time())
        r = plain.get("/rooms/r", headers=headers)
        assert r.status_code == 403 and r.json()["detail"] == "bad signature"
        wrong = sign(control_key("another-secret-0123456789abcdef-xyz"), "GET", "/stats", b"",
                     time.time())  # fmt: skip
        assert plain.get("/stats", headers=wrong).status_code == 403
    with httpx.Client(base_url=node, timeout=10, auth=ControlAuth(KEY)) as signed:
        assert signed.get("/stats").json()["id"] == "t-1"
        assert signed.get("/rooms/r").json() == {"publisher": False}


async def _child(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE
    )


async def test_stopping_a_node_waits_for_it_to_finish_then_kills_bounded() -> None:
    """A node that needs 7 s after EOF (a recording's finalize) exits by itself (before:
    SIGKILL after 5 s); one that never exits is killed at the bound."""
    finishing = await _child("import sys, time; sys.stdin.read(); time.sleep(7)")
    started = time.monotonic()
    await end(finishing)
    assert finishing.returncode == 0 and time.monotonic() - started >= 6.5
    stuck = await _child("import time; time.sleep(600)")
    started = time.monotonic()
    await end(stuck, timeout_s=1.0)
    assert stuck.returncode == -9 and time.monotonic() - started < 30
