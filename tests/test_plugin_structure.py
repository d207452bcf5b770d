"""Which classes an engine runs, fixed at its start: the plugin's for a beacon model, vLLM's
otherwise.

A beacon engine and a stock engine (the same tiny model without its ``breadcrumbs`` block), each
in-process. The beacon engine decodes phases of requests -- uncompressed, compressed, then
uncompressed again next to a compressed one -- and after every step the test reads its
scheduler's, KV-cache manager's, worker's and model runner's classes: they never change, and
the plugin's per-step state is empty whenever nothing compressed is live (its guards return to
vLLM's code). The compressed requests still decode exactly like the reference engine. The
engine logs stats, as a server does, so the scheduler publishes its figures
(``stats_channel.py``) at every step.
"""

from __future__ import annotations

import gc
import os

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from test_plugin_engine import _assert_same
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from breadcrumbs_vllm.reference import ReferenceEngine

pytestmark = pytest.mark.vllm

MAX_TOKENS = 1000  # what test_plugin_engine's reference comparison generates


def engine_classes(llm) -> dict[str, str]:
    """The qualified class names of an in-process engine's scheduler, KV-cache manager,
    worker and model runner."""
    core = llm.llm_engine.engine_core.engine_core
    worker = core.model_executor.driver_worker.worker
    parts = {"scheduler": core.scheduler, "kv manager": core.scheduler.kv_cache_manager,
             "worker": worker, "runner": worker.model_runner}
    return {name: f"{type(obj).__module__}.{type(obj).__qualname__}" for name, obj in parts.items()}


BEACON_CLASSES = {
    "scheduler": "breadcrumbs_vllm.vllm_plugin.scheduler.BreadcrumbsScheduler",
    "kv manager": "breadcrumbs_vllm.vllm_plugin.scheduler.PhysicalBlockAccountant",
    "worker": "breadcrumbs_vllm.vllm_plugin.cpu_worker.BreadcrumbsCPUWorker",
    "runner": "breadcrumbs_vllm.vllm_plugin.cpu_worker.BeaconCPUModelRunner",
}
STOCK_CLASSES = {
    "scheduler": "vllm.v1.core.sched.scheduler.Scheduler",
    "kv manager": "vllm.v1.core.kv_cache_manager.KVCacheManager",
    "worker": "vllm.v1.worker.cpu_worker.CPUWorker",
    "runner": "vllm.v1.worker.cpu_model_runner.CPUModelRunner",
}


def make_engine(path) -> LLM:
    return LLM(model=str(path), dtype="float32", block_size=32, max_model_len=2048,
               num_gpu_blocks_override=200, enable_prefix_caching=False, seed=0,
               enforce_eager=True, disable_log_stats=False)


class StepProbe:
    """A beacon engine plus, after every step, what a reader of its objects sees."""

    def __init__(self, path) -> None:
        self.llm = make_engine(path)
        core = self.llm.llm_engine.engine_core.engine_core
        self.scheduler = core.scheduler
        self.runner = core.model_executor.driver_worker.worker.model_runner
        self.wrong: list[str] = []

    def check(self, step: int) -> None:
        classes = engine_classes(self.llm)
        if classes != BEACON_CLASSES:
            self.wrong.append(f"step {step}: classes {classes}")

    def run(self, phases: list[dict[str, tuple[list[int], int | None]]]) -> dict[str, list[int]]:
        """Decode each phase's ``{id: (prompt, ratio)}``; a phase is added once no compressed
        request of the earlier ones is live."""
        engine = self.llm.llm_engine
        out: dict[str, list[int]] = {}
        pending = list(phases)
        step = 0
        while pending or engine.has_unfinished_requests():
            if pending and not self.scheduler.compressed:
                for req_id, (prompt, ratio) in pending.pop(0).items():
                    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                            ignore_eos=True,
                                            extra_args={"compression_ratio": ratio})
                    engine.add_request(req_id, TokensPrompt(prompt_token_ids=prompt), params)
            for result in engine.step():
                if result.finished:
                    out[result.request_id] = list(result.outputs[0].token_ids)
            self.check(step)
            step += 1
        return out


@pytest.fixture(scope="module")
def probe(tiny_checkpoint):
    probe = StepProbe(tiny_checkpoint)
    yield probe
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def test_a_beacon_engine_runs_the_plugins_classes_from_start_to_end(probe, tiny_checkpoint):
    """Uncompressed alone, then c=8, then an uncompressed request joined one step later by c=4:
    the classes never change; the per-step state empties when the last compressed one ends."""
    phases = [{f"off-{i}": ([10 + i, 20, 30 + i], None) for i in range(3)},
              {"c8": ([21, 22, 23], 8)}, {"off": ([11, 12, 13, 14], None)},
              {"c4": ([31, 32, 33, 34, 35], 4)}]
    got = probe.run(phases)
    assert not probe.wrong
    assert probe.scheduler.compressed == probe.scheduler.reported == {}
    assert probe.scheduler._in_batch == probe.scheduler._beacon_rows == set()
    assert probe.scheduler.kv_cache_manager.compressed is probe.scheduler.compressed  # one dict
    assert vars(probe.runner.breadcrumbs).keys() == {"runner", "compactor"}  # no request state
    compressed = [req_id for phase in phases[1:] for req_id in phase if "off" not in req_id]
    requests = {req_id: phase[req_id] for phase in phases for req_id in phase
                if req_id in compressed}
    reference = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    _assert_same(reference, [p for p, _ in requests.values()], [r for _, r in requests.values()],
                 [got[req_id] for req_id in requests])


def test_a_stock_engine_runs_vllms_own_classes(stock_checkpoint):
    llm = make_engine(stock_checkpoint)
    try:
        assert engine_classes(llm) == STOCK_CLASSES
        out = llm.generate([TokensPrompt(prompt_token_ids=[10, 20, 30])],
                           SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 8
        # A range needs beacons: one line, the request refused, the engine still serving.
        ranged = SamplingParams(max_tokens=4, extra_args={"compression_ratio": {"min": 2,
                                                                                "max": 8}})
        with pytest.raises(ValueError, match="needs a model with beacons"):
            llm.generate([TokensPrompt(prompt_token_ids=[10, 20, 30])], ranged, use_tqdm=False)
        again = llm.generate([TokensPrompt(prompt_token_ids=[10, 20, 30])],
                             SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
        assert again[0].outputs[0].token_ids == out[0].outputs[0].token_ids
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
