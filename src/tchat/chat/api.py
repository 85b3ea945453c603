"""HTTP and WebSocket routes of the chat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tchat.auth import TokenError, bearer, verify_token
from tchat.bus import make_bus
from tchat.chat import moderation_api
from tchat.chat.connection import (
    CLOSE_TOKEN_EXPIRED,
    ArmExpiry,
    ChatConnection,
    Close,
    PostMessage,
    Rejected,
    RunModeration,
    SendFrame,
    SendHello,
    Step,
    WatchHls,
)
from tchat.chat.models import ROOM_PATTERN, HistoryPage, MessageOut
from tchat.chat.moderation import ModerationError
from tchat.chat.protocol import ProtocolError, encode, validate_text
from tchat.chat.service import ChatService, Listener
from tchat.chat.shared import make_shared
from tchat.chat.store import StoreUnavailable, make_store
from tchat.config import Settings
from tchat.http import (
    BodyTooLarge,
    api_router,
    auth_failed,
    body_schema,
    error_responses,
    include,
    read_model,
    too_large,
)
from tchat.metrics import CHAT_REJECTED
from tchat.rooms import valid_room
from tchat.services import Services, require, services

_closing: set[asyncio.Future[None]] = set()  # keeps close tasks alive until done
RoomPath = Annotated[str, Path(pattern=ROOM_PATTERN, description="Room name.")]


class PostBody(BaseModel):
    text: str = Field(description="Message text.")


router = api_router("chat")


def mount(app: FastAPI, settings: Settings) -> None:
    """The chat and moderation routes; what they use comes from `services(request)`."""
    include(app, router)
    moderation_api.mount(app)


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """The chat service, on `services.chat` while the app runs."""
    settings = services.settings
    service = ChatService(
        make_store(settings),
        make_bus(settings.redis_url),
        settings.chat_rate_per_s,
        settings.chat_burst,
        node_id=settings.chat_node_id,
        shared=make_shared(settings.redis_url),
    )
    await service.start()
    services.chat = service
    try:
        yield
    finally:
        await service.close()
        services.chat = None  # routes answer 503 rather than use a closed service


def body_limit(settings: Settings) -> int:
    # the JSON of the longest text, every character escaped (\uXXXX), and some room
    return max(4096, settings.chat_max_chars * 6 + 512)


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
        return JSONResponse({"error": "bad_request", "detail": "before is not a message id"}, 400)
    service = require(services(request).chat, "chat")
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
    svc = services(request)
    settings = svc.settings
    try:
        grant = verify_token(svc.secret, bearer(authorization), room, "chat")
        body = await read_model(request, PostBody, body_limit(settings))
        message = await require(svc.chat, "chat").post(
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
    svc = services(websocket)
    secret = svc.secret
    conn = ChatConnection(
        lambda t: verify_token(secret, t, room, "chat"), svc.settings.chat_max_chars, token
    )
    await RoomSocket(websocket, require(svc.chat, "chat"), room, conn).run()


class RoomSocket:
    """The I/O of one chat WebSocket: frames in to its `ChatConnection`, its steps out."""

    def __init__(
        self, websocket: WebSocket, service: ChatService, room: str, conn: ChatConnection
    ) -> None:
        self.ws = websocket
        self.service = service
        self.room = room
        self.conn = conn
        self.expiry: asyncio.TimerHandle | None = None
        self.listener = Listener(websocket.send_text, self._overflow)

    async def run(self) -> None:
        await self._carry_out(self.conn.open())
        try:  # joined inside: a client gone before hello must still leave the room
            await self.service.join(self.room, self.listener)
            await self._send(await self._hello())
            while not self.conn.closed:
                event = await self.ws.receive()
                if event["type"] == "websocket.disconnect":
                    break
                data = event.get("text")
                if data is None:
                    data = event.get("bytes") or b""
                await self._carry_out(self.conn.receive(data, time.time()))
        except WebSocketDisconnect:
            pass
        finally:
            if self.expiry is not None:
                self.expiry.cancel()
            if self.conn.watching:
                self.service.presence.hls_leave(self.room)
            await self.service.leave(self.room, self.listener)

    async def _carry_out(self, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, SendFrame):
                await self._send(step.frame)
            elif isinstance(step, SendHello):
                await self._send(await self._hello())
            elif isinstance(step, PostMessage | RunModeration):
                await self._carry_out(await self._run(step))
            elif isinstance(step, ArmExpiry):
                self._arm(step.at)
            elif isinstance(step, WatchHls):
                self.service.presence.hls_join(self.room)
            elif isinstance(step, Rejected):
                CHAT_REJECTED.labels(step.code).inc()
            elif isinstance(step, Close):
                await self.ws.close(step.code, step.reason)

    async def _run(self, step: PostMessage | RunModeration) -> list[Step]:
        """A post or a moderation action against the service: its answer, or the error."""
        try:
            if isinstance(step, PostMessage):
                grant = step.grant
                message = await self.service.post(self.room, grant.identity, step.text, grant.role)
                return [SendFrame({"type": "ack", "nonce": step.nonce, "id": str(message.id)})]
            entry = await moderation_api.act(self.service, self.room, step.grant, step.action)
            return [SendFrame({"type": "moderated", "nonce": step.nonce, "entry": entry})]
        except ProtocolError as exc:
            return ChatConnection.refused(exc, step.nonce)

    async def _hello(self) -> dict[str, Any]:
        grant = self.conn.grant
        frame = {
            "type": "hello",
            "room": self.room,
            "can_post": grant is not None,
            "max_chars": self.conn.max_chars,
        }
        # moderation: role, own restriction, slow mode; presence (chat/moderation_api.py)
        return frame | await moderation_api.hello_fields(self.service, self.room, grant)

    async def _send(self, frame: dict[str, Any]) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            await self.ws.send_text(encode(frame))

    def _arm(self, at: float) -> None:
        """Close with CLOSE_TOKEN_EXPIRED when the grant's token expires."""
        if self.expiry is not None:
            self.expiry.cancel()
        self.expiry = asyncio.get_running_loop().call_later(
            max(0.0, at - time.time()), self._close_soon, CLOSE_TOKEN_EXPIRED, "token expired"
        )

    def _close_soon(self, code: int, reason: str) -> None:
        task = asyncio.ensure_future(self.ws.close(code=code, reason=reason))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    def _overflow(self) -> None:
        CHAT_REJECTED.labels("slow_listener").inc()
        self._close_soon(1013, "listener too slow")
