"""OpenAI-style error objects for every failure the gateway itself answers.

OpenAI clients parse ``{"error": {"message", "type", "param", "code"}}``. vLLM's serving layer
answers most of its errors in that envelope; the gateway's guards and layer answer theirs with
:func:`error_response` (an ASGI app, so pure-ASGI middleware can send it), and
:class:`ErrorEnvelope` rewrites the few of vLLM's that FastAPI writes as ``{"detail": ...}``
(unknown routes, bodies that are not JSON).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.rewrite import AnswerEditor

log = logging.getLogger("server")

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
}


class APIError(Exception):
    """Raised anywhere in the gateway's request handling; rendered as an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(status, message, param)
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """The error object as vLLM's serving layer writes it (its ``code`` is the HTTP status), so
    the gateway's errors and vLLM's look alike and match vLLM's OpenAPI schema."""
    return {"message": message, "type": _TYPES.get(status, "api_error"), "param": param,
            "code": status}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse({"error": exc.body}, status_code=exc.status, headers=exc.headers)


class ErrorEnvelope:
    """Pure ASGI: a 4xx/5xx JSON answer without an ``error`` object gets one, same status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = AnswerEditor(send, _envelope, range(400, 600))
        await self.app(scope, receive, send)


def _envelope(answer: Any, status: int) -> dict | None:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return None
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    message = detail if isinstance(detail, str) else json.dumps(detail)
    return {"error": error_body(status, message)}


def install_error_handlers(app: FastAPI) -> None:
    """The gateway's own routes: ``APIError`` as itself, anything unexpected as a logged 500
    (without request content)."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(exc).__name__, exc_info=exc)
        return error_response(APIError(500, "internal error"))
