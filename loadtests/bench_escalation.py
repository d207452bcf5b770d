"""Escalation under KV pressure: stock vLLM, "auto" fixed at admission, "auto" that may rise.

An open-loop workload: held-out problems of the model's task (of the evaluation seed, less those
the model's lineage trained on, as ``breadcrumbs eval --held-out-from`` draws them) arrive at
seeded exponential intervals, whatever the engine is doing, on a KV pool too small to
hold them all at once. Four arms decode the same arrivals, each on its own in-process engine
with the same pool:

* ``stock``: vLLM without the plugin on the student's teacher (what one would serve without
  beacons: a student is trained for compressed decoding only), seen without its ``breadcrumbs``
  block;
* ``auto-admission``: ``compression_ratio: "auto"``, the ratio fixed when a request is admitted
  (``--additional-config '{"breadcrumbs_escalation": false}'``);
* ``auto-rises-only``: the same requests, allowed to rise while they run, admitted as stock
  vLLM admits them and preempted as it preempts, without waits
  (``{"breadcrumbs_admission_rule": false}``): the ablation;
* ``auto-escalation``: escalation as served (``kv_budget.py``): requests rise, and one is
  admitted only into room the running ones leave once raised to their ceilings.

Per arm and arrival rate: preemptions, waits for a block (steps in which a running request
waited instead of a preemption), ratio escalations, generated tokens/s, p50/p99 latency
(arrival to last token), the accuracy of the answers (the task's verifier), the requests each
step ran (decoding or prefilling, averaged over the steps) and the ratio each answer finished
at. Every arm's engine stays up for the whole run, so that at each rate the arms run
one after another, in mirrored order from one rate to the next (a b c d, d c b a), each with its
prefix cache emptied; the whole sweep runs ``--repeats`` times. Wall-clock figures on a shared
CPU drift: a run is compared with its neighbours seconds away. Prints each run, then the issue's
comparison (escalation against admission-only "auto", means over the repeats, with each
repeat's paired tok/s ratio); writes JSON and a plot of the means.

    python loadtests/bench_escalation.py                       # the bundled Countdown student
    python loadtests/bench_escalation.py --rates 10 --problems 48 --no-held-out   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from bench_plugin import StepSampler, plugin_total, stock_view

ARMS = ("stock", "auto-admission", "auto-rises-only", "auto-escalation")


@dataclass
class ArmFigures:
    """One arm at one rate in one repeat."""

    repeat: int
    arm: str
    rate: float
    preemptions: int
    #: Steps in which a request waited for a free block instead of a preemption.
    waits: int
    escalations: int
    tokens_per_s: float
    latency_p50_s: float
    latency_p99_s: float
    accuracy: float
    n: int
    #: Requests each step ran (decoding or prefilling), averaged over the steps that ran any.
    mean_scheduled: float
    #: How many answers finished at each ratio ("none": uncompressed), from their reports.
    final_ratios: dict[str, int]


def make_engine(model: Path, arm: str, args):
    from vllm import LLM

    from breadcrumbs_vllm.vllm_plugin.kv_budget import (
        ADMISSION_KEY,
        ESCALATION_KEY,
        OVERCOMMIT_KEY,
        TARGET_KEY,
    )

    extra = {TARGET_KEY: args.target, ESCALATION_KEY: arm != "auto-admission",
             ADMISSION_KEY: arm == "auto-escalation", OVERCOMMIT_KEY: args.overcommit}
    return LLM(model=str(model), dtype="float32", block_size=32, max_model_len=args.max_model_len,
               num_gpu_blocks_override=args.pool_blocks, enable_prefix_caching=True, seed=0,
               enforce_eager=True, additional_config={} if arm == "stock" else extra)


def arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Seeded arrival times in seconds: exponential gaps at ``rate`` requests per second."""
    rng, now, out = random.Random(seed), 0.0, []
    for _ in range(n):
        now += rng.expovariate(rate)
        out.append(now)
    return out


def run_arm(llm, sampler: StepSampler, arm: str, prompts: list[list[int]], times: list[float],
            args, label: str):
    """Feed the arrivals open loop; returns (texts by index, latencies, tokens/s, preemptions,
    waits, escalations, mean scheduled, final ratios). ``sampler`` wraps ``llm``'s scheduler."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from breadcrumbs_vllm.vllm_plugin.report import read_report

    engine = llm.llm_engine
    sampler.reset()
    extra = None if arm == "stock" else {"compression_ratio": "auto"}
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, extra_args=extra)
    escalations_before = plugin_total(sampler.scheduler, "escalations")
    texts, latencies, tokens, sent, final = {}, {}, 0, 0, Counter()
    start = time.perf_counter()
    with tqdm(total=len(prompts), desc=label, unit="req") as bar:
        while len(texts) < len(prompts):
            now = time.perf_counter() - start
            while sent < len(prompts) and times[sent] <= now:
                engine.add_request(str(sent), TokensPrompt(prompt_token_ids=prompts[sent]),
                                   params)
                sent += 1
            if not engine.has_unfinished_requests():
                time.sleep(min(0.01, max(0.0, times[sent] - now)))
                continue
            outputs = engine.step()
            for out in outputs:
                if out.finished:
                    i = int(out.request_id)
                    texts[i] = out.outputs[0].text
                    tokens += len(out.outputs[0].token_ids)
                    latencies[i] = time.perf_counter() - start - times[i]
                    report = read_report(out.kv_transfer_params)
                    final[str(report.path[-1][1]) if report is not None else "none"] += 1
                    bar.update()
    elapsed = time.perf_counter() - start
    return (texts, [latencies[i] for i in sorted(latencies)], tokens / elapsed,
            sampler.preemptions, sampler.waits,
            plugin_total(sampler.scheduler, "escalations") - escalations_before,
            sampler.running_sum / max(sampler.steps, 1), dict(sorted(final.items())))


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def mean(rows: list[ArmFigures], arm: str, rate: float, key: str) -> float:
    """``key``'s mean over the repeats of ``arm`` at ``rate``."""
    return statistics.fmean(getattr(r, key) for r in rows if r.arm == arm and r.rate == rate)


def compare(rows: list[ArmFigures], rate: float) -> str:
    """The issue's comparison at ``rate``: escalation against admission-only "auto", means
    over the repeats, with each repeat's tok/s ratio (their spread is the machine's noise)."""
    def both(key: str) -> tuple[float, float]:
        return (mean(rows, "auto-escalation", rate, key), mean(rows, "auto-admission", rate, key))

    pairs = zip(*([r for r in rows if r.arm == arm and r.rate == rate]
                  for arm in ("auto-escalation", "auto-admission")), strict=True)
    runs = ", ".join(f"x{e.tokens_per_s / a.tokens_per_s:.2f}" for e, a in pairs)
    (preempted, admission_preempted), (tok_s, admission_tok_s), (acc, admission_acc) = (
        both("preemptions"), both("tokens_per_s"), both("accuracy"))
    (scheduled, admission_scheduled) = both("mean_scheduled")
    (waits, admission_waits) = both("waits")
    return (f"@{rate:g}/s escalation vs admission-only: preemptions {preempted:g} vs "
            f"{admission_preempted:g}, tok/s x{tok_s / admission_tok_s:.2f} (each run: {runs}), "
            f"accuracy {100 * (acc - admission_acc):+.1f} points, requests a step ran "
            f"{scheduled:.2f} vs {admission_scheduled:.2f}, waits {waits:g} vs {admission_waits:g}")


def plot(rows: list[ArmFigures], path: Path) -> None:
    """One panel per figure, arrival rate on x, one line per arm (means over the repeats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = [("preemptions", "preemptions"), ("tokens_per_s", "tokens/s"),
              ("latency_p99_s", "p99 latency (s)"), ("accuracy", "accuracy")]
    colors = dict(zip(ARMS, ["#888888", "#4c72b0", "#55a868", "#dd8452"], strict=True))
    fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.2))
    for ax, (key, label) in zip(axes, fields, strict=True):
        rates = sorted({r.rate for r in rows})
        for arm in ARMS:
            if any(r.arm == arm for r in rows):
                ax.plot(rates, [mean(rows, arm, rate, key) for rate in rates], "o-", label=arm,
                        color=colors[arm])
        ax.set_title(label)
        ax.set_xscale("log")
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.minorticks_off()
        ax.set_xlabel("arrivals per second")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
    from breadcrumbs_vllm.tasks import get_task
    from breadcrumbs_vllm.vllm_plugin.kv_budget import DEFAULT_OVERCOMMIT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/countdown-student"))
    p.add_argument("--problems", type=int, default=192)
    p.add_argument("--seed", type=int, default=1234, help="problem seed (training never uses it)")
    p.add_argument("--held-out", action=argparse.BooleanOptionalAction, default=True,
                   help="skip the problems the model's lineage trained on (replays its training "
                        "draws first: a few minutes)")
    p.add_argument("--rates", default="5,10,20",
                   help="arrivals per second, comma-separated: each arm serves every rate")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--pool-blocks", type=int, default=40)
    p.add_argument("--target", type=float, default=0.8, help="the projected-usage target")
    p.add_argument("--overcommit", type=float, default=DEFAULT_OVERCOMMIT,
                   help="how far past the pool auto-escalation's admission may commit, as a "
                        "share of the pool")
    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"comma-separated, of {', '.join(ARMS)} (auto-admission and "
                        "auto-escalation are compared)")
    p.add_argument("--repeats", type=int, default=3,
                   help="sweeps over every rate; at each rate the arms run one after another, "
                        "in mirrored order from one rate to the next (a b c, c b a, ...)")
    p.add_argument("--out", type=Path, default=Path("escalation.json"))
    args = p.parse_args()
    arms = [a for a in ARMS if a in args.arms.split(",")]
    if {"auto-admission", "auto-escalation"} - set(arms) or set(args.arms.split(",")) - set(ARMS):
        p.error(f"--arms: comma-separated, of {', '.join(ARMS)}, with auto-admission and "
                "auto-escalation")

    bc = read_breadcrumbs_config(args.model)
    task = get_task(bc.task, **bc.task_options)
    if args.held_out:
        from breadcrumbs_vllm.evaluation.held_out import training_prompts, unseen_problems

        problems, skipped = unseen_problems(task, args.problems, args.seed,
                                            training_prompts(args.model))
        print(f"held out: skipped {skipped} problems of seed {args.seed} seen in training")
    else:
        problems = task.problems(args.problems, args.seed)
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    teacher = (args.model / bc.teacher).resolve() if bc.teacher else args.model
    with tempfile.TemporaryDirectory() as tmp:
        stock = stock_view(teacher, Path(tmp) / "stock")
        # Every arm's engine stays up for the whole run, so that the arms serve each rate one
        # after another: a run's neighbours are seconds away, not an engine start.
        engines = {arm: make_engine(stock if arm == "stock" else args.model, arm, args)
                   for arm in arms}
        samplers = {arm: StepSampler(llm) for arm, llm in engines.items()}
        prompts = {arm: [llm.get_tokenizer().apply_chat_template(
            [{"role": "user", "content": pr.prompt}], add_generation_prompt=True, tokenize=True,
            return_dict=False) for pr in problems] for arm, llm in engines.items()}
        for block, (repeat, rate) in enumerate(itertools.product(range(args.repeats), rates)):
            times = arrivals(len(problems), rate, args.seed)
            # Forward, then backward: a steady drift of the machine's speed weighs on every arm
            # alike over two blocks.
            for arm in arms if block % 2 == 0 else arms[::-1]:
                llm = engines[arm]
                llm.reset_prefix_cache()  # no run finds the prompts of the one before
                (texts, latencies, tok_s, preemptions, waits, escalations, mean_scheduled,
                 final) = run_arm(llm, samplers[arm], arm, prompts[arm], times, args,
                                  f"{arm} @{rate:g}/s #{repeat + 1}")
                accuracy = sum(task.verify(pr, texts[i]) for i, pr in enumerate(problems))
                rows.append(ArmFigures(repeat, arm, rate, preemptions, waits, escalations, tok_s,
                                       _percentile(latencies, 50), _percentile(latencies, 99),
                                       accuracy / len(problems), len(problems),
                                       mean_scheduled, final))
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
        del engines, llm
    rows.sort(key=lambda r: (r.rate, ARMS.index(r.arm), r.repeat))
    print(f"{'rate/s':>6} {'arm':<16} {'run':>3} {'preempt':>8} {'waits':>6} {'escal':>6} "
          f"{'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'acc':>6} {'per step':>8}  final ratios")
    for r in rows:
        print(f"{r.rate:>6g} {r.arm:<16} {r.repeat + 1:>3} {r.preemptions:>8} {r.waits:>6} "
              f"{r.escalations:>6} {r.tokens_per_s:>8.1f} {r.latency_p50_s:>7.2f} "
              f"{r.latency_p99_s:>7.2f} {r.accuracy:>6.1%} {r.mean_scheduled:>8.2f}  "
              f"{r.final_ratios}")
    for rate in rates:
        print(compare(rows, rate))
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "arms": [asdict(r) for r in rows]}, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
