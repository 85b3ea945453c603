"""What the HTTP routes use: one typed container, built by `create_app` and filled by its
lifespan in dependency order (app.py says the order once). Routes reach it with
`services(request)`; a service its lifespan has not started yet is a 503, not an
AttributeError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from tchat.chat.service import ChatService
    from tchat.config import Settings
    from tchat.recording.api import Access as RecordingAccess
    from tchat.recording.live import LiveRecording
    from tchat.recording.service import RecordingService
    from tchat.sfu.backend import SfuBackend
    from tchat.sfu.cluster.backend import Cluster
    from tchat.sfu.worker import SfuWorker

T = TypeVar("T")


class NotStarted(RuntimeError):
    """A route needed a service that is not running (start-up, shutdown, or not
    configured in this process): answered 503 by the app."""


@dataclass
class Services:
    settings: Settings
    # settings.token_secret(), read once by the lifespan (it may create the file)
    token_secret: str | None = None
    # the admin listener's port once bound (cli.py); None when there is none (tests)
    admin_port: int | None = None
    chat: ChatService | None = None
    recording: RecordingService | None = None  # None on a cluster: the instances record
    recording_access: RecordingAccess | None = None
    sfu_backend: SfuBackend | None = None  # what WHIP/WHEP routes call: worker or cluster
    sfu: SfuWorker | None = None  # the in-process worker (NUM_SFU_INSTANCES=1)
    sfu_cluster: Cluster | None = None  # the supervised instances (NUM_SFU_INSTANCES>1)
    live_recording: LiveRecording | None = None

    @property
    def secret(self) -> str:
        return require(self.token_secret, "the token secret")


def install(app: Starlette, services_: Services) -> Services:
    app.state.services = services_
    return services_


def services(conn: HTTPConnection) -> Services:
    """The app's services, from a request or a WebSocket."""
    found: Services = conn.app.state.services
    return found


def require(value: T | None, name: str) -> T:
    if value is None:
        raise NotStarted(f"{name} is not running")
    return value
