"""A beacon model runs vLLM's own scheduler, KV-cache manager and runner while nothing is compressed.

One in-process engine. After every engine step the test reads which code path each part is on:
the scheduler's and the KV-cache manager's classes, and whether the runner's per-step hooks are
routed to vLLM's own methods. They must be the plugin's exactly while a compressed request is
live, and stock otherwise; a compressed request that arrives after the plugin went back to stock
must still decode exactly like the reference engine. The engine logs stats, as a server does
(the plugin gives the offline engine its stat logger), so the stats path runs at every step.
"""

from __future__ import annotations

import gc
import os

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

vllm = pytest.importorskip("vllm")
from test_plugin_engine import _assert_same
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from breadcrumbs_vllm.reference import ReferenceEngine
from breadcrumbs_vllm.vllm_plugin.scheduler import (
    BreadcrumbsScheduler,
    CompressingScheduler,
    PhysicalBlockAccountant,
)
from breadcrumbs_vllm.vllm_plugin.worker import RunnerCompression

pytestmark = pytest.mark.vllm

MAX_TOKENS = 1000  # what test_plugin_engine's reference comparison generates


class PathProbe:
    """An engine plus, after every step, the code path each of its parts is on."""

    def __init__(self, path) -> None:
        self.llm = LLM(model=str(path), dtype="float32", block_size=32, max_model_len=2048,
                       num_gpu_blocks_override=200, enable_prefix_caching=False, seed=0,
                       enforce_eager=True, disable_log_stats=False)
        core = self.llm.llm_engine.engine_core.engine_core
        self.scheduler = core.scheduler
        self.runner = core.model_executor.driver_worker.worker.model_runner
        self.wrong: list[str] = []

    def runner_on_stock_path(self) -> bool:
        hooks = [self.runner.__dict__.get(name) for name in RunnerCompression.LIVE_HOOKS]
        stock = [getattr(GPUModelRunner, name).__wrapped__ for name in RunnerCompression.LIVE_HOOKS]
        if all(h is None for h in hooks):
            return False
        assert [h.__func__ for h in hooks] == stock
        return True

    def check(self, step: int) -> None:
        live = bool(self.scheduler.compressed)
        paths = {"scheduler": type(self.scheduler) is (CompressingScheduler if live
                                                      else BreadcrumbsScheduler),
                 "kv manager": type(self.scheduler.kv_cache_manager) is (
                     PhysicalBlockAccountant if live else KVCacheManager)}
        runner_live = bool(RunnerCompression.of(self.runner)._requests)
        paths["runner"] = self.runner_on_stock_path() is not runner_live
        self.wrong += [f"step {step}: {part} (compressed live: {live})"
                       for part, right in paths.items() if not right]

    def run(self, phases: list[dict[str, tuple[list[int], int | None]]]) -> dict[str, list[int]]:
        """Decode each phase's ``{id: (prompt, ratio)}``; a phase is added once no compressed
        request of the earlier ones is live (so the plugin is back on the stock path)."""
        engine = self.llm.llm_engine
        out: dict[str, list[int]] = {}
        pending = list(phases)
        step = 0
        while pending or engine.has_unfinished_requests():
            if pending and not self.scheduler.compressed:
                assert type(self.scheduler) is BreadcrumbsScheduler
                for req_id, (prompt, ratio) in pending.pop(0).items():
                    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                            ignore_eos=True, extra_args={"compression_ratio": ratio})
                    engine.add_request(req_id, TokensPrompt(prompt_token_ids=prompt), params)
            for result in engine.step():
                if result.finished:
                    out[result.request_id] = list(result.outputs[0].token_ids)
            self.check(step)
            step += 1
        return out


@pytest.fixture(scope="module")
def probe(tiny_checkpoint):
    probe = PathProbe(tiny_checkpoint)
    yield probe
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def test_uncompressed_requests_run_the_stock_path(probe):
    probe.run([{f"off-{i}": ([10 + i, 20, 30 + i], None) for i in range(3)}])
    assert not probe.wrong
    assert probe.runner_on_stock_path()
    assert type(probe.scheduler) is BreadcrumbsScheduler


def test_compressed_requests_switch_the_plugin_on_and_off_exactly(probe, tiny_checkpoint):
    """c=8 alone, then an uncompressed request, joined one step later (on the stock path) by c=4."""
    phases = [{"c8": ([21, 22, 23], 8)}, {"off": ([11, 12, 13, 14], None)},
              {"c4": ([31, 32, 33, 34, 35], 4)}]
    got = probe.run(phases)
    assert not probe.wrong  # the runner learns of the last finish at its next step, if any
    assert type(probe.scheduler) is BreadcrumbsScheduler
    requests = {req_id: request for phase in phases for req_id, request in phase.items()}
    reference = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    _assert_same(reference, [p for p, _ in requests.values()], [r for _, r in requests.values()],
                 [got[req_id] for req_id in requests])


def test_the_offline_engine_exports_the_plugins_metrics(probe, tiny_checkpoint):
    """vLLM's offline engine loads no stat-logger plugins; the plugin adds its own, so the
    figures the scheduler shipped every step reached the registry (and vLLM's loggers never
    met them)."""
    from prometheus_client import REGISTRY

    labels = {"model_name": str(tiny_checkpoint), "engine": "0"}
    assert REGISTRY.get_sample_value("breadcrumbs_beacons_inserted_total",
                                     {**labels, "ratio": "8"}) > 0
    assert REGISTRY.get_sample_value("breadcrumbs_kv_cache_usage_projected_perc", labels) == 0.0
    assert REGISTRY.get_sample_value("breadcrumbs_kv_blocks_held", {**labels, "ratio": "8"}) == 0
