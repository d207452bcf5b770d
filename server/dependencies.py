"""Request guards as FastAPI dependencies and one ASGI middleware (body size).

Order matters for safety: the body cap runs before anything parses JSON, authentication before
the rate limit (so unauthenticated floods cannot use up a real key's budget), and both before
any engine work.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.errors import APIError, error_response

_bearer = HTTPBearer(auto_error=False, description="API key, when the gateway has keys")


def api_key(request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
            ) -> str | None:
    """The caller's key (None when no keys are configured); 401 when keys are configured and
    the request has none or a wrong one."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return None
    given = credentials.credentials if credentials else ""
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return given


class RateLimiter:
    """Sliding one-minute window per caller; memory is bounded by the number of active callers."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.calls: dict[str, deque[float]] = {}

    def hit(self, caller: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        window = self.calls.setdefault(caller, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            retry = max(1, int(60.0 - (now - window[0])) + 1)
            raise APIError(429, f"rate limit of {self.per_minute} requests per minute exceeded",
                           code="rate_limit_exceeded", headers={"Retry-After": str(retry)})
        window.append(now)
        for stale in [k for k, v in self.calls.items() if v and now - v[-1] >= 60.0]:
            del self.calls[stale]


def rate_limited(request: Request, key: Annotated[str | None, Depends(api_key)]) -> None:
    caller = f"key:{key}" if key else f"ip:{request.client.host if request.client else '-'}"
    request.app.state.rate_limiter.hit(caller)


class BodySizeLimit:
    """413 for request bodies over the cap, checked while reading (chunked bodies included)
    and before the app sees a byte, so an oversized body is never parsed or buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = APIError(413, f"request body exceeds {self.max_bytes} bytes",
                           code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_big)(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await error_response(too_big)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class RequestCounter:
    """One ``requests`` sample per answered request, labelled by route template, status and the
    ratio the service resolved (``-`` when the request never got that far). Pure ASGI, so it
    does not buffer streams or hide client disconnects from the endpoint."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        scope.setdefault("state", {})["ratio"] = "-"
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            metrics.REQUESTS.labels(route.path if route else "unmatched", str(status["code"]),
                                    scope["state"]["ratio"]).inc()
