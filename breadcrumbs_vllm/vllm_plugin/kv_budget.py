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
one, because a whole window is held before its beacon). So an idle engine answers with the least
compression and compression rises with load: a busy engine degrades memory before it queues.
"None" is a candidate only for a model that decodes well uncompressed, one whose ``breadcrumbs``
block names no teacher (a converted model); a distilled student was trained for its ratios only
(the bundled Countdown student scores 5% uncompressed against 86% at c=4 on the first 100
problems of seed 1234), so for a student the least compression is its smallest ratio.

**Escalation** (issue 42; the paper's first open question): a request that may rise -- sent with
``"auto"`` (up to the model's largest ratio) or a range ``{"min": a, "max": b}`` (up to ``b``);
an integer ratio never changes -- gets longer windows from its next window boundary on, so it
grows by ``1/c'`` of its tokens instead of ``1/c``. Two halves, one bound (the pool), both
judging the *running* requests in whole blocks: each may still take its peak rounded up to
blocks (the accountant never holds more) less the blocks it holds.

* **Admission** (requests sent with ``"auto"`` or a range only -- the ones that let the engine
  manage their memory): such a request, fresh or after a preemption, is admitted only when
  :func:`admits` says the pool's free blocks hold what the running requests may still take,
  each raised as far as it may go, plus its own peak at its highest ratio. Otherwise it waits,
  as it would for a free block, instead of being admitted into growth the pool cannot hold and
  preempted later. Requests with a fixed ratio or none are admitted as stock vLLM admits them.
  The sum may pass the pool by a share of it, :data:`DEFAULT_OVERCOMMIT` unless
  :data:`OVERCOMMIT_KEY` says otherwise: the peaks are bounds reached late in a request, if at
  all, and requests that finish free their blocks meanwhile, so a small overcommit runs more
  requests at once and leaves vLLM a preemption to make only when the running ones peak
  together.
* **Rises**: at the start of every step the scheduler projects the running requests at their
  current ratios (waiting requests are admission's to hold back). Past the pool
  (:data:`RISE_ABOVE`: if every running request ran to ``max_tokens``, vLLM would have to
  preempt), :func:`escalate` takes the requests that may rise by their remaining growth,
  largest first, and raises each to its next supported ratio (an uncompressed one to the
  smallest), subtracting what each saves, until the projection is back within the pool or none
  is left. One rise per request per step; the next step may raise it again, up to its maximum
  (rises before the next window boundary merge into one switch). Ratios never fall.

* **Waits** (compressed requests that admission admitted: sent with "auto" or a range): a
  running one whose next chunk needs a block the pool lacks sits the step out instead of vLLM
  preempting the youngest running request for it. Compressed requests hand blocks back on their
  own (each beacon collapses a window) and finishing ones free theirs, so a wait of a few steps
  usually ends it, where a preemption throws away a request's KV and recomputes it. If every
  running request waited in one step (nothing was scheduled), the next step leaves the choice
  to vLLM, which preempts as stock: waits cannot stall the engine. Waits pay only because
  admission keeps the running requests' growth near the pool; requests admitted as stock admits
  them (a fixed ratio, or "auto" with the admission rule off) overfill it, and when they waited
  instead of being preempted, most of them sat out most steps holding blocks: at a fixed c=8
  the KV-bound benchmark ran 3.0x stock's requests a step instead of 4.6x
  (``docs/results.md``), so they preempt as stock.

So admission lends a request room that rises can make, and a request rises only once the
running requests would otherwise outgrow the pool: rises come late and few, which is what keeps
accuracy (``loadtests/bench_escalation.py`` measures both). Rises alone are no help once the
pool is full: a rise frees no block, and the window it lengthens holds more entries before its
beacon collapses it. Raising every request that may rise at the moment vLLM preempts halved
tokens/s and doubled preemptions in that benchmark (10 and 20 arrivals a second); rising
whenever the projection over *all* unfinished requests (the queue's included) passed the "auto"
target cost 1 to 5 points of accuracy against admission-only "auto" (``docs/results-log.md``).

``--additional-config '{"breadcrumbs_escalation": false}'`` turns escalation off (every ratio is
fixed at admission, admission is stock and vLLM preempts where a request would have waited);
``{"breadcrumbs_admission_rule": false}`` keeps the rises and drops the admission rule;
``{"breadcrumbs_admission_overcommit": 0}`` makes admission reserve every peak in full.
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
#: ``additional_config`` key that keeps escalation's rises but drops its admission rule
#: (``false``): the ablation ``loadtests/bench_escalation.py`` runs as its "auto-rises-only" arm.
ADMISSION_KEY = "breadcrumbs_admission_rule"
#: ``additional_config`` key: how far past the pool admission may commit, as a share of the pool
#: (``0.1``: the running requests' projected growth plus the new request's peak may reach 110%
#: of it), and its default: of the values ``loadtests/bench_escalation.py`` swept (0 to 0.25,
#: ``docs/results.md``), the one that gave the most tokens/s at saturation while vLLM still
#: preempted less than a fifth as often as without the admission rule.
OVERCOMMIT_KEY = "breadcrumbs_admission_overcommit"
DEFAULT_OVERCOMMIT = 0.15
#: Running requests rise once their projected usage passes this share of the pool.
RISE_ABOVE = 1.0


@dataclass(frozen=True)
class BudgetSettings:
    """This module's ``--additional-config`` keys for one engine, checked when the engine is
    configured (a bad value is refused then, in one line, not when the scheduler starts)."""

    target: float = DEFAULT_TARGET
    escalation: bool = True
    #: Escalation's admission rule; off whenever escalation is.
    admission_rule: bool = True
    overcommit: float = DEFAULT_OVERCOMMIT

    @classmethod
    def from_additional_config(cls, extra: object) -> BudgetSettings:
        extra = extra if isinstance(extra, dict) else {}
        shares = {key: extra.get(key, default)
                  for key, default in ((TARGET_KEY, DEFAULT_TARGET),
                                       (OVERCOMMIT_KEY, DEFAULT_OVERCOMMIT))}
        for key, value in shares.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"breadcrumbs: {key} is a share of the KV pool, a number >= 0; "
                                 f"got {value!r}")
        escalation = bool(extra.get(ESCALATION_KEY, True))
        return cls(float(shares[TARGET_KEY]), escalation,
                   escalation and bool(extra.get(ADMISSION_KEY, True)),
                   float(shares[OVERCOMMIT_KEY]))


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
                 projection: KVProjection, target: float,
                 uncompressed: bool = True) -> int | None:
    """The ratio "auto" becomes for a request arriving at an engine in state ``projection``;
    ``uncompressed``: whether running without beacons is a candidate (not for a student)."""
    peaks = {c: BeaconSchedule(prompt_len, c).peak_kv_entries(max_tokens)
             for c in [None, *sorted(ratios)] if c is not None or uncompressed}
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
    usage is at or under ``target`` (each raise lowers it by what that request saves).
    The scheduler passes :data:`RISE_ABOVE` and the running requests' projection."""
    usage, chosen = projection.usage, []
    for riser in sorted(risers, key=lambda r: (-r.growth, r.request_id)):
        if usage <= target or projection.capacity_tokens <= 0:
            break
        saved = riser.growth - riser.growth_raised
        if saved > 0:
            chosen.append(riser)
            usage -= saved / projection.capacity_tokens
    return chosen


def admits(running: KVProjection, peak_tokens: int, overcommit: float) -> bool:
    """Whether a request that peaks at ``peak_tokens`` fits beside the running requests'
    projected growth (``running`` counts running requests only, each raised as far as it may
    go): projected usage at most ``1 + overcommit``."""
    if running.capacity_tokens <= 0:
        return True
    return running.usage + peak_tokens / running.capacity_tokens <= 1.0 + overcommit
