"""`tchat serve` as a real process: health, docs, metrics, settings errors."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx


def test_serve_health_docs_metrics(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "tchat"
    metrics = httpx.get(server.url + "/metrics/")
    assert metrics.status_code == 200 and "python_info" in metrics.text


def test_bad_setting_stops_start_with_one_line() -> None:
    env = {**os.environ, "LOG_LEVEL": "loud"}
    proc = subprocess.run(
        [sys.executable, "-m", "tchat", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "LOG_LEVEL" in lines[0]


def test_help_lists_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tchat", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for env in ("SCYLLADB_HOST", "NUM_SFU_INSTANCES", "MESSAGES_PER_SEC", "LOG_LEVEL"):
        assert env in out


def test_token_cli() -> None:
    env = {**os.environ, "TCHAT_SECRET": "cli-secret-0123456789abcdef0123456789"}
    out = subprocess.run(
        [sys.executable, "-m", "tchat", "token", "--room", "r", "--role", "chat"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    from tchat.auth import verify_token

    assert verify_token(env["TCHAT_SECRET"], out, "r", "chat").role == "chat"
