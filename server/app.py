"""The app factory: settings in, the gateway's ASGI app out.

The gateway is a thin layer in front of vLLM's own OpenAI serving app (embedded) or of one vLLM
server (remote)::

    RequestCounter -> BodyLimits -> KeyGuard -> CompressionLayer -> ErrorEnvelope
        -> /health, /ready, /metrics
        -> the backend's OpenAI app

The backend starts in the lifespan and stops with the app; until it is up, every route but the
operational ones answers 503. Tests and ``breadcrumbs serve`` both go through ``create_app``; a
test may inject its own backend.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
from server.compression import RatioPolicy
from server.dependencies import PUBLIC_PATHS, BodyLimits, KeyGuard, RateLimiter, RequestCounter
from server.engines.base import EngineBackend
from server.errors import APIError, ErrorEnvelope, error_response, install_error_handlers
from server.layer import ROUTES, CompressionLayer
from server.routers import ops
from server.settings import Settings


def make_backend(settings: Settings, policy: RatioPolicy) -> EngineBackend:
    """Remote when an upstream URL is configured, embedded otherwise."""
    if settings.upstream:
        from server.engines.remote import RemoteBackend

        return RemoteBackend(settings)
    from server.engines.embedded import EmbeddedBackend

    return EmbeddedBackend(settings, policy)


class _Backend:
    """The backend's OpenAI app, or a 503 while it is not up."""

    def __init__(self, backend: EngineBackend) -> None:
        self.backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.backend.app
        if app is None:
            await error_response(APIError(503, "engine not ready"))(
                scope, receive, send)
            return
        await app(scope, receive, send)


def create_app(settings: Settings, backend: EngineBackend | None = None) -> FastAPI:
    config = read_breadcrumbs_config(settings.model)  # fails fast on a bad model path
    policy = RatioPolicy(config)
    backend = backend or make_backend(settings, policy)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    # The OpenAPI schema and docs are vLLM's (they describe the routes that serve requests).
    app = FastAPI(title="breadcrumbs gateway", lifespan=lifespan, openapi_url=None,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.backend = backend
    app.state.policy = policy
    install_error_handlers(app)
    app.include_router(ops.router)
    app.mount("/", _Backend(backend))

    app.add_middleware(ErrorEnvelope)
    app.add_middleware(CompressionLayer, settings=settings, policy=policy, backend=backend)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.add_middleware(KeyGuard, keys=settings.api_keys)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestCounter, routes=frozenset({*ROUTES, *PUBLIC_PATHS, "/v1/models"}))
    return app
