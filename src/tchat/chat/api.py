"""HTTP and WebSocket routes of the chat."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tchat.auth import Grant, TokenError, bearer, verify_token
from tchat.bus import make_bus
from tchat.chat.models import ROOM_PATTERN, HistoryPage, MessageOut
from tchat.chat.protocol import (
    Auth,
    Ping,
    Post,
    ProtocolError,
    decode_frame,
    encode,
    error_frame,
    validate_text,
)
from tchat.chat.service import ChatService, Listener
from tchat.chat.store import StoreUnavailable, make_store
from tchat.config import Settings
from tchat.http import auth_failed, error_responses
from tchat.metrics import CHAT_REJECTED

_ROOM = re.compile(ROOM_PATTERN)
_closing: set[asyncio.Future[None]] = set()  # keeps close tasks alive until done
RoomPath = Annotated[str, Path(pattern=ROOM_PATTERN, description="Room name.")]


class PostBody(BaseModel):
    text: str = Field(description="Message text.")


def mount(app: FastAPI, settings: Settings) -> None:
    router = APIRouter(tags=["chat"])

    @asynccontextmanager
    async def component(app: FastAPI) -> AsyncIterator[None]:
        service = ChatService(
            make_store(settings),
            make_bus(settings.redis_url),
            settings.chat_rate_per_s,
            settings.chat_burst,
            node_id=settings.chat_node_id,
        )
        await service.start()
        app.state.chat = service
        try:
            yield
        finally:
            await service.close()

    app.state.components.append(component)

    def chat(request: Request | WebSocket) -> ChatService:
        service: ChatService = request.app.state.chat
        return service

    @router.get(
        "/rooms/{room}/messages", response_model=HistoryPage, responses=error_responses(400, 503)
    )
    async def history(
        request: Request,
        room: RoomPath,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[str | None, Query(pattern=r"^\d{1,19}$")] = None,
    ) -> Any:
        """Messages of a room, newest first; page with `before` = the last id you have."""
        cursor = int(before) if before else None
        if cursor is not None and cursor >= 2**63:
            return JSONResponse(
                {"error": "bad_request", "detail": "before is not a message id"}, 400
            )
        try:
            messages = await chat(request).store.history(room, limit, cursor)
        except StoreUnavailable as exc:
            return JSONResponse({"error": "store_unavailable", "detail": str(exc)}, 503)
        return {
            "messages": [m.to_json() for m in messages],
            "next_before": str(messages[-1].id) if len(messages) == limit else None,
        }

    @router.post(
        "/rooms/{room}/messages",
        status_code=201,
        response_model=MessageOut,
        responses=error_responses(400, 401, 403, 415, 429, 503),
        openapi_extra={"security": [{"bearer": []}]},
    )
    async def post_message(
        request: Request,
        room: RoomPath,
        body: PostBody,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Post with `Authorization: Bearer <chat or publisher token>`; 201 once stored."""
        try:
            grant = verify_token(request.app.state.secret, bearer(authorization), room, "chat")
            message = await chat(request).post(
                room, grant.identity, validate_text(body.text, settings.chat_max_chars)
            )
        except TokenError as exc:
            return auth_failed(exc)  # 401 no valid token, 403 one without chat rights
        except ProtocolError as exc:
            CHAT_REJECTED.labels(exc.code).inc()
            status = {"rate_limited": 429, "store_unavailable": 503}.get(exc.code, 400)
            return JSONResponse({"error": exc.code, "detail": exc.detail}, status)
        return message.to_json()

    @router.websocket("/rooms/{room}/ws")
    async def room_socket(websocket: WebSocket, room: str, token: str | None = None) -> None:
        """Anyone reads; posting needs a chat/publisher token (query `token` or an auth frame)."""
        await websocket.accept()
        if not _ROOM.match(room):
            await websocket.close(code=4400, reason="invalid room name")
            return
        service = chat(websocket)
        secret: str = websocket.app.state.secret
        grant: Grant | None = None

        async def send(frame: dict[str, Any]) -> None:
            if websocket.application_state == WebSocketState.CONNECTED:
                await websocket.send_text(encode(frame))

        if token:
            try:
                grant = verify_token(secret, token, room, "chat")
            except TokenError as exc:
                await send(error_frame("unauthorized", str(exc)))

        def overflow() -> None:
            CHAT_REJECTED.labels("slow_listener").inc()
            task = asyncio.ensure_future(websocket.close(code=1013, reason="listener too slow"))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

        def hello(can_post: bool) -> dict[str, Any]:
            return {
                "type": "hello",
                "room": room,
                "can_post": can_post,
                "max_chars": settings.chat_max_chars,
            }

        listener = Listener(websocket.send_text, overflow)
        try:  # joined inside: a client gone before hello must still leave the room
            await service.join(room, listener)
            await send(hello(grant is not None))
            while True:
                event = await websocket.receive()
                if event["type"] == "websocket.disconnect":
                    break
                data = event.get("text")
                if data is None:
                    data = event.get("bytes") or b""
                nonce = None
                try:
                    frame = decode_frame(data, settings.chat_max_chars)
                    if isinstance(frame, Ping):
                        await send({"type": "pong"})
                    elif isinstance(frame, Auth):
                        try:
                            grant = verify_token(secret, frame.token, room, "chat")
                            await send(hello(True))
                        except TokenError as exc:
                            raise ProtocolError("unauthorized", str(exc)) from None
                    elif isinstance(frame, Post):
                        nonce = frame.nonce
                        if grant is None:
                            raise ProtocolError(
                                "unauthorized", "posting needs a chat token (auth frame)"
                            )
                        message = await service.post(room, grant.identity, frame.text)
                        await send({"type": "ack", "nonce": nonce, "id": str(message.id)})
                except ProtocolError as exc:
                    CHAT_REJECTED.labels(exc.code).inc()
                    await send(error_frame(exc.code, exc.detail, nonce))
        except WebSocketDisconnect:
            pass
        finally:
            await service.leave(room, listener)

    app.include_router(router)
