"""A request's compression: the ratio it asks for, and the scheduler's per-request state.

:func:`resolve_ratio` is the one rule for reading a requested ratio; the gateway, vLLM's front
end (``patches.py``) and the scheduler all call it, and only the scheduler turns the result into
the ratio the request runs at. :class:`RequestCompression` answers the scheduler's questions
from :class:`breadcrumbs_vllm.spec.BeaconSchedule`; the worker learns the answers from the
scheduler's plan (``plan.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule, validate_ratio

#: The ``SamplingParams.extra_args`` key (what vLLM's OpenAI server fills from ``vllm_xargs``).
RATIO_KEY = "compression_ratio"
#: The ``extra_args`` key of the highest ratio a request may rise to under KV pressure (vLLM's
#: ``vllm_xargs`` take only strings and numbers, so a range travels as two keys there).
MAX_KEY = "compression_ratio_max"
#: The requested value that lets the engine choose the ratio at admission (``kv_budget.py``).
AUTO = "auto"


def resolve_ratio(extra_args: Mapping[str, Any] | None,
                  bc: BreadcrumbsConfig) -> int | None | str:
    """The ratio a request starts at: its ``compression_ratio``, else the model's default.

    Returns a supported ratio, ``None`` (no compression) or :data:`AUTO`, which the scheduler
    turns into one of the first two when the request arrives. A range ``{"min": a, "max": b}``
    starts at ``a``. Raises ``ValueError`` naming the supported ratios when the model does not
    support what was asked for (the range's ceiling included, :func:`resolve_ceiling`).
    """
    return _resolve(extra_args, bc)[0]


def resolve_ceiling(extra_args: Mapping[str, Any] | None, bc: BreadcrumbsConfig) -> int | None:
    """The highest ratio a request may rise to while it runs; ``None``: its ratio never changes.

    ``"auto"`` may rise to the model's largest ratio; a range to its ``max`` (``{"min": a,
    "max": b}``, or ``compression_ratio_max`` beside ``compression_ratio`` in ``vllm_xargs``);
    a fixed ratio (or none) never changes.
    """
    return _resolve(extra_args, bc)[1]


def _resolve(extra_args: Mapping[str, Any] | None,
             bc: BreadcrumbsConfig) -> tuple[int | None | str, int | None]:
    """(start, ceiling) of a request; the one parser behind both functions above."""
    if not (extra_args and RATIO_KEY in extra_args):
        return bc.check_ratio(validate_ratio(bc.default_ratio)), None
    raw, raw_max = extra_args[RATIO_KEY], extra_args.get(MAX_KEY)
    if isinstance(raw, Mapping):
        raw, raw_max = raw.get("min"), raw.get("max")
    try:
        start = _one_ratio(raw, bc)
        if start == AUTO:
            ceiling = max(bc.ratios) if raw_max is None else _one_ratio(raw_max, bc)
        else:
            ceiling = None if raw_max is None else _one_ratio(raw_max, bc)
    except ValueError:
        raise ValueError(f"compression ratio {raw!r}{'' if raw_max is None else f' to {raw_max!r}'}"
                         f" is not supported by this model; supported: {_supported(bc)}, none "
                         f"or auto") from None
    if ceiling == AUTO or (ceiling is not None and start != AUTO and (start or 0) > ceiling):
        raise ValueError(f"compression ratio range {raw!r} to {raw_max!r}: the maximum must be "
                         f"a supported ratio at least the minimum ({_supported(bc)})")
    return start, ceiling


def asks_to_rise(extra_args: Mapping[str, Any] | None) -> bool:
    """Whether a request sends a range (which only a beacon model can honour)."""
    return bool(extra_args) and (isinstance(extra_args.get(RATIO_KEY), Mapping)
                                 or extra_args.get(MAX_KEY) is not None)


def _one_ratio(raw: Any, bc: BreadcrumbsConfig) -> int | None | str:
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word == AUTO:
            return AUTO
        raw = None if word in ("", "none", "null", "off") else int(word)
    return bc.check_ratio(validate_ratio(raw))


def _supported(bc: BreadcrumbsConfig) -> str:
    return ", ".join(map(str, sorted(bc.ratios)))


def ratio_xargs(ratio: int | str | None, ceiling: int | None = None) -> dict[str, int | str]:
    """``vllm_xargs`` that make :func:`resolve_ratio` (and :func:`resolve_ceiling`) read
    ``ratio`` (and ``ceiling``) on a vLLM OpenAI server.

    vLLM's request schema takes only strings and numbers there, so "no compression" is sent as
    ``"none"`` (a missing key would mean the model's default ratio instead).
    """
    xargs: dict[str, int | str] = {RATIO_KEY: "none" if ratio is None else ratio}
    if ceiling is not None:
        xargs[MAX_KEY] = ceiling
    return xargs


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class RequestCompression:
    """What the scheduler knows of one compressed request: its beacon schedule and beacon id.

    A request that started uncompressed and rose later (``kv_budget.escalate``) has a schedule
    whose ``prompt_len`` counts the generated tokens it had by then: they are kept like prompt
    tokens, and windows start after them. :attr:`offset` is that count.
    """

    schedule: BeaconSchedule
    beacon_id: int
    #: Generated tokens fed before beacons start (see above); 0 for a request compressed from
    #: its start.
    offset: int = 0
    #: ``max_tokens`` of the request, less ``offset``: how far its KV can still grow
    #: (``kv_budget.py``).
    max_tokens: int = 0

    @property
    def prompt_len(self) -> int:
        """Where beacons may start: the prompt, plus ``offset`` generated tokens."""
        return self.schedule.prompt_len

    @property
    def ratio(self) -> int:
        """The ratio in force now: the last of its path."""
        return self.schedule.path[-1][1]

    @functools.cached_property
    def peak_entries(self) -> int:
        """The most KV entries this request can hold before ``max_tokens`` ends it (rule 5)."""
        return self.schedule.peak_kv_entries(self.max_tokens)

    def generated(self, num_output_tokens: int) -> int:
        """Generated tokens in the schedule's terms (those after ``prompt_len``)."""
        return num_output_tokens - self.offset

    def window_ratio(self, num_output_tokens: int) -> int:
        """The length of the window that holds generated token number ``num_output_tokens``."""
        return self.schedule.ratio_for(self.generated(num_output_tokens) - 1)

    def rise(self, num_output_tokens: int, ratio: int) -> RequestCompression:
        """This request with windows of ``ratio`` from the next window boundary on (the earliest
        whose beacon is not in its token list yet: vLLM has sampled ``num_output_tokens``)."""
        generated = self.generated(num_output_tokens)
        if generated <= 0:  # no window has started: it runs at ``ratio`` from the start
            return dataclasses.replace(self, schedule=BeaconSchedule(self.prompt_len, ratio))
        at = self.schedule.next_boundary(generated)
        return dataclasses.replace(self, schedule=self.schedule.rise(at, ratio))

    def chunk_limit(self, num_computed: int) -> int:
        """Most tokens one forward pass may feed starting at logical index ``num_computed``.

        A chunk never crosses ``prompt_len`` (so prefix caching only ever sees prompt tokens)
        and never goes past a beacon: the window's eviction must happen between the beacon and
        the next token. Within these bounds a chunk is an ordinary causal chunk over contiguous
        physical slots, which is what makes chunked prefill and preemption replay exact.
        """
        if num_computed < self.prompt_len:
            return self.prompt_len - num_computed
        return self.schedule.next_beacon(num_computed) - num_computed + 1

    def physical_start(self, num_computed: int) -> int:
        """Physical slot of the next token fed; the live entries are exactly ``[0, this)``."""
        return self.schedule.physical_index(num_computed)

    def blocks_needed(self, num_computed: int, num_new: int, block_size: int) -> int:
        """Blocks a chunk ``[num_computed, num_computed + num_new)`` needs (rule 5 bound)."""
        last = self.schedule.physical_index(num_computed + num_new - 1)
        return cdiv(last + 1, block_size)
