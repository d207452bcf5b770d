"""The one interface the gateway needs from an engine: an OpenAI surface to forward to.

A backend starts (and stops) what serves the OpenAI API -- vLLM's own serving layer over an
in-process ``AsyncLLM`` (embedded), or one vLLM server over HTTP (remote) -- and exposes it as an
ASGI app. The gateway's own layer (``server/layer.py``) sits in front of that app for every
backend, so bearer keys, caps, ``compression_ratio`` and ``usage.breadcrumbs`` mean the same in
both modes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from starlette.types import ASGIApp


class EngineBackend(ABC):
    """Lifecycle, readiness, load and the OpenAI app of one engine."""

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
    async def load(self) -> int:
        """The engine's ``GET /get_load`` figure (``breadcrumbs_vllm/vllm_plugin/load.py``)."""

    @property
    @abstractmethod
    def app(self) -> ASGIApp | None:
        """The OpenAI-compatible app, once started (``None`` before)."""
