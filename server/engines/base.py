"""The one interface the gateway needs from an engine: an OpenAI surface to forward to.

A backend starts (and stops) what serves the OpenAI API -- vLLM's own serving layer over an
in-process ``AsyncLLM`` (embedded), or one vLLM server over HTTP (remote) -- and exposes it as an
ASGI app. The gateway's own layer (``server/layer.py``) sits in front of that app for every
backend, so bearer keys, caps, ``compression_ratio`` and ``usage.breadcrumbs`` mean the same in
both modes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from starlette.types import ASGIApp

from server.compression import KVState, Requested


class EngineBackend(ABC):
    """Lifecycle, readiness, KV state and the OpenAI app of one engine."""

    name: str
    #: True when the backend fills each request's ``RequestAccount`` as the engine's outputs
    #: pass through it; otherwise the gateway reads the figures off the answer.
    fills_account: bool = False

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def ready(self) -> bool:
        """Engine loaded and answering."""

    @abstractmethod
    def kv_state(self) -> KVState: ...

    @property
    @abstractmethod
    def app(self) -> ASGIApp | None:
        """The OpenAI-compatible app, once started (``None`` before)."""

    async def resolve_auto(self, route: str, body: dict[str, Any]) -> Requested:
        """What ``"auto"`` becomes before the request is forwarded. The embedded engine client
        resolves it itself at admission (it knows the exact prompt length), so by default it
        travels on unchanged."""
        return "auto"
