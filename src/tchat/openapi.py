"""The OpenAPI document (`/openapi.json`, `/docs`): FastAPI's, completed.

FastAPI cannot describe everything tchat serves: the Bearer scheme the routes check
by hand, the chat WebSocket, the Prometheus endpoint (a mounted ASGI app), and its
own 422 validation answer, which tchat replaces by 400/415 with the error body
(`tchat.http.ErrorBody`). This adds or corrects those; a test validates the result
with openapi-spec-validator.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

WEBSOCKET_PATH: dict[str, Any] = {
    "get": {
        "tags": ["chat"],
        "summary": "Chat WebSocket",
        "operationId": "room_socket",
        "description": "A WebSocket (`Upgrade: websocket`), not a plain GET. Anyone may "
        "listen; posting needs a chat or publisher token, in the `token` query parameter "
        "or an `auth` frame. JSON text frames both ways: hello, message, ack, error, "
        "pong from the server; auth, post, ping from the client (docs/chat.md). A room "
        "name that is not valid closes with code 4400; a listener too slow to keep up, "
        "1013.",
        "parameters": [
            {
                "name": "room",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            },
            {
                "name": "token",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "A chat or publisher token (or send an auth frame).",
            },
        ],
        "responses": {"101": {"description": "Switching Protocols: the WebSocket is open."}},
    }
}

METRICS_PATH: dict[str, Any] = {
    "get": {
        "tags": ["ops"],
        "summary": "Prometheus metrics",
        "operationId": "metrics",
        "description": "Prometheus text exposition: HTTP, chat, recording and bus figures.",
        "responses": {
            "200": {
                "description": "The metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
}


def operation_id(route: APIRoute) -> str:
    """The handler's name: unique in tchat (a test keeps it so), readable in clients."""
    return route.name


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A room token (`tchat token`): publisher, viewer or chat. No "
            "valid token → 401; a valid one that does not grant the room, role or "
            "session → 403.",
        }
        for ops in schema["paths"].values():
            for op in ops.values():
                responses = op.get("responses", {})
                # tchat answers validation errors 400 (415 for a body of the wrong type)
                # with the error body, not FastAPI's 422
                if responses.pop("422", None) is not None:
                    responses.setdefault(
                        "400",
                        {
                            "description": "Bad request (the detail says which field).",
                            "content": {"application/json": {"schema": ERROR_REF}},
                        },
                    )
        schemas = components.get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schema["paths"]["/rooms/{room}/ws"] = WEBSOCKET_PATH
        schema["paths"]["/metrics"] = METRICS_PATH
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
