"""KV-bound benchmark: stock vLLM vs the breadcrumbs plugin (off, c=4, 8, 16) on one small pool.

One process, one run. Every setting decodes the same workload (many concurrent long greedy
generations, ignore_eos) on an engine whose KV pool is fixed by ``--pool-blocks``; "stock" serves
the same weights from a copy of the checkpoint without the ``breadcrumbs`` block, so vLLM runs
exactly as without the plugin. Prints per setting: generated tokens/s, the max and mean number of
requests a scheduler step ran (the concurrency that actually decodes), peak blocks held by one
request, preemptions, the plugin's waits for a block (steps a running compressed request sat
out instead of vLLM preempting another), and the ratios against stock.

Wall-clock speed on a shared machine drifts by more than the differences measured here, so the
two engines stay up together and the settings run interleaved: every round runs each setting
once (alternating the order), each tokens/s is divided by the stock figure *of the same round*,
and the table shows the median of those paired ratios with their range.

    python loadtests/bench_plugin.py       # defaults: 64 x 1024 tokens, 3 rounds, ~8 min on 2 cores
    python loadtests/bench_plugin.py --model runs/smollm2-sums-student  # a real model

The "bound" column is the physical limit on one request's blocks (uncompressed: all its tokens;
at ratio c: the spec's rule-5 bound), against which "peak blk/req" is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

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
    waits: int


def plugin_total(scheduler, name: str) -> int:
    """The plugin's count of ``name`` (``"waits"``, ``"escalations"``) since the engine started;
    0 on stock vLLM."""
    stats = getattr(scheduler, "compression_stats", None)
    return sum(stats.totals[name].values()) if stats is not None else 0


class StepSampler:
    """Wraps the scheduler to read, after every schedule, how many requests the step ran and
    what each running request holds.

    "Ran" counts the requests the step scheduled tokens for, not the running list: a compressed
    request that waits for a block (``kv_budget.py``, "Waits") stays in the list but sits the
    step out, so the list overstates what decodes. Steps that ran nothing are not counted.
    """

    def __init__(self, llm) -> None:
        self.scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        self.reset()
        schedule, preempt = self.scheduler.schedule, self.scheduler._preempt_request

        def sampled_schedule(*args, **kwargs):
            out = schedule(*args, **kwargs)
            self._sample(out)
            return out

        def counted_preempt(*args, **kwargs):
            self.preemptions += 1
            return preempt(*args, **kwargs)

        self.scheduler.schedule = sampled_schedule
        self.scheduler._preempt_request = counted_preempt

    def reset(self) -> None:
        self.max_running = self.peak_blocks = self.preemptions = 0
        self.steps = self.running_sum = 0
        self._waits_at_reset = plugin_total(self.scheduler, "waits")

    @property
    def waits(self) -> int:
        return plugin_total(self.scheduler, "waits") - self._waits_at_reset

    def _sample(self, scheduler_output) -> None:
        ran = len(scheduler_output.num_scheduled_tokens)
        if ran:
            self.max_running = max(self.max_running, ran)
            self.steps += 1
            self.running_sum += ran
        manager = self.scheduler.kv_cache_manager.coordinator.single_type_managers[0]
        for request in self.scheduler.running:
            self.peak_blocks = max(self.peak_blocks,
                                   len(manager.req_to_blocks.get(request.request_id, ())))


def make_model(out: Path, seed: int, layers: int = 2, hidden: int = 64,
               heads: int | None = None) -> tuple[Path, Path]:
    """A random beacon checkpoint and a copy without the ``breadcrumbs`` block (stock vLLM)."""
    from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint

    model, tokenizer, bc = init_model(layers=layers, hidden=hidden, heads=heads, init_std=0.5,
                                      seed=seed)
    beacon = save_checkpoint(model, tokenizer, bc, out / "beacon")
    return beacon, stock_view(beacon, out / "stock")


def stock_view(beacon: Path, out: Path) -> Path:
    """``beacon`` as stock vLLM sees a model: the same files (linked, not copied: a real model's
    weights are hundreds of MB) with a ``config.json`` that has no ``breadcrumbs`` block."""
    out.mkdir()
    for item in beacon.iterdir():
        if item.name != "config.json":
            (out / item.name).symlink_to(item.resolve())
    config = json.loads((beacon / "config.json").read_text())
    del config["breadcrumbs"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@dataclass
class Setting:
    """One benchmarked configuration: which engine serves it and the ratio its requests ask."""

    name: str
    llm: object
    sampler: StepSampler
    ratio: int | None


def run_once(setting: Setting, args) -> Figures:
    """The workload once on ``setting``: its tokens/s and the scheduler figures of that run."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=[6 + (i * 7 + j) % 90 for j in range(args.prompt_len)])
               for i in range(args.requests)]
    extra = None if setting.name == "stock" else {"compression_ratio": setting.ratio}
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                            extra_args=extra)
    sampler = setting.sampler
    sampler.reset()
    start = time.perf_counter()
    outs = setting.llm.generate(prompts, params, use_tqdm=False)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return Figures(setting.name, tokens / (time.perf_counter() - start), sampler.max_running,
                   sampler.running_sum / max(sampler.steps, 1), sampler.peak_blocks,
                   sampler.preemptions, sampler.waits)


def engine(path: Path, args, **overrides):
    """An in-process engine on ``path`` sized by ``args``; ``overrides`` go to ``LLM``."""
    from vllm import LLM

    # The logical length counts beacons too: at the smallest ratio benchmarked (4), n // 4 more.
    max_model_len = args.prompt_len + args.max_tokens + args.max_tokens // min(RATIOS) + 1
    return LLM(**{"model": str(path), "dtype": "float32", "block_size": args.block_size,
                  "num_gpu_blocks_override": args.pool_blocks, "enable_prefix_caching": False,
                  "max_model_len": max_model_len, "seed": 0, **overrides})


def workload_arguments(parser: argparse.ArgumentParser, requests: int, max_tokens: int,
                       pool_blocks: int) -> None:
    """The workload and pool flags :func:`engine` and the prompts read (shared by the benches)."""
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--pool-blocks", type=int, default=pool_blocks)
    parser.add_argument("--seed", type=int, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_arguments(parser, requests=64, max_tokens=1024, pool_blocks=64)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each runs every setting once, in alternating order")
    parser.add_argument("--model", type=Path, default=None,
                        help="a beacon checkpoint to benchmark (default: a tiny random model)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            beacon_path, stock_path = make_model(Path(tmp), args.seed)
        else:
            beacon_path, stock_path = args.model, stock_view(args.model, Path(tmp) / "stock")
        # Both engines stay up for the whole run, so the settings can be interleaved.
        stock, beacon = engine(stock_path, args), engine(beacon_path, args)
        settings = [Setting("stock", stock, StepSampler(stock), None),
                    Setting("plugin c=off", beacon, StepSampler(beacon), None)]
        settings += [Setting(f"plugin c={c}", beacon, settings[1].sampler, c) for c in RATIOS]
        runs: dict[str, list[Figures]] = {s.name: [] for s in settings}
        for round_ in tqdm(range(args.rounds), desc="rounds"):
            # Forward, then backward: a setting's neighbours change, and so a steady drift of the
            # machine's speed over a round shifts no setting's paired ratio in one direction.
            for setting in settings if round_ % 2 == 0 else settings[::-1]:
                runs[setting.name].append(run_once(setting, args))
        for llm in (stock, beacon):
            llm.llm_engine.engine_core.shutdown()
        del stock, beacon
    report(runs, args)


def paired(runs: dict[str, list[Figures]]) -> dict[str, list[float]]:
    """Each round's tokens/s over the same round's stock tokens/s."""
    stock = [f.tokens_per_s for f in runs["stock"]]
    return {name: [f.tokens_per_s / s for f, s in zip(figures, stock)]
            for name, figures in runs.items()}


def block_bound(name: str, args) -> int:
    """The physical limit on one request's blocks: all of its tokens uncompressed; at ratio c,
    the spec's rule-5 bound ceil((P + floor(n/c) + c + 1) / block_size) plus one in flight."""
    from breadcrumbs_vllm.vllm_plugin.compression import cdiv

    prompt, n, size = args.prompt_len, args.max_tokens, args.block_size
    if "c=" not in name or name.endswith("off"):
        return cdiv(prompt + n, size)
    c = int(name.rsplit("=", 1)[1])
    return cdiv(prompt + n // c + c + 1, size) + 1


def report(runs: dict[str, list[Figures]], args) -> None:
    """The table: medians over rounds; ratios are medians of the paired per-round ratios."""
    wall = paired(runs)
    base = runs["stock"][-1]  # the scheduler figures are the same every round
    print(f"\nworkload: {args.requests} requests x {args.max_tokens} tokens, prompt "
          f"{args.prompt_len}, pool {args.pool_blocks} blocks of {args.block_size}, "
          f"{args.rounds} interleaved rounds (tok/s: median; vs stock: median of paired ratios, "
          "[min, max])")
    print(f"{'setting':<15}{'tok/s':>9}{'max run':>9}{'mean run':>10}{'peak blk/req':>14}"
          f"{'bound':>7}{'preempt':>9}{'waits':>7}{'tok/s vs stock':>16}{'  [min, max]':<16}"
          f"{'mean run vs stock':>18}")
    for name, figures in runs.items():
        f = figures[-1]
        print(f"{name:<15}{statistics.median(x.tokens_per_s for x in figures):>9.1f}"
              f"{f.max_running:>9}{f.mean_running:>10.1f}{f.peak_blocks_per_request:>14}"
              f"{block_bound(name, args):>7}"
              f"{f.preemptions:>9}{f.waits:>7}{statistics.median(wall[name]):>16.3f}"
              f"  [{min(wall[name]):.3f}, {max(wall[name]):.3f}]"
              f"{f.mean_running / base.mean_running:>18.2f}")
    print("\ntok/s of each round, in round order:")
    for name, figures in runs.items():
        print(f"{name + ':':<15}" + " ".join(f"{x.tokens_per_s:8.1f}" for x in figures))


if __name__ == "__main__":
    main()
