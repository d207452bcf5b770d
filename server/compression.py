"""Per-request compression: resolving ``compression_ratio`` and accounting what it saved.

The ``"auto"`` policy (beyond the paper, whose ratio is static): given the engine's current KV
usage ``u`` (fraction of the pool in use), the pool size in tokens and the request's worst case
(``n`` times the peak KV entries ``BeaconSchedule`` gives for prompt + ``max_tokens``), take the
*least* compression -- none first, then the supported ratios in increasing order -- whose
projected peak keeps ``u + peak / pool <= target``. When nothing fits, take the ratio with the
smallest projected peak (for short requests a huge ratio can peak higher than a middling one,
because a whole window is held before its beacon). So an idle server answers uncompressed and
compression rises with load: a busy server degrades memory before it queues. When the pool size
is unknown (a remote engine that does not publish it), the projection is the current usage
alone: ``u <= target`` means no compression, otherwise the smallest-peak ratio.

Usage accounting follows ``BeaconSchedule`` exactly (the plugin is tested against the same
rules): the token that ends a generation is sampled but never fed, so ``n`` generated tokens
mean ``n - 1`` fed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule
from server.errors import APIError
from server.schemas import BreadcrumbsUsage


@dataclass(frozen=True)
class KVState:
    """What an engine reports about its KV pool."""

    usage: float  # fraction of blocks in use, 0..1
    capacity_tokens: int | None  # pool size in tokens, when known


class RatioPolicy:
    """Validates explicit ratios against the model and resolves ``"auto"``."""

    def __init__(self, config: BreadcrumbsConfig, kv_target: float) -> None:
        self.config = config
        self.kv_target = kv_target

    @property
    def ratios(self) -> list[int]:
        return sorted(self.config.ratios)

    def check(self, requested: int | str | None) -> int | str | None:
        """400 for a ratio the model does not support, naming the supported set."""
        if requested == "auto" or requested is None:
            return requested
        try:
            return self.config.check_ratio(requested or None)  # 0 means none (spec)
        except ValueError as exc:
            raise APIError(400, str(exc), param="compression_ratio",
                           code="unsupported_compression_ratio") from None

    def resolve(self, requested: int | str | None, kv: KVState, prompt_len: int,
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


def usage_breadcrumbs(ratio: int | None, savings: list[ChoiceSavings]) -> BreadcrumbsUsage:
    return BreadcrumbsUsage(
        ratio=ratio,
        beacons_inserted=sum(s.beacons for s in savings),
        peak_kv_entries=sum(s.peak_entries for s in savings),
        kv_entries_saved=sum(s.entries_saved for s in savings),
    )
