"""The HTTP app: mounts each capability's routes and owns their lifetimes."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from tchat import __version__
from tchat.chat import api as chat_api
from tchat.config import Settings
from tchat.http import BodyLimit
from tchat.recording import api as recording_api
from tchat.sfu import api as sfu_api
from tchat.sfu import recording_sink
from tchat.web import pages

log = logging.getLogger("tchat.app")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.settings = settings
            app.state.secret = settings.token_secret()
            for component in app.state.components:
                await stack.enter_async_context(component(app))
            # Start-up objects (driver metadata, routes, models) live as long as the
            # process: freezing them keeps gen-2 collections short on the request path.
            gc.freeze()
            log.info("tchat started at %s", settings.base_url)
            yield

    app = FastAPI(
        title="tchat",
        version=__version__,
        lifespan=lifespan,
        description="Live streaming: WHIP/WHEP SFU, chat, HLS recordings.",
    )
    app.state.components = []
    app.state.settings = settings

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "version": __version__}

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": "bad_request", "detail": str(exc)}, status_code=400)

    app.add_middleware(BodyLimit)  # every request body capped (64 KiB; chat less): 413
    app.mount("/metrics", make_asgi_app())
    _mount_capabilities(app, settings)
    return app


def _mount_capabilities(app: FastAPI, settings: Settings) -> None:
    """Each capability's `mount(app, settings)` adds its routes and appends its lifespan
    component (a callable app -> async context manager) to `app.state.components`."""
    # recording_sink after both it joins; pages last (its catch-all routes come after the API)
    for capability in (chat_api, recording_api, sfu_api, recording_sink, pages):
        capability.mount(app, settings)
