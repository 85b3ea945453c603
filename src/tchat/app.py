"""The HTTP app: mounts each capability's routes and owns their lifetimes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from tchat import __version__
from tchat.config import Settings

log = logging.getLogger("tchat.app")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.settings = settings
            app.state.secret = settings.token_secret()
            for component in app.state.components:
                await stack.enter_async_context(component(app))
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

    app.mount("/metrics", make_asgi_app())
    _mount_capabilities(app, settings)
    return app


# Each capability's `api` module has `mount(app, settings)`: it adds its routes and
# appends its lifespan component (a callable app -> async context manager) to
# `app.state.components`. A capability whose package is absent is simply not served.
CAPABILITIES = ("tchat.chat.api", "tchat.recording.api", "tchat.sfu.api")


def _mount_capabilities(app: FastAPI, settings: Settings) -> None:
    import importlib

    for module in CAPABILITIES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            continue
        mod.mount(app, settings)
