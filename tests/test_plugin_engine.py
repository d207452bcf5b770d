"""vLLM with the breadcrumbs plugin against the reference engine, and its real memory use.

One engine per block size (32 and 64, compiled as vLLM's default; 32 also eager, as the gateway
runs on CPU) with a KV pool small enough that the second batch must preempt; the first batch fits.
Every scheduler step is checked against the rule-5 block bound, and counts what the exactness runs
exercise: prefix-cache hits (prompts share a 40-token prefix, so at block size 32) and prompts
split into chunks (a 64-token budget per step, ``max_num_batched_tokens``).
"""

from __future__ import annotations

import gc
import os
import random

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform

from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.vllm_plugin.compression import cdiv

pytestmark = pytest.mark.vllm

MAX_TOKENS = 1000
RATIOS = [2, 4, 8, 16, None]
#: Pool size (blocks) per block size: the 5-request batch fits, the 10-request batch preempts.
POOL = {32: 90, 64: 48}
#: Tokens per engine step: prompts longer than this are prefilled in chunks.
STEP_BUDGET = 64
#: The prefix every third prompt shares (``_prompts``): a hit needs a whole cached block of it.
SHARED_PREFIX = 40


class EngineProbe:
    """An in-process engine plus what the tests read from its scheduler at every step."""

    def __init__(self, path: str, block_size: int, eager: bool, **overrides) -> None:
        """``overrides``: further ``LLM`` arguments (parallelism, a GPU's dtype and modes)."""
        self.block_size = block_size
        defaults = {"model": str(path), "dtype": "float32", "block_size": block_size,
                    "num_gpu_blocks_override": POOL[block_size], "max_model_len": 2048,
                    "enable_prefix_caching": True, "seed": 0, "enforce_eager": eager,
                    "max_num_batched_tokens": STEP_BUDGET}
        if current_platform.is_cpu():
            # An explicit KV size: without one, vLLM's CPU worker wants 92% of the NUMA node
            # free and refuses to start beside other processes (or after an in-process gateway
            # test popped VLLM_CPU_KVCACHE_SPACE, as server/memory.py does).
            defaults["kv_cache_memory_bytes"] = 1 << 30
        self.llm = LLM(**{**defaults, **overrides})
        self.scheduler = self.llm.llm_engine.engine_core.engine_core.scheduler
        self.pool = self.scheduler.kv_cache_manager.block_pool
        self.preemptions = 0
        self.violations: list[str] = []
        self.max_blocks_saved = 0.0
        #: Requests admitted with a prefix-cache hit, and prompt chunks that end inside a prompt.
        self.prefix_hits = 0
        self.prompt_chunks = 0
        self._instrument()

    def _instrument(self) -> None:
        scheduler, probe = self.scheduler, self
        schedule, preempt = scheduler.schedule, scheduler._preempt_request

        def checked_schedule(*args, **kwargs):
            out = schedule(*args, **kwargs)
            probe.check_bound()
            probe.count_exercised(out)
            return out

        def counted_preempt(*args, **kwargs):
            probe.preemptions += 1
            return preempt(*args, **kwargs)

        scheduler.schedule = checked_schedule
        scheduler._preempt_request = counted_preempt

    def check_bound(self) -> None:
        """Rule 5: ceil((P + floor(n/c) + c + 1) / block_size) blocks, plus one in flight."""
        manager = self.scheduler.kv_cache_manager
        for request in self.scheduler.running:
            comp = self.scheduler.compressed.get(request.request_id)
            if comp is None:
                continue
            n = request.num_output_tokens
            bound = cdiv(comp.prompt_len + n // comp.ratio + comp.ratio + 1, self.block_size) + 1
            held = manager.blocks_held(request.request_id)
            if held > bound:
                self.violations.append(f"{request.request_id}: {held} blocks > {bound}")
        saved = sum(u - h for h, u in self.scheduler._holdings().values())
        self.max_blocks_saved = max(self.max_blocks_saved, saved)

    def count_exercised(self, scheduler_output) -> None:
        """Count this step's prefix-cache hits and prompt chunks (vLLM advanced
        ``num_computed_tokens`` by the scheduled tokens already)."""
        self.prefix_hits += sum(new.num_computed_tokens > 0
                                for new in scheduler_output.scheduled_new_reqs)
        requests = self.scheduler.requests
        self.prompt_chunks += sum(
            requests[req_id].num_computed_tokens < requests[req_id].num_prompt_tokens
            for req_id in scheduler_output.num_scheduled_tokens)

    def assert_exercised(self, hits_before: int, chunks_before: int) -> None:
        """Prompts were prefilled in chunks, and, where a block fits in the shared prefix, some
        requests were admitted with a prefix-cache hit."""
        assert self.prompt_chunks > chunks_before
        if self.block_size <= SHARED_PREFIX:
            assert self.prefix_hits > hits_before

    def generate(self, prompts: list[list[int]], ratios: list[int | None],
                 max_tokens: int | None = None) -> list[list[int]]:
        """``max_tokens`` defaults to the module's ``MAX_TOKENS`` as it is at the call (the GPU
        check sets it for its own run)."""
        max_tokens = MAX_TOKENS if max_tokens is None else max_tokens
        params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                 extra_args={"compression_ratio": r}) for r in ratios]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return ReferenceEngine.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module", params=[(32, False), (64, False), (32, True)],
                ids=["bs32", "bs64", "bs32-eager"])
def engine(request, tiny_checkpoint):
    probe = EngineProbe(tiny_checkpoint, *request.param)
    yield probe
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(6, 100) for _ in range(SHARED_PREFIX)]  # for prefix caching
    out = []
    for i in range(count):
        length = rng.choice([3, 17, 33, 50, 71])
        own = [rng.randrange(6, 100) for _ in range(length)]
        out.append(shared + own if i % 3 == 0 else own)
    return out


def _assert_same(reference: ReferenceEngine, prompts, ratios, got: list[list[int]],
                 max_tokens: int | None = None) -> list[tuple[int | None, int, float]]:
    """Token for token; a divergence is allowed only where the reference's top-2 margin < 1e-3.

    Returns the allowed divergences as (ratio, token index, the reference's margin there).
    ``max_tokens`` defaults to ``MAX_TOKENS`` as it is at the call.
    """
    max_tokens = MAX_TOKENS if max_tokens is None else max_tokens
    results = reference.generate([GenerationRequest(prompt_ids=p, ratio=r, max_tokens=max_tokens,
                                                    ignore_eos=True)
                                  for p, r in zip(prompts, ratios)])
    ties = []
    for ratio, res, tokens in zip(ratios, results, got):
        assert len(tokens) == len(res.token_ids) == max_tokens
        first = next((i for i, (a, b) in enumerate(zip(tokens, res.token_ids)) if a != b), None)
        if first is not None:
            margin = res.top2_margins[first]
            assert margin < 1e-3, f"ratio {ratio}: token {first} differs, ref margin {margin}"
            ties.append((ratio, first, margin))
    return ties


def test_mixed_batch_without_preemption(engine, reference):
    prompts, ratios = _prompts(5, seed=1), RATIOS
    before = engine.preemptions, engine.prefix_hits, engine.prompt_chunks
    got = engine.generate(prompts, ratios)
    assert engine.preemptions == before[0], "this batch is meant to fit the pool"
    _assert_same(reference, prompts, ratios, got)
    assert not engine.violations
    engine.assert_exercised(*before[1:])


def test_mixed_batch_with_preemption(engine, reference):
    prompts, ratios = _prompts(10, seed=2), RATIOS * 2
    before = engine.preemptions, engine.prefix_hits, engine.prompt_chunks
    got = engine.generate(prompts, ratios)
    assert engine.preemptions > before[0], "the pool is meant to force preemption"
    _assert_same(reference, prompts, ratios, got)
    assert not engine.violations
    engine.assert_exercised(*before[1:])


def test_scheduler_counts_compression(engine):
    """The engine-side counts behind the ``breadcrumbs_*`` metrics (exported by the gateway
    test), from a batch of its own (the test passes alone, in any order)."""
    totals = engine.scheduler.compression_stats.totals
    before = {name: dict(counts) for name, counts in totals.items()}
    engine.max_blocks_saved = 0.0
    max_tokens = 200
    engine.generate(_prompts(2, seed=5), [2, 8], max_tokens=max_tokens)

    def added(name: str, ratio: int) -> int:
        return totals[name][ratio] - before[name].get(ratio, 0)

    assert added("beacons", 2) >= max_tokens // 2 - 1
    assert added("evicted", 8) > 0 and added("evicted", 8) % 8 == 0
    assert added("freed", 2) > 0
    assert engine.max_blocks_saved > 0


def test_unsupported_ratio_fails_the_request_not_the_engine(engine):
    with pytest.raises(ValueError, match="supported: 2, 4, 8, 16"):
        engine.llm.generate([TokensPrompt(prompt_token_ids=[10, 11, 12])],
                            SamplingParams(max_tokens=4, extra_args={"compression_ratio": 3}),
                            use_tqdm=False)
    out = engine.llm.generate([TokensPrompt(prompt_token_ids=[10, 11, 12])],
                              SamplingParams(max_tokens=4, extra_args={"compression_ratio": 4}),
                              use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_random_aborts_return_every_block(engine):
    llm_engine = engine.llm.llm_engine
    start = engine.pool.get_num_free_blocks()
    rng = random.Random(3)
    live: list[str] = []
    for i, prompt in enumerate(_prompts(16, seed=4)):
        params = SamplingParams(temperature=0.0, max_tokens=rng.randrange(50, 400),
                                ignore_eos=True,
                                extra_args={"compression_ratio": rng.choice(RATIOS)})
        llm_engine.add_request(f"abort-{i}", TokensPrompt(prompt_token_ids=prompt), params)
        live.append(f"abort-{i}")
    steps = 0
    while llm_engine.has_unfinished_requests():
        for out in llm_engine.step():
            if out.finished:
                live.remove(out.request_id)
        steps += 1
        if live and rng.random() < 0.05:
            victim = live.pop(rng.randrange(len(live)))
            llm_engine.abort_request([victim])
    assert steps > 10
    assert engine.pool.get_num_free_blocks() == start
    assert not engine.scheduler.compressed
    assert not engine.violations
