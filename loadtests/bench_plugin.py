"""KV-bound benchmark: stock vLLM vs the breadcrumbs plugin (off, c=4, 8, 16) on one small pool.

One process, one run. Every setting decodes the same workload (many concurrent long greedy
generations, ignore_eos) on an engine whose KV pool is fixed by ``--pool-blocks``; "stock" serves
the same weights from a copy of the checkpoint without the ``breadcrumbs`` block, so vLLM runs
exactly as without the plugin. Prints per setting: generated tokens/s, max and mean (per scheduler
step) concurrently running requests, peak blocks held by one request, preemptions, and the
ratios against stock. vLLM admits every request whose prompt fits and preempts later, so the
mean is the concurrency that actually decodes. Stock runs again at the end as a control.

    python loadtests/bench_plugin.py       # defaults: 64 x 1024 tokens, 3 runs each, ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

#: The compression ratios benchmarked against stock vLLM.
RATIOS = (4, 8, 16)


@dataclass
class Figures:
    setting: str
    tokens_per_s: float
    max_running: int
    mean_running: float
    peak_blocks_per_request: int
    preemptions: int


class StepSampler:
    """Wraps the scheduler to read, after every schedule, who runs and what each request holds."""

    def __init__(self, llm) -> None:
        self.scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        self.reset()
        schedule, preempt = self.scheduler.schedule, self.scheduler._preempt_request

        def sampled_schedule(*args, **kwargs):
            out = schedule(*args, **kwargs)
            self._sample()
            return out

        def counted_preempt(*args, **kwargs):
            self.preemptions += 1
            return preempt(*args, **kwargs)

        self.scheduler.schedule = sampled_schedule
        self.scheduler._preempt_request = counted_preempt

    def reset(self) -> None:
        self.max_running = self.peak_blocks = self.preemptions = 0
        self.steps = self.running_sum = 0

    def _sample(self) -> None:
        manager = self.scheduler.kv_cache_manager.coordinator.single_type_managers[0]
        self.max_running = max(self.max_running, len(self.scheduler.running))
        self.steps += 1
        self.running_sum += len(self.scheduler.running)
        for request in self.scheduler.running:
            self.peak_blocks = max(self.peak_blocks,
                                   len(manager.req_to_blocks.get(request.request_id, ())))


def make_model(out: Path, seed: int) -> tuple[Path, Path]:
    """A random beacon checkpoint and a copy without the ``breadcrumbs`` block (stock vLLM)."""
    from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint

    model, tokenizer, bc = init_model(layers=2, hidden=64, init_std=0.5, seed=seed)
    beacon = save_checkpoint(model, tokenizer, bc, out / "beacon")
    stock = out / "stock"
    shutil.copytree(beacon, stock)
    config = json.loads((stock / "config.json").read_text())
    del config["breadcrumbs"]
    (stock / "config.json").write_text(json.dumps(config, indent=2))
    return beacon, stock


def run_setting(llm, sampler: StepSampler, name: str, ratio: int | None, args) -> Figures:
    """The workload ``args.repeats`` times; the median throughput (the schedule is the same)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=[6 + (i * 7 + j) % 90 for j in range(args.prompt_len)])
               for i in range(args.requests)]
    extra = None if name.startswith("stock") else {"compression_ratio": ratio}
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                            extra_args=extra)
    rates = []
    for _ in range(args.repeats):
        sampler.reset()
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / elapsed)
    return Figures(name, statistics.median(rates), sampler.max_running,
                   sampler.running_sum / max(sampler.steps, 1), sampler.peak_blocks,
                   sampler.preemptions)


def engine(path: Path, args):
    from vllm import LLM

    # The logical length counts beacons too: at the smallest ratio benchmarked (4), n // 4 more.
    max_model_len = args.prompt_len + args.max_tokens + args.max_tokens // min(RATIOS) + 1
    return LLM(model=str(path), dtype="float32", block_size=args.block_size,
               num_gpu_blocks_override=args.pool_blocks, enable_prefix_caching=False,
               max_model_len=max_model_len, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--pool-blocks", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median tok/s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    results: list[Figures] = []
    with tempfile.TemporaryDirectory() as tmp:
        beacon, stock = make_model(Path(tmp), args.seed)
        for path, settings in ((stock, [("stock", None)]),
                               (beacon, [("plugin c=off", None)]
                                + [(f"plugin c={c}", c) for c in RATIOS]),
                               # The same stock engine again, last: how much of a difference
                               # between settings is drift of the machine, not the plugin.
                               (stock, [("stock (again)", None)])):
            llm = engine(path, args)
            sampler = StepSampler(llm)
            for name, ratio in settings:
                results.append(run_setting(llm, sampler, name, ratio, args))
                print(f"done: {results[-1]}", flush=True)
            llm.llm_engine.engine_core.shutdown()
            del llm

    base = results[0]
    print(f"\nworkload: {args.requests} requests x {args.max_tokens} tokens, prompt "
          f"{args.prompt_len}, pool {args.pool_blocks} blocks of {args.block_size}, "
          f"median of {args.repeats} runs")
    print(f"{'setting':<15}{'tok/s':>9}{'max run':>9}{'mean run':>10}{'peak blk/req':>14}"
          f"{'preempt':>9}{'tok/s vs stock':>16}{'mean run vs stock':>19}")
    for r in results:
        print(f"{r.setting:<15}{r.tokens_per_s:>9.1f}{r.max_running:>9}{r.mean_running:>10.1f}"
              f"{r.peak_blocks_per_request:>14}{r.preemptions:>9}"
              f"{r.tokens_per_s / base.tokens_per_s:>16.2f}"
              f"{r.mean_running / base.mean_running:>19.2f}")


if __name__ == "__main__":
    main()
