"""A real `tchat serve` process for tests and load runs: free port, readiness, teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(
    data_dir: Path, secret: str, env: dict[str, str] | None = None, ready_s: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    full_env = {
        **os.environ,
        "TCHAT_PORT": str(port),
        "TCHAT_DATA_DIR": str(data_dir),
        "TCHAT_SECRET": secret,
        "LOG_LEVEL": "warn",
        "NUM_SFU_INSTANCES": "1",  # the in-process SFU unless the caller asks for a cluster
        **(env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / f"serve-{port}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tchat", "serve"], env=full_env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tchat serve exited with {proc.returncode}")
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tchat serve did not answer in {ready_s:g} s")
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
