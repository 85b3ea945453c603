"""The HTTP app: mounts each capability's routes and owns their lifetimes."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, make_asgi_app
from starlette.exceptions import HTTPException

from tchat import __version__, openapi
from tchat.chat import api as chat_api
from tchat.config import Settings
from tchat.cors import ApiCors, allowed_methods
from tchat.http import BodyLimit, json_error
from tchat.recording import api as recording_api
from tchat.recording import live as live_recording
from tchat.services import NotStarted, Services, install, services
from tchat.sfu import api as sfu_api
from tchat.web import pages

log = logging.getLogger("tchat.app")


# What each capability runs, in dependency order: the SFU (a cluster fails a dead
# instance's recordings) needs the recording service, live recording joins the worker to
# it, and pages point chat presence at the SFU.
RUNNING = (
    chat_api.running,
    recording_api.running,
    sfu_api.running,
    live_recording.running,
    pages.running,
)


def create_app(settings: Settings) -> FastAPI:
    svc = Services(settings, recording_access=recording_api.Access(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.token_secret = settings.token_secret()
        async with AsyncExitStack() as stack:
            for running in RUNNING:
                await stack.enter_async_context(running(svc))
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
        generate_unique_id_function=openapi.operation_id,
    )
    install(app, svc)
    openapi.install(app)

    app.get("/healthz", tags=["ops"])(healthz)
    _install_errors(app)
    app.get("/metrics", include_in_schema=False)(metrics)  # documented in tchat.openapi
    app.add_middleware(BodyLimit)  # every request body capped (64 KiB; chat less): 413
    app.mount("/metrics", make_asgi_app())
    _mount_capabilities(app, settings)
    # outermost: a preflight is answered before any route or page middleware sees it
    app.add_middleware(ApiCors, origins=settings.cors_allowed_origins, routes=app.router.routes)
    return app


async def healthz(request: Request) -> dict[str, object]:
    """Up (200). `status` is `degraded` while a dependency is failing: the chat bus
    (Redis fan-out to other instances reconnecting; `bus` says since when)."""
    chat = services(request).chat
    bus = chat.bus.health() if chat is not None else {"ok": True, "state": "starting"}
    status = "ok" if bus.get("ok", True) else "degraded"
    return {"status": status, "version": __version__, "bus": bus}


async def metrics() -> Response:
    # answered here, not by the mount's 307 to /metrics/
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _install_errors(app: FastAPI) -> None:
    """Every error in the documented JSON body."""

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        return json_error(400, "bad_request", str(exc))

    @app.exception_handler(NotStarted)
    async def not_started(request: Request, exc: NotStarted) -> JSONResponse:
        return json_error(503, "unavailable", str(exc), {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own 404/405 (unknown path, method not allowed), in our error body;
        # headers kept (405's Allow)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allow = allowed_methods(app.router.routes, request.scope)
            headers["Allow"] = ", ".join(sorted(allow))
        return json_error(exc.status_code, code, str(exc.detail), headers)


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation failure as the documented error: 415 when a JSON body came
    as something else (a form post), otherwise 400 naming each bad field."""
    errors = list(exc.errors())
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body_errors = [e for e in errors if e.get("loc", ("",))[0] == "body"]
    if body_errors and ctype and ctype != "application/json" and not ctype.endswith("+json"):
        return json_error(415, "unsupported_media_type", "send the body as application/json")
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return json_error(400, "bad_request", "; ".join(parts) or "invalid request")


def _mount_capabilities(app: FastAPI, settings: Settings) -> None:
    """Each capability's `mount(app, settings)` adds its routes (no state: handlers reach
    what runs through `services(request)`)."""
    # pages last: its catch-all routes come after the API
    for capability in (chat_api, recording_api, sfu_api, pages):
        capability.mount(app, settings)
