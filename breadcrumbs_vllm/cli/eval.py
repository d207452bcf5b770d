"""``breadcrumbs eval``: accuracy against KV entries on held-out problems, with baselines.

Two modes. By default each baseline runs at the peak KV each problem reached at each ratio. With
``--budgets`` every method gets the same KV budget ``B`` (entries, prompt included), for each
``B``: the teacher stops when its cache is full, the student at each ratio reaches further in the
same memory, the baselines run with cache size ``B``; the output adds AUAC per method.

``--switch 4:16@mid`` adds a row along a ratio path that rises once (spec rule 8): the model
starts at ratio 4 and rises to 16 at the first window boundary at or after ``max_tokens // 2``
generated tokens (``@T``: at or after ``T``), the row named ``c=4→16@256`` for ``--max-tokens
512``; what a request whose ratio the server raises mid-generation gets.

Harder problems than training: ``--task-option`` overrides the model's difficulty knobs, e.g.
Countdown's ``min_backtracks=3`` (at least three dead ends before the solution: solver traces
about 20% longer than ``min_backtracks=1``) or ``breadth=4`` (about 45% longer). The draws are
the task's generator from ``--seed`` with those knobs, and ``--held-out-from`` still skips any
problem a checkpoint trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from breadcrumbs_vllm.cli.data_args import add_data_arguments, data_spec
from breadcrumbs_vllm.cli.init_model import parse_ratio_list

if TYPE_CHECKING:
    from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
    from breadcrumbs_vllm.evaluation.runner import EvalRow, Switch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate ratios and baselines on held-out problems")
    p.add_argument("--model", help="checkpoint folder (required unless --combine)")
    p.add_argument("--task", default=None, help="task (default: the one in the model's config)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="a difficulty knob (repeatable), e.g. high=12; default: the knobs in the "
                        "model's config (none of them when --task names another task)")
    p.add_argument("--n", type=int, default=100, help="number of held-out problems")
    p.add_argument("--seed", type=int, default=1234, help="problem seed (training never uses it)")
    p.add_argument("--held-out-from", default=None, metavar="PATH[,PATH]",
                   help="skip problems these checkpoints, and those they started from (a "
                        "student's teacher, --init), trained on, replayed from their "
                        "training_config.json; draws on from --seed until --n are unseen. Pass a "
                        "student to evaluate it and its teacher on the same problems")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--ratios", default="none,2,4,8,16")
    p.add_argument("--switch", action="append", default=[], metavar="C0:C1@mid|C0:C1@T",
                   help="also a row along a ratio path that rises once (repeatable): ratio C0, "
                        "then C1 from the first window boundary of C0 at or after max_tokens // 2 "
                        "(@mid) or T (@T) generated tokens, e.g. 4:16@mid")
    p.add_argument("--baselines", default="streaming,tova", help="comma list, or '' for none")
    p.add_argument("--baseline-model", default=None,
                   help="the model the baselines compress (default: the teacher a student's "
                        "config names, else --model)")
    p.add_argument("--budgets", default=None, metavar="B[,B...]",
                   help="fixed-budget mode: every method gets the same KV budget B per sequence "
                        "(entries, prompt included), for each B. The teacher (the baseline "
                        "model) stops when its cache holds B entries, each ratio of --ratios "
                        "('none' is ignored) decodes the model under the same B, the baselines "
                        "run on the teacher with cache size B; adds AUAC per method")
    p.add_argument("--combine", default=None, metavar="JSON[,JSON...]",
                   help="decode nothing: join fixed-budget results JSONs of one setting (a sweep "
                        "split into one command per budget) into --out, with the table, AUAC and "
                        "plot recomputed over all their budgets")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--kl", action="store_true",
                   help="also the per-token KL(teacher || model) at each ratio on the teacher's "
                        "greedy traces of the same problems (written beside --out as *-kl.json)")
    p.add_argument("--out", default="results.json", help="results JSON; the plot goes beside it")
    add_data_arguments(p, "your own data instead of a task: --n rows of it, shuffled by --seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
    from breadcrumbs_vllm.evaluation import report
    from breadcrumbs_vllm.evaluation.held_out import training_prompts, unseen_problems
    from breadcrumbs_vllm.evaluation.runner import Evaluator
    from breadcrumbs_vllm.reference import POLICIES, ReferenceEngine
    from breadcrumbs_vllm.tasks import get_task, parse_task_options

    if args.combine is not None:
        title, rows = report.combine_budget_runs(
            [Path(path.strip()) for path in args.combine.split(",") if path.strip()])
        write_budget_outputs(rows, title, Path(args.out))
        return 0
    if args.model is None:
        raise ValueError("--model is required (unless --combine)")
    bc = read_breadcrumbs_config(args.model)
    if args.data is not None:
        task, options = data_task(args), {}
    else:
        if not (args.task or bc.task):
            raise ValueError("--task is required: the model's config names no task")
        same_task = args.task in (None, bc.task)
        options = {**(bc.task_options if same_task else {}),
                   **parse_task_options(args.task_option)}
        task = get_task(args.task or bc.task, **options)
    ratios = parse_ratio_list(args.ratios)
    for ratio in ratios:
        bc.check_ratio(ratio)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    for name in baselines:
        if name not in POLICIES:
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(POLICIES)}")
    if args.n < 1 or args.max_tokens < 1 or args.batch_size < 1:
        raise ValueError("--n, --max-tokens and --batch-size must be positive")
    budgets = parse_budgets(args.budgets) if args.budgets is not None else None
    switches = [parse_switch(text, args.max_tokens, bc) for text in args.switch]
    if switches and budgets is not None:
        raise ValueError("--switch goes with the per-problem mode, not --budgets")

    engine = ReferenceEngine.from_checkpoint(args.model)
    # The baseline model also runs the teacher rows of the fixed-budget mode.
    uses_baseline_model = bool(baselines) or budgets is not None
    baseline_model = args.baseline_model or (
        default_baseline_model(Path(args.model), bc.teacher) if uses_baseline_model else args.model)
    baseline_engine = None
    if uses_baseline_model and Path(baseline_model).resolve() != Path(args.model).resolve():
        baseline_engine = ReferenceEngine.from_checkpoint(baseline_model)
    if args.held_out_from:
        print(f"held out: replaying the training problems of {args.held_out_from}")
        seen = set().union(*(training_prompts(path.strip())
                             for path in args.held_out_from.split(",") if path.strip()))
        problems, skipped = unseen_problems(task, args.n, args.seed, seen)
        print(f"held out: skipped {skipped} problems of seed {args.seed} seen in training")
    else:
        problems = task.problems(args.n, args.seed)
    evaluator = Evaluator(engine, task, args.max_tokens, args.batch_size,
                          baseline_engine=baseline_engine)
    if budgets is not None:
        rows = evaluator.run_fixed_budget(problems, budgets, [r for r in ratios if r is not None],
                                          baselines)
    else:
        rows = evaluator.run(problems, ratios, baselines, switches)

    knobs = "".join(f", {k}={v}" for k, v in options.items())
    title = f"{task.name}{knobs}: {Path(args.model).name}, n={args.n}, seed={args.seed}"
    if args.held_out_from:
        title += f" (held out: {skipped} seen in training skipped)"
    if budgets is not None:
        title += f"; fixed budgets, teacher and baselines on {Path(baseline_model).name}"
    elif baselines:
        title += f"; baselines on {Path(baseline_model).name}"
    if budgets is not None:
        write_budget_outputs(rows, title, Path(args.out))
        return 0
    out, plot = Path(args.out), Path(args.out).with_suffix(".png")
    report.print_table(rows, title)
    report.write_json(rows, out)
    report.plot_frontier(rows, plot, title)
    print(f"wrote {out} and {plot}")
    if args.kl:
        write_kl(engine, baseline_engine or ReferenceEngine.from_checkpoint(baseline_model),
                 problems, ratios, args, title)
    return 0


def write_kl(engine, teacher, problems, ratios, args: argparse.Namespace, title: str) -> None:
    """The held-out per-token KL to the teacher, printed and written beside ``--out``."""
    import json

    from breadcrumbs_vllm.evaluation.kl import held_out_kl
    from breadcrumbs_vllm.evaluation.report import kl_json_path

    kl = held_out_kl(engine, teacher, problems, ratios, args.max_tokens)
    out = kl_json_path(Path(args.out))
    out.write_text(json.dumps({"title": title, "n": len(problems), "kl_per_token": kl},
                              indent=2) + "\n")
    print("per-token KL(teacher || model) on the teacher's traces: "
          + ", ".join(f"c={r}: {v:.4f}" for r, v in kl.items()) + f"; wrote {out}")


def write_budget_outputs(rows: list[EvalRow], title: str, out: Path) -> None:
    """The fixed-budget table on the terminal, its JSON at ``out`` and its plot beside it."""
    from breadcrumbs_vllm.evaluation import report

    plot = out.with_suffix(".png")
    report.print_budget_table(rows, title)
    report.write_budget_json(rows, out, title)
    report.plot_budget_sweep(rows, plot, title)
    print(f"wrote {out} and {plot}")


def data_task(args: argparse.Namespace):
    """``--data`` rows as the task; ``--n`` is capped at the rows there are."""
    from breadcrumbs_vllm.data import DataTask

    if args.held_out_from or args.task:
        raise ValueError("--data replaces --task and --held-out-from (hold rows out of the "
                         "training file instead)")
    task = DataTask(data_spec(args))
    args.n = min(args.n, len(task.rows))
    return task


def default_baseline_model(model: Path, teacher: str | None) -> str:
    """A student's baselines compress its teacher (the paper's comparison); else the model itself.

    A student's teacher link may name a training stage's committed record, which holds its config
    but no weights (``docs/results/stages/``): then the user must say which teacher to compress.
    """
    if teacher is None or not (model / teacher).is_dir():
        return str(model)
    if not any((model / teacher).glob("*.safetensors")):
        raise ValueError(f"the teacher {model / teacher} holds no weights (a training stage's "
                         "record): pass --baseline-model, or --baselines '' for none")
    return str(model / teacher)


def parse_switch(text: str, max_tokens: int, bc: BreadcrumbsConfig) -> Switch:
    """``"4:16@mid"`` -> ratio 4, then 16 from the first boundary of 4 at or after
    ``max_tokens // 2`` generated tokens (``"4:16@100"``: at or after 100), with one-line errors."""
    from breadcrumbs_vllm.evaluation.runner import Switch

    try:
        ratios, when = text.split("@")
        start, higher = (int(r) for r in ratios.split(":"))
        target = max_tokens // 2 if when == "mid" else int(when)
    except ValueError:
        raise ValueError("--switch takes C0:C1@mid or C0:C1@T, e.g. 4:16@mid; "
                         f"got {text!r}") from None
    for ratio in (start, higher):
        bc.check_ratio(ratio)
    if higher <= start:
        raise ValueError(f"--switch {text}: ratios only rise ({higher} is not above {start})")
    at = max(1, -(-target // start)) * start  # the first boundary at or after target
    if at >= max_tokens:
        raise ValueError(f"--switch {text}: the switch at {at} generated tokens is not before "
                         f"--max-tokens {max_tokens}")
    return Switch(start, higher, at)


def parse_budgets(text: str) -> list[int]:
    """``"128,192,256"`` -> ``[128, 192, 256]`` (sorted, distinct), with one-line errors."""
    try:
        budgets = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ValueError(f"--budgets takes whole numbers of KV entries, got {text!r}") from None
    if not budgets or budgets[0] < 1:
        raise ValueError(f"--budgets needs one or more positive KV budgets, got {text!r}")
    return budgets
