"""The one interface the HTTP layer needs from an engine, so chat/completions never see vLLM.

A backend turns token ids and sampling parameters into a stream of per-choice text deltas.
Closing the stream early (a client that went away) must abort the request in the engine and so
free its KV blocks; both backends do that in the generator's ``finally``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.compression import KVState


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    n: int
    stop: list[str]
    temperature: float
    top_p: float
    seed: int | None
    ignore_eos: bool
    ratio: int | None


@dataclass(frozen=True)
class Delta:
    """New output of one choice: text, how many tokens it took, and why it ended (if it did)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None


class EngineBackend(ABC):
    """Lifecycle (``start``/``stop``), health, KV state and generation."""

    name: str
    # False where a seeded request must not be compressed: vLLM's CPU sampler cannot rewind a
    # seeded generator when a step's sample is discarded (a beacon step), and the engine dies.
    seeded_compression: bool = True

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def ready(self) -> bool:
        """Engine loaded and answering."""

    @abstractmethod
    def kv_state(self) -> KVState: ...

    @abstractmethod
    def generate(self, prompt_ids: list[int], params: GenParams,
                 request_id: str) -> AsyncIterator[Delta]: ...
