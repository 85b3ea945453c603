"""HTTP and WebSocket routes of the chat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tchat.auth import Grant, TokenError, bearer, verify_token
from tchat.bus import make_bus
from tchat.chat import moderation_api
from tchat.chat.models import ROOM_PATTERN, HistoryPage, MessageOut
from tchat.chat.moderation import ModerationError, parse_action
from tchat.chat.protocol import (
    Auth,
    Moderate,
    Ping,
    Post,
    ProtocolError,
    Watch,
    decode_frame,
    encode,
    error_frame,
    validate_text,
)
from tchat.chat.service import ChatService, Listener
from tchat.chat.shared import make_shared
from tchat.chat.store import StoreUnavailable, make_store
from tchat.config import Settings
from tchat.http import (
    BodyTooLarge,
    auth_failed,
    body_schema,
    error_responses,
    read_model,
    too_large,
)
from tchat.metrics import CHAT_REJECTED
from tchat.rooms import valid_room

_closing: set[asyncio.Future[None]] = set()  # keeps close tasks alive until done
CLOSE_TOKEN_EXPIRED = 4401  # the socket's token expired: reconnect with a fresh one
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
            shared=make_shared(settings.redis_url),
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
        service = chat(request)
        try:
            # a cleared room's history starts after the clear (moderation)
            after = await moderation_api.cleared_before(service, room)
            messages = await service.store.history(room, limit, cursor, after)
        except StoreUnavailable as exc:
            return JSONResponse({"error": "store_unavailable", "detail": str(exc)}, 503)
        except ModerationError as exc:
            return JSONResponse(exc.body(), exc.status)
        return {
            "messages": [m.to_json() for m in messages],
            "next_before": str(messages[-1].id) if len(messages) == limit else None,
        }

    # the JSON of the longest text, every character escaped (\uXXXX), and some room
    body_limit = max(4096, settings.chat_max_chars * 6 + 512)

    @router.post(
        "/rooms/{room}/messages",
        status_code=201,
        response_model=MessageOut,
        responses=error_responses(400, 401, 403, 413, 415, 429, 503),
        openapi_extra={**body_schema(PostBody), "security": [{"bearer": []}]},
    )
    async def post_message(
        request: Request,
        room: RoomPath,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Post `{"text": …}` with `Authorization: Bearer <chat or publisher token>`; 201
        once stored. The token is checked before the body is read; bodies over a few KiB
        get 413."""
        try:
            grant = verify_token(request.app.state.secret, bearer(authorization), room, "chat")
            body = await read_model(request, PostBody, body_limit)
            message = await chat(request).post(
                room, grant.identity, validate_text(body.text, settings.chat_max_chars), grant.role
            )
        except TokenError as exc:
            return auth_failed(exc)  # 401 no valid token, 403 one without chat rights
        except BodyTooLarge as exc:
            return too_large(exc)
        except ModerationError as exc:  # banned, timed out, slow mode: with until/retry_after
            CHAT_REJECTED.labels(exc.code).inc()
            return JSONResponse(exc.body(), exc.status)
        except ProtocolError as exc:
            CHAT_REJECTED.labels(exc.code).inc()
            status = {"rate_limited": 429, "store_unavailable": 503, "store_busy": 503}.get(
                exc.code, 400
            )
            headers = {"Retry-After": "1"} if exc.code == "store_busy" else None
            return JSONResponse({"error": exc.code, "detail": exc.detail}, status, headers)
        return message.to_json()

    @router.websocket("/rooms/{room}/ws")
    async def room_socket(websocket: WebSocket, room: str, token: str | None = None) -> None:
        """Anyone reads; posting needs a chat/publisher token (query `token` or an auth frame)."""
        await websocket.accept()
        if not valid_room(room):
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

        def close_soon(code: int, reason: str) -> None:
            task = asyncio.ensure_future(websocket.close(code=code, reason=reason))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

        def overflow() -> None:
            CHAT_REJECTED.labels("slow_listener").inc()
            close_soon(1013, "listener too slow")

        expiry: asyncio.TimerHandle | None = None

        def watch_expiry(g: Grant) -> None:
            """Close with CLOSE_TOKEN_EXPIRED when the grant's token expires."""
            nonlocal expiry
            if expiry is not None:
                expiry.cancel()
            expiry = asyncio.get_running_loop().call_later(
                max(0.0, g.expires_at - time.time()),
                close_soon,
                CLOSE_TOKEN_EXPIRED,
                "token expired",
            )

        if grant is not None:
            watch_expiry(grant)

        async def hello() -> dict[str, Any]:
            frame = {
                "type": "hello",
                "room": room,
                "can_post": grant is not None,
                "max_chars": settings.chat_max_chars,
            }
            # moderation: role, own restriction, slow mode; presence (chat/moderation_api.py)
            return frame | await moderation_api.hello_fields(service, room, grant)

        listener = Listener(websocket.send_text, overflow)
        watching = False
        try:  # joined inside: a client gone before hello must still leave the room
            await service.join(room, listener)
            await send(await hello())
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
                            watch_expiry(grant)
                        except TokenError as exc:
                            raise ProtocolError("unauthorized", str(exc)) from None
                        await send(await hello())
                    elif isinstance(frame, Post):
                        nonce = frame.nonce
                        if grant is None:
                            raise ProtocolError(
                                "unauthorized", "posting needs a chat token (auth frame)"
                            )
                        if time.time() >= grant.expires_at:  # checked on every post
                            CHAT_REJECTED.labels("token_expired").inc()
                            detail = "the token expired; reconnect with a fresh one"
                            await send(error_frame("token_expired", detail, nonce))
                            await websocket.close(CLOSE_TOKEN_EXPIRED, "token expired")
                            break
                        message = await service.post(room, grant.identity, frame.text, grant.role)
                        await send({"type": "ack", "nonce": nonce, "id": str(message.id)})
                    elif isinstance(frame, Moderate):
                        nonce = frame.nonce
                        entry = await moderation_api.act(
                            service, room, grant, parse_action(frame.action, frame.args)
                        )
                        await send({"type": "moderated", "nonce": nonce, "entry": entry})
                    elif isinstance(frame, Watch) and not watching:
                        watching = True  # an HLS watch page: counted as watching (presence)
                        service.presence.hls_join(room)
                except ProtocolError as exc:
                    CHAT_REJECTED.labels(exc.code).inc()
                    err = error_frame(exc.code, exc.detail, nonce)
                    if isinstance(exc, ModerationError):
                        err |= exc.fields
                    await send(err)
        except WebSocketDisconnect:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            if watching:
                service.presence.hls_leave(room)
            await service.leave(room, listener)

    app.include_router(router)
    moderation_api.mount(app)
