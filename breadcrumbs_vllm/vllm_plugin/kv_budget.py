"""An engine's KV budget: usage projected over its live requests' growth, and the "auto" rule.

Both are computed in the engine's scheduler, from that engine's own pool, so they mean the same
behind any router, under data parallelism and in the gateway (which only forwards ``"auto"``).

**Projected usage** (exported as ``breadcrumbs_kv_cache_usage_projected_perc``, one series per
engine, and the basis of ``GET /get_load``)::

    projected = used + sum(max(0, peak(r) - live(r)) for r in unfinished requests) / pool

where ``used`` is vLLM's own ``kv_cache_usage_perc`` (blocks in use / blocks in the pool),
``pool`` is the pool in tokens, ``live(r)`` the KV entries request ``r`` holds now and
``peak(r)`` the most it can hold before ``max_tokens`` ends it: ``prompt + max_tokens``
uncompressed, ``BeaconSchedule(prompt, c).peak_kv_entries(max_tokens)`` at ratio ``c`` (about
``prompt + max_tokens / c``). It counts waiting and preempted requests too (``live`` is 0), so it
is what the engine is already committed to, and can pass 1.0: then it must preempt at some point.

**"auto"** (beyond the paper, whose ratio is static): take the *least* compression -- none first,
then the supported ratios in increasing order -- whose peak keeps
``projected + peak / pool <= target`` (``target`` defaults to 0.8; vLLM's
``--additional-config '{"breadcrumbs_kv_target": 0.7}'`` sets it). When nothing fits, take the
ratio with the smallest peak (for a short request a huge ratio can peak higher than a middling
one, because a whole window is held before its beacon). So an idle engine answers uncompressed
and compression rises with load: a busy engine degrades memory before it queues.

**Escalation** (issue 42; the paper's first open question): a request that may rise -- sent with
``"auto"`` (up to the model's largest ratio) or a range ``{"min": a, "max": b}`` (up to ``b``);
an integer ratio never changes -- gets longer windows from its next window boundary on, so it
grows by ``1/c'`` of its tokens instead of ``1/c``. At the start of every step, and before vLLM
preempts a request, the scheduler checks ``projected`` against the target (before a preemption:
against 0, so every request that may rise does). Over it, :func:`escalate` takes the requests
that may rise by their remaining growth, largest first, and raises each to its next supported
ratio (an uncompressed one to the smallest), subtracting what each saves from the projection,
until the projection is back under the target or none is left; vLLM preempts only when the pool
is still short (a rise slows growth, it frees no block at once). One rise per request per step;
the next step may raise it again, up to its maximum. Ratios never fall.
``--additional-config '{"breadcrumbs_escalation": false}'`` turns escalation off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from breadcrumbs_vllm.spec import BeaconSchedule

#: ``additional_config`` key that sets the "auto" target, and its default.
TARGET_KEY = "breadcrumbs_kv_target"
DEFAULT_TARGET = 0.8
#: ``additional_config`` key that turns escalation off (``false``): every ratio is then fixed
#: at admission, "auto" included.
ESCALATION_KEY = "breadcrumbs_escalation"


@dataclass(frozen=True)
class KVProjection:
    """One engine's pool now and what its unfinished requests may still add to it."""

    used: float  # fraction of the pool's blocks in use now, 0..1
    growth_tokens: int  # sum over unfinished requests of max(0, peak - live)
    capacity_tokens: int  # the pool, in tokens

    @property
    def usage(self) -> float:
        """The projected usage (the gauge's value); 0 for an empty pool."""
        if self.capacity_tokens <= 0:
            return 0.0
        return self.used + self.growth_tokens / self.capacity_tokens


def choose_ratio(ratios: Sequence[int], prompt_len: int, max_tokens: int,
                 projection: KVProjection, target: float) -> int | None:
    """The ratio "auto" becomes for a request arriving at an engine in state ``projection``."""
    peaks = {c: BeaconSchedule(prompt_len, c).peak_kv_entries(max_tokens)
             for c in [None, *sorted(ratios)]}
    for candidate, peak in peaks.items():
        share = peak / projection.capacity_tokens if projection.capacity_tokens else 0.0
        if projection.usage + share <= target:
            return candidate
    return min(ratios, key=lambda c: (peaks[c], c)) if ratios else None


@dataclass(frozen=True)
class Riser:
    """A request that may rise one step: its remaining growth now and after the rise (tokens)."""

    request_id: str
    growth: int
    growth_raised: int
    to_ratio: int


def escalate(risers: Sequence[Riser], projection: KVProjection, target: float) -> list[Riser]:
    """The requests to raise one step, largest remaining growth first, until the projected
    usage is at or under ``target`` (each raise lowers it by what that request saves)."""
    usage, chosen = projection.usage, []
    for riser in sorted(risers, key=lambda r: (-r.growth, r.request_id)):
        if usage <= target or projection.capacity_tokens <= 0:
            break
        saved = riser.growth - riser.growth_raised
        if saved > 0:
            chosen.append(riser)
            usage -= saved / projection.capacity_tokens
    return chosen
