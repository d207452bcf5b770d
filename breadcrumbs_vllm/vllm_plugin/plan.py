"""The scheduler's per-step plan for the worker: what to do for each compressed request.

The scheduler decides everything about a compressed request (its ratio, its beacon steps, the
blocks it holds, where its KV entries sit); the worker only applies what it is told. Each step the
scheduler writes one :class:`RequestStep` per compressed request it scheduled into a
:data:`StepPlan`, and attaches it to that step's ``SchedulerOutput`` (:func:`attach`), the object
vLLM already sends the workers. The worker reads it back with :func:`plan_of`.

Why an attribute of ``SchedulerOutput``: vLLM has no field for plugin data there. With one worker
in the engine's process the object is passed as is; with several (tensor parallelism) vLLM's
``MultiprocExecutor`` pickles it into its shared-memory broadcast queue, and pickling a dataclass
instance keeps attributes outside its declared fields (``tests/test_plugin_plan.py`` checks the
round trip; ``tests/test_plugin_parallel.py`` runs TP=2 on it). Only plain ints and tuples
travel. A step with no compressed request carries no plan at all.
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: The ``SchedulerOutput`` attribute the plan travels in.
PLAN_ATTR = "breadcrumbs_plan"


class RequestStep(NamedTuple):
    """One compressed request in one step, as the worker must apply it.

    Indices are logical (the token list with beacons) unless named physical (the KV slot).
    """

    #: The ratio the request runs at (resolved once, when the scheduler admitted it).
    ratio: int
    #: Blocks the request keeps before this step's new ones are appended: the scheduler freed
    #: the rest when a window was evicted. ``None`` when vLLM sends the whole block list (a
    #: request new to the worker, or resumed after preemption).
    keep_blocks: int | None
    #: Where ``tokens`` go in the worker's token array.
    write_at: int
    #: Fed tokens the worker's token array lacks: the whole generated part (beacons included)
    #: for a request (re-)entering the batch, ``(beacon, y)`` after the scheduler inserted a
    #: beacon before the sample ``y``, else empty.
    tokens: tuple[int, ...]
    #: Length of the fed sequence (prompt + generated tokens + beacons); the token array's length.
    fed_len: int
    #: Physical KV slot of the first token fed this step; entries ``[0, this)`` are live, and the
    #: chunk's tokens take the slots that follow it.
    physical_start: int
    #: Whether this step's sample is an output token (``False`` for a beacon step: ``y`` follows).
    keep_sample: bool
    #: ``(from_slot, to_slot)``: after the forward pass the beacon's K/V moves to its home slot,
    #: which evicts its window; ``None`` on steps that feed no beacon.
    move: tuple[int, int] | None


#: Request id -> its step, for the compressed requests scheduled in one step.
StepPlan = dict[str, RequestStep]


def attach(scheduler_output: Any, plan: StepPlan) -> None:
    """Send ``plan`` to the workers with ``scheduler_output``."""
    setattr(scheduler_output, PLAN_ATTR, plan)


def plan_of(scheduler_output: Any) -> StepPlan | None:
    """The plan a step's ``SchedulerOutput`` carries; ``None`` when nothing is compressed."""
    return getattr(scheduler_output, PLAN_ATTR, None)
