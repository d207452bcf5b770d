"""Training-free KV eviction baselines, kvpress-style: one small interface, one tiny class each.

A policy runs after every forward pass of an *uncompressed* model (no beacons). When the cache
holds more than ``budget`` entries it names which entries of one layer to drop. The prompt is never
evicted (the same rule 1 the beacon model obeys), so the baselines compete on the same footing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class KVPolicy(ABC):
    """Chooses KV entries to evict so that a sequence keeps at most ``budget`` entries."""

    name: str = ""
    #: Whether :meth:`select` needs the newest query's attention weights (eager attention).
    needs_attention: bool = False

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"KV budget must be a positive number of entries, got {budget}")
        self.budget = budget

    def num_to_evict(self, kv_len: int, prompt_len: int) -> int:
        """How many entries must go: never the prompt, so a budget below it keeps the prompt."""
        return max(0, min(kv_len - self.budget, kv_len - prompt_len))

    @abstractmethod
    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None) -> torch.Tensor:
        """Indices (into this layer's cache) of the entries to evict; ``attention`` is
        ``[heads, kv_len]``, the newest query's weights, when :attr:`needs_attention`."""


class StreamingLLM(KVPolicy):
    """Attention sinks + most recent entries: the prompt is the sink; drop the oldest generated."""

    name = "streaming"

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None) -> torch.Tensor:
        n = self.num_to_evict(kv_len, prompt_len)
        return torch.arange(prompt_len, prompt_len + n)


class TOVA(KVPolicy):
    """Token Omission Via Attention: drop the generated entries the newest query attends to least
    (weights averaged over heads), layer by layer."""

    name = "tova"
    needs_attention = True

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None) -> torch.Tensor:
        n = self.num_to_evict(kv_len, prompt_len)
        if n == 0:
            return torch.empty(0, dtype=torch.long)
        assert attention is not None, "TOVA needs the newest query's attention weights"
        scores = attention.float().mean(dim=0)[prompt_len:]
        return prompt_len + torch.topk(scores, n, largest=False).indices


POLICIES: dict[str, type[KVPolicy]] = {cls.name: cls for cls in (StreamingLLM, TOVA)}


def make_policy(name: str, budget: int) -> KVPolicy:
    """Build a baseline by name (``streaming`` or ``tova``); one-line error for unknown names."""
    try:
        return POLICIES[name](budget)
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(POLICIES)}") from None
