"""Request guards, as pure ASGI middleware around every route the gateway serves.

Order matters for safety: the body cap runs before anything parses JSON, authentication before
the rate limit (so unauthenticated floods cannot use up a real key's budget), and both before
any engine work. Operational routes (``/health``, ``/ready``, ``/metrics``) stay open so
orchestrators and Prometheus can reach them; they expose no request content.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.errors import APIError, error_response

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/get_load"})
# Deeper JSON bodies are refused before anything parses them (``BodyLimits``).
MAX_JSON_DEPTH = 256


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
                           headers={"Retry-After": str(retry)})
        window.append(now)
        for stale in [k for k, v in self.calls.items() if v and now - v[-1] >= 60.0]:
            del self.calls[stale]


class KeyGuard:
    """Bearer keys (when configured) and the per-caller rate limit, on every non-public route.

    The caller is its key, or its client address when the gateway has no keys. The limiter is
    the app's ``state.rate_limiter``, so an operator (or a test) can swap it at run time.
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            scope["app"].state.rate_limiter.hit(self._caller(scope))
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _caller(self, scope: Scope) -> str:
        if not self.keys:
            client = scope.get("client")
            return f"ip:{client[0] if client else '-'}"
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not any(hmac.compare_digest(given, k)
                                                  for k in self.keys):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           headers={"WWW-Authenticate": "Bearer"})
        return f"key:{given.decode(errors='replace')}"


class BodyLimits:
    """Bodies no parser should see: 413 over the size cap, checked while reading (chunked bodies
    included) and before the app sees a byte, so an oversized body is never parsed or buffered
    whole; 400 for JSON nested deeper than ``MAX_JSON_DEPTH``.

    Python's JSON decoder recurses once per level, so a body of a few thousand nested arrays
    raises ``RecursionError`` in whoever parses it (this gateway, FastAPI, vLLM): a 500 for what
    is bad input. No OpenAI request nests anywhere near the bound.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = APIError(413, f"request body exceeds {self.max_bytes} bytes")
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
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if nests_deeper_than(body, MAX_JSON_DEPTH):
            await error_response(APIError(400, f"the JSON body nests deeper than "
                                               f"{MAX_JSON_DEPTH} levels"))(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether ``body`` is JSON whose arrays and objects nest more than ``limit`` levels deep."""
    if body.count(b"[") + body.count(b"{") <= limit:  # too few brackets: no need to parse
        return False
    try:
        level = [json.loads(body)]
    except RecursionError:
        return True
    except ValueError:  # not JSON: the route answers it as it would any other
        return False
    for _ in range(limit):  # one level of containers at a time, without recursion
        level = [child for node in level if isinstance(node, (list, dict))
                 for child in (node.values() if isinstance(node, dict) else node)]
    return any(isinstance(node, (list, dict)) for node in level)


class RequestCounter:
    """One ``requests`` sample per answered request, labelled by route, status and the ratio
    the request ran at (``-`` when it never got that far). Routes are the generation routes and
    the gateway's own; anything else is ``other``, so labels stay a bounded set. Pure ASGI, so
    it does not buffer streams or hide client disconnects from the endpoint."""

    def __init__(self, app: ASGIApp, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

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
        path = scope["path"] if scope["path"] in self.routes else "other"
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.REQUESTS.labels(path, str(status["code"]), scope["state"]["ratio"]).inc()
