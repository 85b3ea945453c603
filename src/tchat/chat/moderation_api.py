"""HTTP routes of chat moderation, and the hooks the chat WebSocket calls.

    POST /rooms/{room}/moderation/delete      {"message_id"}
    POST /rooms/{room}/moderation/timeout     {"target" | "message_id", "seconds", "delete_recent"}
    POST /rooms/{room}/moderation/ban         {"target" | "message_id", "delete_recent"}
    POST /rooms/{room}/moderation/unban       {"target"}
    POST /rooms/{room}/moderation/slow_mode   {"seconds"}            (0 = off)
    POST /rooms/{room}/moderation/clear       {}
    GET  /rooms/{room}/moderation             restrictions in force, slow mode, roles
    GET  /rooms/{room}/moderation/log         the room's actions, newest first

All with `Authorization: Bearer <moderator or publisher token of the room>`; every
action also takes an optional `reason`. Errors are `{"error", "detail"}` with 400
(bad arguments), 401 (no or bad token), 403 (`not_moderator`, `target_is_*`,
`actor_restricted`), 404 (`unknown_message`, `not_restricted`), 409
(`already_deleted`), 503 (`store_unavailable`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tchat.auth import Grant, TokenError, bearer, verify_token
from tchat.chat.models import ROOM_PATTERN
from tchat.chat.moderation import (
    MAX_SLOW_MODE_S,
    MAX_TIMEOUT_S,
    Action,
    Moderation,
    ModerationError,
    parse_action,
)
from tchat.chat.service import ChatService
from tchat.http import api_router, error_responses, include
from tchat.services import require, services

RoomPath = Annotated[str, Path(pattern=ROOM_PATTERN, description="Room name.")]
Auth = Annotated[str | None, Header(description="Bearer <moderator or publisher token>")]
Reason = Field(None, description="Why (kept in the moderation log), ≤ 200 characters.")
DeleteRecent = Field(
    False, description="Also delete the target's messages among the room's last 200."
)


class DeleteBody(BaseModel):
    message_id: str | int = Field(description="Id of the message (decimal string).")
    reason: str | None = Reason


class TimeoutBody(BaseModel):
    target: str | None = Field(None, description="Identity (token subject) to time out.")
    message_id: str | int | None = Field(
        None, description="Or: time out the author of this message."
    )
    seconds: int = Field(description=f"Length: 1 … {MAX_TIMEOUT_S} s (14 days).")
    delete_recent: bool = DeleteRecent
    reason: str | None = Reason


class BanBody(BaseModel):
    target: str | None = Field(None, description="Identity to ban until unbanned.")
    message_id: str | int | None = Field(None, description="Or: ban the author of this message.")
    delete_recent: bool = DeleteRecent
    reason: str | None = Reason


class UnbanBody(BaseModel):
    target: str = Field(description="Identity whose ban or timeout ends now.")
    reason: str | None = Reason


class SlowModeBody(BaseModel):
    seconds: int = Field(
        description=f"At most one message per this many seconds per chatter; 0 = off "
        f"(≤ {MAX_SLOW_MODE_S})."
    )
    reason: str | None = Reason


class ClearBody(BaseModel):
    reason: str | None = Reason


class LogEntryOut(BaseModel):
    id: str = Field(description="Action id (time-sortable, like message ids).")
    room: str
    actor: str = Field(description="Identity of the moderator or broadcaster.")
    actor_role: str = Field(description="broadcaster | moderator")
    action: str = Field(description="delete | timeout | ban | unban | slow_mode | clear")
    target: str | None = Field(description="Identity acted on (author, for delete).")
    detail: dict[str, Any] = Field(
        description="delete: message_id, author, text; timeout: seconds, until, deleted; "
        "ban: deleted; unban: lifted; slow_mode: seconds; clear: before; reason if given."
    )
    created_at: float = Field(description="Unix seconds.")


class LogPage(BaseModel):
    entries: list[LogEntryOut] = Field(description="Newest first.")
    next_before: str | None = Field(description="Pass as `before` for older entries.")


class RestrictionOut(BaseModel):
    identity: str
    kind: str | None = Field(description="ban | timeout")
    until: float | None = Field(description="End of a timeout (Unix s); null for a ban.")
    by: str | None
    at: float | None


class StateOut(BaseModel):
    room: str
    slow_mode_s: int
    cleared_before: str | None = Field(description="Messages up to this id are hidden.")
    restrictions: list[RestrictionOut] = Field(description="Bans and timeouts in force.")
    roles: dict[str, str] = Field(description="Identities seen with a broadcaster/moderator token.")


ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 503)


def moderator_grant(secret: str, authorization: str | None, room: str) -> Grant:
    """The grant of a token that may moderate `room`, or ModerationError (401/403)."""
    try:
        grant = verify_token(secret, bearer(authorization), room, "viewer")
    except TokenError as exc:
        raise ModerationError("unauthorized", str(exc), 401) from None
    if not grant.allows(room, "moderator"):
        raise ModerationError(
            "not_moderator",
            f"a {grant.role} token cannot moderate; it needs a moderator or publisher token",
            403,
        )
    return grant


async def act(service: ChatService, room: str, grant: Grant | None, action: Action) -> Any:
    """Run an action for a WebSocket or HTTP client; the log entry as JSON."""
    if grant is None:
        raise ModerationError(
            "unauthorized", "moderating needs a moderator or publisher token (auth frame)", 401
        )
    if grant.expires_at <= time.time():
        raise ModerationError("unauthorized", "token expired", 401)
    if service.moderation is None:
        raise ModerationError("moderation_off", "moderation is off on this server", 503)
    entry = await service.moderation.act(room, grant.identity, grant.role, action)
    return entry.to_json()


async def hello_fields(service: ChatService, room: str, grant: Grant | None) -> dict[str, Any]:
    """Moderation and presence fields of a WebSocket's hello frame."""
    fields: dict[str, Any] = {"presence": service.presence.of(room)}
    if service.moderation is None:
        return fields
    identity, role = (grant.identity, grant.role) if grant else (None, None)
    try:
        fields |= await service.moderation.hello(room, identity, role)
        if grant is not None:
            await service.moderation.note_role(room, grant.identity, grant.role)
    except ModerationError:  # store down: the client still reads; posts will say why
        fields |= {"identity": identity, "can_moderate": False, "restriction": None}
    return fields


async def cleared_before(service: ChatService, room: str) -> int | None:
    """History starts after the room's last clear (None: never cleared)."""
    if service.moderation is None:
        return None
    st = service.moderation.cached(room) or await service.moderation.state(room)
    return st.cleared or None


router = api_router("chat moderation")


def mount(app: FastAPI) -> None:
    """The moderation routes (chat/api.py mounts them with the chat's)."""
    include(app, router)


def _moderation(request: Request) -> Moderation:
    """The chat's moderation, or ModerationError 503 when this server runs without it."""
    moderation = require(services(request).chat, "chat").moderation
    if moderation is None:
        raise ModerationError("moderation_off", "moderation is off on this server", 503)
    return moderation


async def _run(
    request: Request, room: str, authorization: str | None, kind: str, body: BaseModel
) -> JSONResponse:
    svc = services(request)
    try:
        grant = moderator_grant(svc.secret, authorization, room)
        action = parse_action(kind, body.model_dump(exclude_none=True))
        entry = await act(require(svc.chat, "chat"), room, grant, action)
    except ModerationError as exc:
        return JSONResponse(exc.body(), exc.status)
    return JSONResponse(entry)


@router.post("/rooms/{room}/moderation/delete", response_model=LogEntryOut, responses=ERRORS)
async def delete(
    request: Request, room: RoomPath, body: DeleteBody, authorization: Auth = None
) -> Any:
    """Delete a message: it leaves history, every client (a `deleted` frame) and recording
    replays; its row keeps a tombstone (who, when)."""
    return await _run(request, room, authorization, "delete", body)


@router.post("/rooms/{room}/moderation/timeout", response_model=LogEntryOut, responses=ERRORS)
async def timeout(
    request: Request, room: RoomPath, body: TimeoutBody, authorization: Auth = None
) -> Any:
    """Time an identity out for 1 s … 14 days: its posts get `timed_out` (with `until`)
    until then; it ends by itself."""
    return await _run(request, room, authorization, "timeout", body)


@router.post("/rooms/{room}/moderation/ban", response_model=LogEntryOut, responses=ERRORS)
async def ban(request: Request, room: RoomPath, body: BanBody, authorization: Auth = None) -> Any:
    """Ban an identity until unbanned: its posts get `banned`, whatever token it uses."""
    return await _run(request, room, authorization, "ban", body)


@router.post("/rooms/{room}/moderation/unban", response_model=LogEntryOut, responses=ERRORS)
async def unban(
    request: Request, room: RoomPath, body: UnbanBody, authorization: Auth = None
) -> Any:
    """Lift a ban or timeout now."""
    return await _run(request, room, authorization, "unban", body)


@router.post("/rooms/{room}/moderation/slow_mode", response_model=LogEntryOut, responses=ERRORS)
async def slow_mode(
    request: Request, room: RoomPath, body: SlowModeBody, authorization: Auth = None
) -> Any:
    """Slow mode: at most one message per `seconds` per chatter (moderators and the
    broadcaster exempt); 0 turns it off."""
    return await _run(request, room, authorization, "slow_mode", body)


@router.post("/rooms/{room}/moderation/clear", response_model=LogEntryOut, responses=ERRORS)
async def clear(
    request: Request, room: RoomPath, authorization: Auth = None, body: ClearBody | None = None
) -> Any:
    """Clear the room's visible history (one room tombstone; no row is removed)."""
    return await _run(request, room, authorization, "clear", body or ClearBody())


@router.get("/rooms/{room}/moderation", response_model=StateOut, responses=ERRORS)
async def state(request: Request, room: RoomPath, authorization: Auth = None) -> Any:
    """Restrictions in force, slow mode, clear mark and known moderators (moderators only)."""
    try:
        moderator_grant(services(request).secret, authorization, room)
        moderation = _moderation(request)
        st = await moderation.state(room)
    except ModerationError as exc:
        return JSONResponse(exc.body(), exc.status)
    return st.snapshot(moderation.clock())


@router.get("/rooms/{room}/moderation/log", response_model=LogPage, responses=ERRORS)
async def moderation_log(
    request: Request,
    room: RoomPath,
    authorization: Auth = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(pattern=r"^\d{1,19}$")] = None,
) -> Any:
    """The room's moderation actions, newest first (moderators only)."""
    try:
        moderator_grant(services(request).secret, authorization, room)
        moderation = _moderation(request)
        cursor = int(before) if before else None
        if cursor is not None and cursor >= 2**63:
            raise ModerationError("bad_request", "before is not an entry id")
        entries = await moderation.read_log(room, limit, cursor)
    except ModerationError as exc:
        return JSONResponse(exc.body(), exc.status)
    return {
        "entries": [e.to_json() for e in entries],
        "next_before": str(entries[-1].id) if len(entries) == limit else None,
    }
