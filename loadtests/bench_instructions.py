"""Instruction counts per engine step: stock vLLM vs the breadcrumbs plugin with compression off.

Wall-clock ratios on a shared machine swing by more than the 1% this compares; the number of
instructions a fixed piece of work executes does not. This script re-runs itself under
``valgrind --tool=callgrind`` with instrumentation off until the measured regions (start-up runs
a few times slower instead of ~50x), starts the stock and the beacon engine in-process (the
scheduler and the worker run in this process, so callgrind sees both), and for every setting:

1. adds ``--requests`` greedy requests and steps the engine ``--warmup-steps`` times (prefill
   and the first decodes, not counted), so every request is decoding;
2. counts exactly ``--steps`` engine steps between two callgrind client requests (issued by a
   small C helper compiled at run time: ctypes cannot issue them itself) and dumps the count
   under the setting's name;
3. aborts the requests, so the next setting starts from the same empty engine.

Every setting is counted ``--repeats`` times; the spread between repeats is printed (it is what
"counts that do not drift" means here). The pool is large enough that nothing is preempted, so
all settings run the same schedule and the difference is the plugin's own per-step work.

Attribution: with compression off, each of the plugin's parts can be switched back to vLLM's own
code on the live beacon engine without changing what it computes. Each part's cost is the count
with the whole plugin minus the count with that part switched back; ``all parts stock`` switches
back every part (what remains against stock is the plugin's patches that cannot be switched off).
Differences of up to about 0.3% are noise between regions: on 2026-12-02, parts that run no plugin
code at all with compression off (the stock path) still measured up to that much, while one
region's two repeats agreed within 0.2%.
"compressed" settings (one request of the batch at ``--ratio``, then all of them) show what the
per-step cost grows with once compression is live.

    python loadtests/bench_instructions.py          # defaults: ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_plugin import engine, make_model, workload_arguments

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

#: The client requests used, wrapped in C functions ctypes can call.
HELPER_SOURCE = r"""
#include <valgrind/callgrind.h>
void bc_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void bc_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
void bc_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""

#: One OpenMP thread and fixed hashing: spinning worker threads and hash seeds would make the
#: counts vary from run to run.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "0", "PYTHONHASHSEED": "0",
             "TOKENIZERS_PARALLELISM": "false"}


class Callgrind:
    """Counts the instructions of one call, from inside a process that callgrind runs.

    Instrumentation starts at the first count and then stays on: callgrind attributes costs
    wrongly after it is stopped and restarted (measured: a second region then counted 1% of its
    instructions), so only the start-up and the warm-up pass run uninstrumented.
    """

    def __init__(self, workdir: Path) -> None:
        source, lib = workdir / "bc_callgrind.c", workdir / "bc_callgrind.so"
        source.write_text(HELPER_SOURCE)
        done = subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(source)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"cannot build the callgrind helper (needs cc and valgrind's "
                             f"headers): {done.stderr.strip()}")
        self.lib = ctypes.CDLL(str(lib))
        self.instrumenting = False

    def count(self, name: str, work: Callable[[], None]) -> None:
        """Run ``work`` with collection on and dump its count as ``name``."""
        if not self.instrumenting:
            self.lib.bc_start()
            self.instrumenting = True
        self.lib.bc_toggle()
        work()
        self.lib.bc_toggle()
        self.lib.bc_dump(name.encode())


def read_dumps(out_dir: Path) -> dict[str, list[int]]:
    """Instruction counts per dump name, in dump order, from callgrind's output files."""
    counts: dict[str, list[int]] = {}
    for path in sorted(out_dir.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:])):
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (.+)$", text, flags=re.MULTILINE)
        total = re.search(r"^(?:summary|totals): (\d+)", text, flags=re.MULTILINE)
        if trigger and total:
            counts.setdefault(trigger.group(1).strip(), []).append(int(total.group(1)))
    return counts


# --- child: the engines and the counted regions ------------------------------------------------
class StockParts:
    """Switches the plugin's parts back to vLLM's code on a live beacon engine (compression off).

    A part is switched back by putting vLLM's own methods in the instance's ``__dict__`` (which
    wins over its class's), for the methods the plugin overrides or patches there. Each
    :meth:`switch_to_stock` does that and returns a function that undoes it. Only valid while no
    compressed request is live: the stock code does not evict.
    """

    SCHEDULER = ("add_request", "_reserve_prefill_lookahead", "_get_local_prefix_cache_hit",
                 "_update_request_with_output", "_free_request")
    WORKER = ("_update_states", "_prepare_inputs", "_bookkeeping_sync")

    def __init__(self, llm) -> None:
        from vllm.v1.core.kv_cache_manager import KVCacheManager
        from vllm.v1.core.sched.scheduler import Scheduler

        from breadcrumbs_vllm.vllm_plugin.worker import BeaconRunner

        core = llm.llm_engine.engine_core.engine_core
        scheduler = core.scheduler
        runner = core.model_executor.driver_worker.worker.model_runner
        mro = type(runner).__mro__
        stock_runner = mro[mro.index(BeaconRunner) + 1]  # vLLM's runner under the overrides
        stock_worker = {n: getattr(stock_runner, n) for n in self.WORKER}
        self.targets = {
            "scheduler overrides": (scheduler, {n: getattr(Scheduler, n) for n in self.SCHEDULER}),
            "block accountant": (scheduler.kv_cache_manager,
                                 {"allocate_slots": KVCacheManager.allocate_slots}),
            "worker hooks": (runner, stock_worker),
            "metrics": (scheduler, {"make_stats": Scheduler.make_stats}),
        }

    def parts(self) -> list[str]:
        return list(self.targets)

    def switch_to_stock(self, part: str) -> Callable[[], None]:
        obj, stock = self.targets[part]
        names = [n for n, f in stock.items() if getattr(type(obj), n) is not f]
        saved = {n: obj.__dict__[n] for n in names if n in obj.__dict__}
        for n in names:
            obj.__dict__[n] = stock[n].__get__(obj)

        def undo() -> None:
            for n in names:
                del obj.__dict__[n]
            obj.__dict__.update(saved)
        return undo


@dataclass
class Region:
    """One counted setting: the engine, the ratio of each request, and what to switch back."""

    name: str
    llm: object
    ratios: list[int | None]
    stock_parts: list[str]


def run_region(region: Region, parts: StockParts | None, counter: Callgrind | None, args,
               steps: int) -> None:
    """Warm up ``region``'s workload, run ``steps`` steps (counted if ``counter``), abort it."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine_ = region.llm.llm_engine
    ids = []
    for i, ratio in enumerate(region.ratios):
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                                detokenize=False, extra_args={"compression_ratio": ratio})
        prompt = TokensPrompt(prompt_token_ids=[6 + (i * 7 + j) % 90
                                                for j in range(args.prompt_len)])
        ids.append(engine_.add_request(f"r{i}", prompt, params))
    for _ in range(args.warmup_steps):
        engine_.step()
    undos = [parts.switch_to_stock(part) for part in region.stock_parts] if parts else []

    def run() -> None:
        for _ in range(steps):
            engine_.step()

    if counter is not None:
        counter.count(region.name, run)
    else:
        run()
    for undo in reversed(undos):
        undo()
    engine_.abort_request(ids, internal=True)  # add_request returns internal ids
    while engine_.has_unfinished_requests():
        engine_.step()


def serving_engine(path: Path, args):
    """An engine that makes stats as a server does: the scheduler publishes its figures on the
    stats channel (the offline engine loads no stat-logger plugin, so the front end's reading,
    a few struct unpacks per step, is not counted)."""
    return engine(path, args, disable_log_stats=False, enforce_eager=True)


STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench_instructions {time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr,
          flush=True)


def child(args) -> None:
    workdir = Path(args.child)
    counter = Callgrind(workdir)
    beacon_path, stock_path = make_model(workdir / "models", args.seed)
    stock, beacon = serving_engine(stock_path, args), serving_engine(beacon_path, args)
    parts = StockParts(beacon)
    n = args.requests
    regions = [Region("stock", stock, [None] * n, []),
               Region("plugin c=off", beacon, [None] * n, [])]
    regions += [Region(f"plugin c=off, {name} stock", beacon, [None] * n, [name])
                for name in parts.parts()]
    regions += [Region("plugin c=off, all parts stock", beacon, [None] * n, list(parts.parts())),
                Region(f"plugin 1 of {n} at c={args.ratio}", beacon,
                       [args.ratio] + [None] * (n - 1), []),
                Region(f"plugin {n} of {n} at c={args.ratio}", beacon, [args.ratio] * n, [])]
    progress("engines up; warm-up pass (first-use code paths run here, uninstrumented)")
    for region in regions:
        run_region(region, parts if region.llm is beacon else None, None, args, 1)
    for repeat in range(args.repeats):
        for region in regions:
            progress(f"counting {region.name} (repeat {repeat + 1})")
            run_region(region, parts if region.llm is beacon else None, counter, args, args.steps)
    for llm in (stock, beacon):
        llm.llm_engine.engine_core.shutdown()


# --- parent: run the child under callgrind, print the table ------------------------------------
def report(counts: dict[str, list[int]], args) -> float:
    """Print per-step counts, ratios to stock and the attribution; return c=off / stock."""
    per_step = {name: statistics.median(c) / args.steps for name, c in counts.items()}
    stock, plugin = per_step["stock"], per_step["plugin c=off"]
    print(f"\nworkload: {args.requests} requests decoding (prompt {args.prompt_len}), "
          f"{args.steps} counted engine steps per region after {args.warmup_steps} warm-up "
          f"steps, {args.repeats} repeats; instructions (callgrind Ir) per engine step")
    print(f"{'setting':<44}{'Ir/step':>14}{'vs stock':>10}{'repeat spread':>15}")
    for name, c in counts.items():
        spread = (max(c) - min(c)) / min(c)
        print(f"{name:<44}{per_step[name]:>14,.0f}{per_step[name] / stock:>10.4f}"
              f"{spread:>14.4%}")
    print("\nextra instructions per step of the plugin with compression off, by part "
          "(plugin minus plugin with that part stock):")
    for name in ("scheduler overrides", "block accountant", "worker hooks", "metrics"):
        key = f"plugin c=off, {name} stock"
        if key in per_step:
            extra = plugin - per_step[key]
            print(f"  {name:<22}{extra:>12,.0f}  ({extra / stock:+.3%} of stock)")
    rest = per_step["plugin c=off, all parts stock"] - stock
    print(f"  {'not switchable':<22}{rest:>12,.0f}  ({rest / stock:+.3%} of stock)")
    ratio = plugin / stock
    print(f"\nplugin c=off vs stock: {ratio:.4f} instructions per engine step")
    return ratio


def parent(args) -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                   f"--callgrind-out-file={workdir}/callgrind.out", sys.executable,
                   str(Path(__file__).resolve()), "--child", str(workdir)]
        command += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                    if k not in ("child", "max_ratio")]
        done = subprocess.run(command, env={**os.environ, **CHILD_ENV}, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the counted run failed (exit {done.returncode})")
        ratio = report(read_dumps(workdir), args)
    if args.max_ratio is not None and ratio > args.max_ratio:
        print(f"FAIL: above --max-ratio {args.max_ratio}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_arguments(parser, requests=16, max_tokens=256, pool_blocks=256)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16, help="engine steps counted per region")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ratio", type=int, default=8, help="ratio of the compressed settings")
    parser.add_argument("--max-ratio", type=float, default=None,
                        help="exit 1 when c=off / stock instructions per step is above this")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
