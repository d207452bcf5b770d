"""Training-free KV eviction baselines, kvpress-style: one small interface, one tiny class each.

A policy runs after every forward pass of an *uncompressed* model (no beacons). When the cache
holds more than ``budget`` entries it names which entries of one layer to drop; the engine removes
them with a boolean mask, so the kept entries stay in their original order (kvpress's decoding
path does not, NVIDIA/kvpress#173: nothing here is taken from its output).

Protocol shared by every policy, unless its docstring says otherwise:

- **Which entries may go.** The prompt is never evicted (the same rule 1 the beacon model obeys),
  so the baselines compete on the same footing; only generated entries are candidates.
- **How often.** After every forward pass, back down to ``budget`` (so the trace reads
  ``budget + 1`` right after each forward, the newest entry included, as the engine measures).
- **Granularity.** One kept set per layer, shared by its heads (the reference cache is one tensor
  per layer); scores are averaged over heads. Ties go against the older entry.
- **Recent windows.** A policy that always keeps its newest ``w`` entries shrinks ``w`` to the
  budget's room beyond the protected prefix, so that the budget always holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


def lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the ``n`` lowest scores in ascending position order; ties go to the older."""
    order = torch.sort(scores, stable=True).indices
    return torch.sort(order[:n]).values


def keep_mask(kv_len: int, evict: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(kv_len, dtype=torch.bool)
    keep[evict] = False
    return keep


class KVPolicy(ABC):
    """Chooses KV entries to evict so that a sequence keeps at most ``budget`` entries.

    One instance serves one sequence: stateful policies (H2O, SnapKV, R-KV) keep per-layer
    history aligned with that sequence's cache, which holds because the engine evicts exactly
    the entries :meth:`select` returns, and calls it once per layer after every forward.
    """

    name: str = ""
    #: Whether :meth:`select` needs the newest query's attention weights (eager attention).
    needs_attention: bool = False

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"KV budget must be a positive number of entries, got {budget}")
        self.budget = budget

    def protected(self, prompt_len: int) -> int:
        """How many leading entries are never evicted: the prompt, unless a policy says not."""
        return prompt_len

    def num_to_evict(self, kv_len: int, prompt_len: int) -> int:
        """How many entries must go: never a protected one, so a budget below them keeps them."""
        return max(0, min(kv_len - self.budget, kv_len - self.protected(prompt_len)))

    def candidates(self, kv_len: int, prompt_len: int, recent: int) -> tuple[int, int]:
        """``[start, stop)``: the entries that may go when the newest ``recent`` are kept.

        The window shrinks to the budget's room beyond the protected prefix, so the range always
        holds at least :meth:`num_to_evict` entries.
        """
        start = self.protected(prompt_len)
        room = max(0, self.budget - start)
        return start, kv_len - min(recent, room)

    @abstractmethod
    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None,
               layer: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (into this layer's cache) of the entries to evict. ``attention`` is
        ``[heads, kv_len]``, the newest query's weights, when :attr:`needs_attention`; ``keys``
        is the layer's ``[kv_heads, kv_len, head_dim]`` cache, newest entry included."""


class StreamingLLM(KVPolicy):
    """Attention sinks + most recent entries (Xiao et al. 2023): drop the oldest non-sink entry.

    This variant keeps the whole prompt as its sink, so only generated entries go (the shared
    protocol). :class:`StreamingLLMSinks` is the paper's own setting, a few sink tokens.
    """

    name = "streaming"
    #: Leading entries kept as sinks; ``None`` keeps the whole prompt.
    sinks: int | None = None

    def protected(self, prompt_len: int) -> int:
        return prompt_len if self.sinks is None else self.sinks

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None,
               layer: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        start = self.protected(prompt_len)
        return torch.arange(start, start + self.num_to_evict(kv_len, prompt_len))


class StreamingLLMSinks(StreamingLLM):
    """StreamingLLM as published: the first 4 entries are sinks and everything after them,
    prompt included, is a window of the most recent entries. The one policy that may evict the
    prompt; it keeps exactly ``budget`` entries once the cache is longer than that."""

    name = "streaming-sinks"
    sinks = 4


class TOVA(KVPolicy):
    """Token Omission Via Attention: drop the generated entries the newest query attends to least
    (weights averaged over heads), layer by layer."""

    name = "tova"
    needs_attention = True

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None,
               layer: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        n = self.num_to_evict(kv_len, prompt_len)
        if n == 0:
            return torch.empty(0, dtype=torch.long)
        assert attention is not None, "TOVA needs the newest query's attention weights"
        return prompt_len + lowest(attention.float().mean(dim=0)[prompt_len:], n)


class H2O(KVPolicy):
    """Heavy-Hitter Oracle (Zhang et al. 2023): keep the entries that have gathered the most
    attention, summed over every query since they entered the cache, plus a recent window.

    Window: half the budget's room beyond the prompt is the recent window and the other half
    heavy hitters (H2O's equal split). An entry's sum starts with the first query that sees it
    (itself); the prompt's prefill attention is not accumulated, which is harmless because the
    prompt is never evicted. Sums of evicted entries are dropped with them.
    """

    name = "h2o"
    needs_attention = True

    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        self._sums: dict[int, torch.Tensor] = {}

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None,
               layer: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        assert attention is not None, "H2O needs the newest query's attention weights"
        sums = self._sums.get(layer, torch.zeros(0))
        sums = F.pad(sums, (0, kv_len - sums.numel())) + attention.float().mean(dim=0)
        n = self.num_to_evict(kv_len, prompt_len)
        start, stop = self.candidates(kv_len, prompt_len,
                                      max(0, self.budget - self.protected(prompt_len)) // 2)
        evict = start + lowest(sums[start:stop], n)
        self._sums[layer] = sums[keep_mask(kv_len, evict)]
        return evict


class SnapKV(KVPolicy):
    """SnapKV-style scoring (Li et al. 2024), applied at every decoding step: an entry's score
    is the attention the last ``window`` queries paid it (averaged over heads, summed over the
    queries), max-pooled over ``kernel`` neighbouring entries so that a kept entry keeps its
    neighbours' context; the newest ``window`` entries (the observation window) are always kept.

    Windows: 8 queries and a kernel of 5 (SnapKV's own are sized for prompts of thousands of
    tokens; the generated room here is tens of entries). Max pooling runs over the cache in its
    current order, padding with ``-inf`` at the ends. SnapKV proper compresses the prompt once; here
    the prompt is kept whole and the rule runs on generated entries, the way decoding presses apply
    it.
    """

    name = "snapkv"
    needs_attention = True
    window = 8
    kernel = 5

    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        self._rows: dict[int, torch.Tensor] = {}  # per layer: [<= window, kv_len]

    def importance(self, rows: torch.Tensor) -> torch.Tensor:
        """The window's summed attention per entry, max-pooled: ``[kv_len]``."""
        summed = rows.sum(dim=0)[None, None]
        return F.max_pool1d(summed, self.kernel, stride=1, padding=self.kernel // 2)[0, 0]

    def score(self, rows: torch.Tensor, keys: torch.Tensor | None, start: int,
              stop: int) -> torch.Tensor:
        """Scores of the candidates ``[start, stop)``; the lowest go."""
        return self.importance(rows)[start:stop]

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None,
               layer: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        assert attention is not None, f"{self.name} needs the newest query's attention weights"
        old = self._rows.get(layer, torch.zeros(0, kv_len - 1))
        rows = torch.cat([F.pad(old, (0, 1)), attention.float().mean(dim=0)[None]])[-self.window:]
        n = self.num_to_evict(kv_len, prompt_len)
        start, stop = self.candidates(kv_len, prompt_len, self.window)
        evict = start + lowest(self.score(rows, keys, start, stop), n)
        self._rows[layer] = rows[:, keep_mask(kv_len, evict)]
        return evict


class RKV(SnapKV):
    """R-KV-style (Cai et al. 2025): importance from attention, minus redundancy among keys.

    ``score = mix * I - (1 - mix) * R`` over the candidates, with ``mix = 0.1`` (importance
    weighted lightly, as in R-KV; kvpress's R-KV press uses 0.07): ``I`` is SnapKV's pooled
    window attention (kernel 7, as in that press), normalised to sum to 1 over the candidates;
    ``R`` is each candidate key's mean cosine similarity to the other candidates (averaged over
    KV heads), passed through a softmax over the candidates so that both terms sum to 1. Of two
    identical keys with equal importance the older goes. This simplifies R-KV's redundancy, which
    also exempts each key's most recent near-duplicate above a similarity threshold. Keys are the
    cached (post-RoPE) ones; the observation window is SnapKV's, 8 entries, always kept.
    """

    name = "rkv"
    kernel = 7
    mix = 0.1

    def score(self, rows: torch.Tensor, keys: torch.Tensor | None, start: int,
              stop: int) -> torch.Tensor:
        assert keys is not None, "R-KV needs the layer's keys"
        importance = super().score(rows, keys, start, stop)
        importance = importance / importance.sum().clamp_min(1e-12)
        unit = F.normalize(keys[:, start:stop].float(), dim=-1)
        similarity = (unit @ unit.transpose(1, 2)).mean(dim=0)  # [m, m], heads averaged
        m = stop - start
        others = (similarity.sum(dim=1) - similarity.diagonal()) / max(m - 1, 1)
        return self.mix * importance - (1 - self.mix) * torch.softmax(others, dim=0)


class RandomEviction(KVPolicy):
    """Evict generated entries uniformly at random, seeded: the floor every scoring rule must beat.

    At about 4x compression random eviction is reported to match SnapKV, R-KV and TriAttention
    (arXiv 2609.03430), so a claim of *learned* compression at 8-16x is made against it. Each
    layer draws its own entries from one generator per sequence, seeded, so a run is reproducible
    given the order of calls (the engine calls every layer after every forward, in layer order).
    """

    name = "random"

    def __init__(self, budget: int, seed: int = 0) -> None:
        super().__init__(budget)
        self._generator = torch.Generator().manual_seed(seed)

    def select(self, kv_len: int, prompt_len: int, attention: torch.Tensor | None,
               layer: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        n = self.num_to_evict(kv_len, prompt_len)
        start = self.protected(prompt_len)
        drawn = torch.randperm(kv_len - start, generator=self._generator)[:n]
        return start + torch.sort(drawn).values


POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (StreamingLLM, StreamingLLMSinks, TOVA, H2O, SnapKV, RKV, RandomEviction)}


def make_policy(name: str, budget: int) -> KVPolicy:
    """Build a baseline by name (see :data:`POLICIES`); one-line error for unknown names."""
    try:
        return POLICIES[name](budget)
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(POLICIES)}") from None
