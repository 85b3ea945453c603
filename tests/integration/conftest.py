"""Integration tests talk to the real services `tchat services up` started.

A missing service is a failure with a clear message, never a skip: `make test`
starts them, and a skipped integration test would hide that it did not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tchat.devservices import all_services
from tchat.devservices.seaweedfs import ACCESS_KEY, PORT, SECRET_KEY
from tchat.perf.server import free_port
from tchat.perf.sfu_load import MEDIA_CACHE
from tchat.perf.sfu_media import PreparedMedia, prepare
from tchat.storage import ObjectStore
from tchat.storage.local import LocalStore
from tchat.storage.s3 import S3Store


@pytest.fixture(scope="session")
def services_answering() -> dict[str, str]:
    answers = {}
    for service in all_services():
        answer = service.answering()
        if answer is None:
            pytest.fail(f"{service.name} is not answering: run `make services-up` first")
        answers[service.name] = answer
    return answers


def make_s3(bucket: str = "tchat-it") -> S3Store:
    """An S3Store on the SeaweedFS server `tchat services up` runs."""
    return S3Store(f"http://127.0.0.1:{PORT}", bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


@pytest.fixture(params=["local", "s3"])
async def object_store(
    request: pytest.FixtureRequest, tmp_path: Path, services_answering: dict[str, str]
) -> AsyncIterator[ObjectStore]:
    """Each ObjectStore backend in turn: a local directory, then the real S3 server."""
    backend: ObjectStore = (
        LocalStore(tmp_path / "objects") if request.param == "local" else make_s3()
    )
    await backend.open()
    yield backend
    await backend.close()


# Start-up imports FastAPI, aiortc, PyAV…: ~2 s on a quiet box, 20 s and more measured on
# a busy 2-core one; a deadline only costs time when the server really does not come up.
START_TIMEOUT_S = 180.0  # > the supervisor's 120 s for an SFU instance process


class Server:
    """A real `tchat serve` process on a free port."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_port = free_port()
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"  # local-only routes
        self.env = {
            **os.environ,
            "TCHAT_PORT": str(self.port),
            "TCHAT_ADMIN_PORT": str(self.admin_port),
            "TCHAT_DATA_DIR": str(tmp / "data"),
            "TCHAT_SECRET": "integration-secret-0123456789abcdef",
            **env,
        }
        self.log = tmp / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tchat", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tchat serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()  # not left running (with its SFU instances) after the test fails
        raise RuntimeError(
            f"tchat serve did not answer in {timeout_s:g} s: {self.log.read_text()[-2000:]}"
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[Server] | object]:
    started: list[Server] = []

    def make(**env: str) -> Server:
        server = Server(tmp_path, env).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def media() -> PreparedMedia:
    """The synthetic publisher's H.264 layers and Opus (prepared once, cached on disk)."""
    return prepare(MEDIA_CACHE)
