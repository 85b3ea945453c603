"""OpenAPI of the WHIP/WHEP routes (sfu/api.py) whose bodies are text FastAPI does not
describe by itself: SDP offers and answers, ICE fragments."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from tchat.http import error_responses
from tchat.sfu.sdpfrag import MEDIA_TYPE as FRAGMENT

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_TEXT = {"schema": {"type": "string"}}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


def _text_exchange(
    media_type: str, asked: str, status: int, answered: dict[str, Any], *errors: int
) -> dict[str, Any]:
    """A route taking a `media_type` body (`asked`) and answering `status` with one."""
    return {
        "response_class": Response,
        "status_code": status,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "description": asked,
                "content": {media_type: _TEXT},
            },
            "security": BEARER,
        },
        "responses": {
            status: {**answered, "content": {media_type: _TEXT}},
            **error_responses(*errors),
        },
    }


def sdp_exchange(created: str, *errors: int) -> dict[str, Any]:
    """A WHIP/WHEP POST: an application/sdp offer in, 201 with the answer."""
    headers = {
        "Location": _header("The session URL: DELETE ends the session, PATCH restarts ICE."),
        "ETag": _header("Names the ICE session (If-Match of a PATCH)."),
        "Link": _header(
            'One per STUN/TURN server (when ICE_SERVERS is set): `<stun:…>; rel="ice-server"`.'
        ),
    }
    offer = "The SDP offer (the whole offer, ICE candidates included)."
    answered = {"description": created, "headers": headers}
    return _text_exchange("application/sdp", offer, 201, answered, *errors)


PATCH_DOC = _text_exchange(
    FRAGMENT,
    "New ice-ufrag/ice-pwd (an ICE restart) or trickled candidates; If-Match: * or our ETag.",
    200,
    {
        "description": "ICE restarted: our new credentials and candidate.",
        "headers": {"ETag": _header("Names the new ICE session.")},
    },
    400, 401, 403, 404, 412, 413, 415, 503,
)  # fmt: skip
PATCH_DOC["responses"][204] = {"description": "Candidates accepted (ICE-lite does not need them)."}

SESSION_DOC: dict[str, Any] = {
    "response_class": Response,
    "openapi_extra": {"security": BEARER},
    "responses": {200: {"description": "Ended."}, **error_responses(401, 403, 404, 503)},
}
