"""``breadcrumbs eval``: accuracy against KV entries on held-out problems, with baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from breadcrumbs_vllm.cli.init_model import parse_ratio_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate ratios and baselines on held-out problems")
    p.add_argument("--model", required=True, help="checkpoint folder")
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
    p.add_argument("--baselines", default="streaming,tova", help="comma list, or '' for none")
    p.add_argument("--baseline-model", default=None,
                   help="the model the baselines compress (default: the teacher a student's "
                        "config names, else --model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="results.json", help="results JSON; the plot goes beside it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
    from breadcrumbs_vllm.evaluation.held_out import training_prompts, unseen_problems
    from breadcrumbs_vllm.evaluation.report import plot_frontier, print_table, write_json
    from breadcrumbs_vllm.evaluation.runner import Evaluator
    from breadcrumbs_vllm.reference import POLICIES, ReferenceEngine
    from breadcrumbs_vllm.tasks import get_task, parse_task_options

    bc = read_breadcrumbs_config(args.model)
    if not (args.task or bc.task):
        raise ValueError("--task is required: the model's config names no task")
    same_task = args.task in (None, bc.task)
    options = {**(bc.task_options if same_task else {}), **parse_task_options(args.task_option)}
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

    engine = ReferenceEngine.from_checkpoint(args.model)
    baseline_model = args.baseline_model or default_baseline_model(Path(args.model), bc.teacher)
    baseline_engine = None
    if baselines and Path(baseline_model).resolve() != Path(args.model).resolve():
        baseline_engine = ReferenceEngine.from_checkpoint(baseline_model)
    if args.held_out_from:
        print(f"held out: replaying the training problems of {args.held_out_from}")
        seen = set().union(*(training_prompts(path.strip())
                             for path in args.held_out_from.split(",") if path.strip()))
        problems, skipped = unseen_problems(task, args.n, args.seed, seen)
        print(f"held out: skipped {skipped} problems of seed {args.seed} seen in training")
    else:
        problems = task.problems(args.n, args.seed)
    rows = Evaluator(engine, task, args.max_tokens, args.batch_size,
                     baseline_engine=baseline_engine).run(problems, ratios, baselines)

    knobs = "".join(f", {k}={v}" for k, v in options.items())
    title = f"{task.name}{knobs}: {Path(args.model).name}, n={args.n}, seed={args.seed}"
    if args.held_out_from:
        title += f" (held out: {skipped} seen in training skipped)"
    if baselines:
        title += f"; baselines on {Path(baseline_model).name}"
    print_table(rows, title)
    out = Path(args.out)
    write_json(rows, out)
    plot = out.with_suffix(".png")
    plot_frontier(rows, plot, title)
    print(f"wrote {out} and {plot}")
    return 0


def default_baseline_model(model: Path, teacher: str | None) -> str:
    """A student's baselines compress its teacher (the paper's comparison); else the model itself."""
    if teacher is not None and (model / teacher).is_dir():
        return str(model / teacher)
    return str(model)
