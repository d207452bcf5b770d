"""OpenAI-style error objects for every failure, so clients never see FastAPI's own formats.

OpenAI clients parse ``{"error": {"message", "type", "param", "code"}}``; FastAPI's defaults
(``{"detail": ...}``) would surface as unreadable errors in them. Handlers here cover our own
``APIError``, Starlette's HTTP errors (404/405), request validation (422) and, as a last resort,
anything unexpected (500, logged without request content).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("server")

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error", 503: "service_unavailable",
}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The error envelope OpenAI clients expect."""

    error: ErrorBody


class APIError(Exception):
    """Raised anywhere in request handling; rendered as an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=_TYPES.get(status, "api_error"),
                              param=param, code=code)
        self.headers = headers


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=exc.body).model_dump(), status_code=exc.status,
                        headers=exc.headers)


def _loc_param(loc: tuple) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``"messages.0.role"``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _loc_param(tuple(first.get("loc", ())))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return error_response(APIError(422, message, param=param, code="invalid_value"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(exc).__name__, exc_info=exc)
        return error_response(APIError(500, "internal error", code="internal_error"))
