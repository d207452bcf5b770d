"""The app factory: settings in, a FastAPI app with its engine backend out.

The engine starts in the lifespan (so ``/health`` answers while it loads and ``/ready`` flips
once it is up) and stops with the app. Tests and ``breadcrumbs serve`` both go through
``create_app``; a test may inject its own backend.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
from breadcrumbs_vllm.tokenizer import load_tokenizer
from server.compression import RatioPolicy
from server.dependencies import BodySizeLimit, RateLimiter, RequestCounter
from server.engines.base import EngineBackend
from server.errors import install_error_handlers
from server.routers import openai, ops
from server.service import GenerationService
from server.settings import Settings


def make_backend(settings: Settings) -> EngineBackend:
    """Remote when backend URLs are configured, embedded otherwise."""
    if settings.backends:
        from server.engines.remote import RemoteBackend

        return RemoteBackend(settings)
    from server.engines.embedded import EmbeddedBackend

    return EmbeddedBackend(settings)


def create_app(settings: Settings, backend: EngineBackend | None = None) -> FastAPI:
    config = read_breadcrumbs_config(settings.model)  # fails fast on a bad model path
    backend = backend or make_backend(settings)
    service = GenerationService(settings, backend, load_tokenizer(settings.model),
                                RatioPolicy(config, settings.kv_target))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = FastAPI(title="breadcrumbs gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible serving of Breadcrumbs beacon models with a "
                              "per-request `compression_ratio`.")
    app.state.settings = settings
    app.state.service = service
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(ops.router)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestCounter)  # outermost: counts 413s too
    return app
