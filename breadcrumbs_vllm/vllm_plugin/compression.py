"""A request's compression: the ratio it asks for, and the scheduler's per-request state.

:func:`resolve_ratio` is the one rule for reading a requested ratio; the gateway, vLLM's front
end (``patches.py``) and the scheduler all call it, and only the scheduler turns the result into
the ratio the request runs at. :class:`RequestCompression` answers the scheduler's questions
from :class:`breadcrumbs_vllm.spec.BeaconSchedule`; the worker learns the answers from the
scheduler's plan (``plan.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule, insert_beacons, validate_ratio

#: The ``SamplingParams.extra_args`` key (what vLLM's OpenAI server fills from ``vllm_xargs``).
RATIO_KEY = "compression_ratio"
#: The requested value that lets the engine choose the ratio at admission (``kv_budget.py``).
AUTO = "auto"


def resolve_ratio(extra_args: Mapping[str, Any] | None,
                  bc: BreadcrumbsConfig) -> int | None | str:
    """The ratio a request asks for: its ``compression_ratio``, else the model's default.

    Returns a supported ratio, ``None`` (no compression) or :data:`AUTO`, which the scheduler
    turns into one of the first two when the request arrives. Raises ``ValueError`` naming the
    supported ratios when the model does not support the one asked for.
    """
    if not (extra_args and RATIO_KEY in extra_args):
        return bc.check_ratio(validate_ratio(bc.default_ratio))
    raw = extra_args[RATIO_KEY]
    try:
        if isinstance(raw, str):
            word = raw.strip().lower()
            if word == AUTO:
                return AUTO
            raw = None if word in ("", "none", "null", "off") else int(word)
        return bc.check_ratio(validate_ratio(raw))
    except ValueError:
        supported = ", ".join(map(str, sorted(bc.ratios)))
        raise ValueError(f"compression ratio {raw!r} is not supported by this model; "
                         f"supported: {supported}, none or auto") from None


def ratio_xargs(ratio: int | str | None) -> dict[str, int | str]:
    """``vllm_xargs`` that make :func:`resolve_ratio` pick ``ratio`` on a vLLM OpenAI server.

    vLLM's request schema takes only strings and numbers there, so "no compression" is sent as
    ``"none"`` (a missing key would mean the model's default ratio instead).
    """
    return {RATIO_KEY: "none" if ratio is None else ratio}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class RequestCompression:
    """What one compressed request needs to know: its beacon schedule and the beacon id."""

    schedule: BeaconSchedule
    beacon_id: int
    #: ``max_tokens`` of the request: how far its KV can still grow (``kv_budget.py``).
    max_tokens: int = 0

    @property
    def prompt_len(self) -> int:
        return self.schedule.prompt_len

    @property
    def ratio(self) -> int:
        assert self.schedule.ratio is not None
        return self.schedule.ratio

    @functools.cached_property
    def peak_entries(self) -> int:
        """The most KV entries this request can hold before ``max_tokens`` ends it (rule 5)."""
        return self.schedule.peak_kv_entries(self.max_tokens)

    def fed_outputs(self, output_ids: Sequence[int]) -> list[int]:
        """The generated tokens with beacons inserted, as the request feeds them (rule 2)."""
        return insert_beacons(output_ids, self.schedule.ratio, self.beacon_id)[0]

    def chunk_limit(self, num_computed: int) -> int:
        """Most tokens one forward pass may feed starting at logical index ``num_computed``.

        A chunk never crosses the prompt's end (so prefix caching only ever sees prompt tokens)
        and never goes past a beacon: the window's eviction must happen between the beacon and
        the next token. Within these bounds a chunk is an ordinary causal chunk over contiguous
        physical slots, which is what makes chunked prefill and preemption replay exact.
        """
        if num_computed < self.prompt_len:
            return self.prompt_len - num_computed
        offset = num_computed - self.prompt_len
        return self.ratio - offset % (self.ratio + 1) + 1

    def physical_start(self, num_computed: int) -> int:
        """Physical slot of the next token fed; the live entries are exactly ``[0, this)``."""
        return self.schedule.physical_index(num_computed)

    def blocks_needed(self, num_computed: int, num_new: int, block_size: int) -> int:
        """Blocks a chunk ``[num_computed, num_computed + num_new)`` needs (rule 5 bound)."""
        last = self.schedule.physical_index(num_computed + num_new - 1)
        return cdiv(last + 1, block_size)
