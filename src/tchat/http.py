"""HTTP helpers shared by the capabilities' routes."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def json_error(status: int, code: str, detail: str) -> JSONResponse:
    """The error body every route uses: `{"error": code, "detail": why}`."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status)
