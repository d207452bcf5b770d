"""Per-request compression: resolving ``compression_ratio`` and accounting what it saved.

The ``"auto"`` policy (beyond the paper, whose ratio is static): given the engine's current KV
usage ``u`` (fraction of the pool in use), the pool size in tokens and the request's worst case
(``n`` times the peak KV entries ``BeaconSchedule`` gives for prompt + ``max_tokens``), take the
*least* compression -- none first, then the supported ratios in increasing order -- whose
projected peak keeps ``u + peak / pool <= target``. When nothing fits, take the ratio with the
smallest projected peak (for short requests a huge ratio can peak higher than a middling one,
because a whole window is held before its beacon). So an idle server answers uncompressed and
compression rises with load: a busy server degrades memory before it queues. When the pool size
is unknown, the projection is the current usage alone: ``u <= target`` means no compression,
otherwise the smallest-peak ratio.

Usage accounting follows ``BeaconSchedule`` exactly (the plugin is tested against the same
rules): the token that ends a generation is sampled but never fed, so ``n`` generated tokens
mean ``n - 1`` fed ones. A :class:`RequestAccount` collects, per engine request, the prompt
length, the ratio it ran at and each choice's generated tokens; whoever sees the engine's
outputs fills it (the embedded engine client, or the gateway reading a remote answer).
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule
from server.errors import APIError


@dataclass(frozen=True)
class KVState:
    """What an engine reports about its KV pool."""

    usage: float  # fraction of blocks in use, 0..1
    capacity_tokens: int | None  # pool size in tokens, when known


#: What a request may send as ``compression_ratio``: a ratio, ``None`` (no compression) or auto.
Requested = int | str | None


class RatioPolicy:
    """Validates requested ratios against the model and resolves ``"auto"``."""

    def __init__(self, config: BreadcrumbsConfig, kv_target: float) -> None:
        self.config = config
        self.kv_target = kv_target

    @property
    def ratios(self) -> list[int]:
        return sorted(self.config.ratios)

    def check(self, requested: object) -> Requested:
        """The request's ratio, normalised (``"none"``/``0`` mean none); 400 for anything else
        than a ratio the model supports, ``None`` or ``"auto"``, naming the supported set."""
        if isinstance(requested, str) and requested.strip().lower() in ("none", "null", "off"):
            return None
        if requested == "auto" or requested is None:
            return requested
        if isinstance(requested, bool) or not isinstance(requested, int):
            raise APIError(400, f"compression_ratio must be an integer, null or \"auto\", not "
                                f"{requested!r}", param="compression_ratio")
        try:
            return self.config.check_ratio(requested or None)  # 0 means none (spec)
        except ValueError as exc:
            raise APIError(400, str(exc), param="compression_ratio") from None

    def resolve(self, requested: Requested, kv: KVState, prompt_len: int,
                max_tokens: int, n: int) -> int | None:
        ratio = self.check(requested)
        if ratio != "auto":
            return ratio  # type: ignore[return-value]
        peaks = {c: n * BeaconSchedule(prompt_len, c).peak_kv_entries(max_tokens)
                 for c in [None, *self.ratios]}
        for candidate, peak in peaks.items():
            share = peak / kv.capacity_tokens if kv.capacity_tokens else 0.0
            if kv.usage + share <= self.kv_target:
                return candidate
        return min(self.ratios, key=lambda c: (peaks[c], c)) if self.ratios else None


@dataclass(frozen=True)
class ChoiceSavings:
    beacons: int
    peak_entries: int
    entries_saved: int
    blocks_saved: int


def choice_savings(prompt_len: int, ratio: int | None, generated: int,
                   block_size: int) -> ChoiceSavings:
    """KV figures of one finished choice, from the spec's schedule (rule 5)."""
    fed = max(generated - 1, 0)
    schedule = BeaconSchedule(prompt_len, ratio)
    held = schedule.kv_entries(fed)
    uncompressed = prompt_len + fed
    return ChoiceSavings(
        beacons=schedule.num_beacons_fed(fed),
        peak_entries=schedule.peak_kv_entries(fed),
        entries_saved=uncompressed - held,
        blocks_saved=math.ceil(uncompressed / block_size) - math.ceil(held / block_size),
    )


@dataclass
class Generation:
    """One engine request: its prompt length, the ratio it ran at, tokens per choice index."""

    prompt_len: int
    ratio: int | None
    tokens: dict[int, int] = field(default_factory=dict)

    def add(self, index: int, num_tokens: int) -> None:
        self.tokens[index] = self.tokens.get(index, 0) + num_tokens

    def savings(self, block_size: int) -> list[ChoiceSavings]:
        return [choice_savings(self.prompt_len, self.ratio, n, block_size)
                for n in self.tokens.values()]


@dataclass
class RequestAccount:
    """What one HTTP request's generations did to the KV cache (an HTTP request may fan out to
    several engine requests: a list of prompts). ``route`` labels the gateway's metrics."""

    route: str
    requested: Requested
    generations: list[Generation] = field(default_factory=list)

    @property
    def ratio(self) -> int | None:
        """The ratio the engine ran at (``"auto"`` resolved), once a generation started."""
        if self.generations:
            return self.generations[0].ratio
        return None if self.requested == "auto" else self.requested  # type: ignore[return-value]

    def usage_breadcrumbs(self, block_size: int) -> dict[str, int | None]:
        """The ``usage.breadcrumbs`` object, summed over every choice of every generation."""
        savings = [s for g in self.generations for s in g.savings(block_size)]
        return {
            "ratio": self.ratio,
            "beacons_inserted": sum(s.beacons for s in savings),
            "peak_kv_entries": sum(s.peak_entries for s in savings),
            "kv_entries_saved": sum(s.entries_saved for s in savings),
        }


#: The account of the HTTP request being served. The gateway sets it before handing the request
#: to vLLM's serving layer, whose ``engine_client.generate`` call runs in the same context.
CURRENT_ACCOUNT: ContextVar[RequestAccount | None] = ContextVar("breadcrumbs_account",
                                                                default=None)
