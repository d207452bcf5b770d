"""``breadcrumbs train teacher|student``: the RL teacher and the multi-ratio beacon student.

Runs are resumable: ``--resume`` continues the run recorded in ``--out`` (its recorded config
wins), and ``--max-minutes`` stops cleanly with a checkpoint, so long runs go in chunks.

``train student --data FILE --verifier V`` trains the student of a user's model (a
``breadcrumbs convert`` folder) on the user's prompts: the frozen teacher samples rollouts with
vLLM, the verifier scores them, the student distils them; ``--joint`` adds the teacher's GRPO step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from breadcrumbs_vllm.cli.data_args import add_data_arguments, data_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a teacher (SFT + GRPO) or a beacon student")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    teacher = stages.add_parser("teacher", help="SFT warm start on solver traces, then GRPO")
    teacher.add_argument("--task", default="countdown")
    teacher.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                         help="a difficulty knob of the task (repeatable), e.g. high=12; recorded "
                              "in the checkpoint, so the student and `breadcrumbs eval` use it too")
    teacher.add_argument("--layers", type=int, default=4)
    teacher.add_argument("--hidden", type=int, default=128, help="hidden size (head size is 32)")
    teacher.add_argument("--sft-steps", type=int, default=1500)
    teacher.add_argument("--sft-batch", type=int, default=32)
    teacher.add_argument("--lr", type=float, default=2e-3)
    teacher.add_argument("--init", default=None,
                         help="start from this teacher checkpoint instead of random weights (e.g. "
                              "more GRPO with --sft-steps 0); its size and task replace "
                              "--layers, --hidden and --task; a --task-option given here "
                              "replaces that one knob of the checkpoint's (a curriculum)")
    student = stages.add_parser("student", help="beacon student distilled from --teacher")
    student.add_argument("--teacher", default=None,
                         help="teacher checkpoint folder (required, except with --resume: the "
                              "run's recorded config names it)")
    student.add_argument("--ratios", default="2,4,8,16", help="ratios sampled per sequence")
    student.add_argument("--switch-share", type=float, default=0.0,
                         help="share of sequences whose ratio rises once (rule 8): from a ratio "
                              "of --ratios to a larger one, at a random window boundary, so the "
                              "student serves a ratio raised mid-generation")
    student.add_argument("--plain-share", type=float, default=0.0,
                         help="share of sequences (of those that do not rise) distilled with no "
                              "beacons, so the student keeps reading uncompressed context")
    student.add_argument("--sequential", action="store_true",
                         help="distil from the frozen teacher (ablation) instead of jointly")
    student.add_argument("--on-policy", action="store_true",
                         help="with --sequential: rollouts are the student's own samples (with "
                              "beacons), which the teacher scores, instead of the teacher's")
    student.add_argument("--teacher-out", default=None,
                         help="joint mode: where the co-trained teacher goes (default OUT-teacher)")
    student.add_argument("--distill-lr", type=float, default=1e-3)
    student.add_argument("--trace-steps", type=int, default=0,
                         help="warm start: distillation steps on solver traces before rollouts")
    student.add_argument("--trace-batch", type=int, default=32, help="traces per warm-start step")
    student.add_argument("--trace-ce", type=float, default=0.0,
                         help="warm start: weight of cross-entropy on the trace tokens next to "
                              "the KL")
    student.add_argument("--init", default=None,
                         help="start from this student checkpoint instead of the teacher (e.g. a "
                              "warm start shared by the joint and sequential ablation arms)")
    data = add_data_arguments(student, "your own data (the teacher is a `breadcrumbs convert` "
                                       "folder)")
    data.add_argument("--keep-correct", action="store_true",
                      help="distil only the rollouts the verifier scores correct")
    data.add_argument("--joint", action="store_true",
                      help="with --data: the teacher takes its GRPO step on the same rollouts "
                           "(default: the teacher stays as it is)")
    student.add_argument("--rollout-engine", choices=("reference", "vllm"), default=None,
                         help="what samples rollouts (default: vllm with --data, else reference)")
    student.add_argument("--rollout-kv-gib", type=float, default=1.0,
                         help="KV pool of the rollout vLLM engine, GiB (it shares the device)")
    add_data_arguments(teacher, "your own data (with --init: a `breadcrumbs convert` folder, "
                                "fine-tuned on the rows' worked answers)")
    for s in (teacher, student):
        s.add_argument("--lora-rank", type=int, default=0,
                       help="train LoRA adapters of this rank (a student's beacon embedding row "
                            "too) instead of all weights (the checkpoint is saved merged)")
        s.add_argument("--out", required=True, help="run / checkpoint folder (HF format)")
        s.add_argument("--seed", type=int, default=0)
        if s is student:
            s.add_argument("--rl-steps", "--steps", dest="rl_steps", type=int, default=0,
                           help="rollout steps, each one optimiser step of the student")
        else:
            s.add_argument("--rl-steps", type=int, default=0, help="GRPO steps")
        s.add_argument("--rl-problems", type=int, default=8)
        s.add_argument("--group", type=int, default=8, help="sampled completions per problem")
        s.add_argument("--warmup", type=int, default=50,
                       help="learning-rate warmup steps before the cosine decay over the run")
        s.add_argument("--rl-lr", type=float, default=1e-4)
        s.add_argument("--clip", type=float, default=0.2)
        s.add_argument("--kl-coef", type=float, default=0.0,
                       help="GRPO: weight of the KL penalty to the policy RL started from")
        s.add_argument("--temperature", type=float, default=1.0)
        s.add_argument("--max-tokens", type=int, default=512)
        s.add_argument("--eval-every", type=int, default=250)
        s.add_argument("--eval-n", type=int, default=32)
        s.add_argument("--save-every", type=int, default=100)
        s.add_argument("--max-minutes", type=float, default=None,
                       help="stop (with a checkpoint) after this long; continue with --resume")
        s.add_argument("--resume", action="store_true", help="continue the run in --out")
        s.add_argument("--extend-steps", type=int, default=0, metavar="K",
                       help="with --resume: train K steps past the recorded end (added to the "
                            "run's last phase; the learning-rate schedule stretches to the new "
                            "end)")
        s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        s.add_argument("--mixed-precision", choices=["no", "bf16", "auto"], default="no",
                       help="bf16: forward passes under autocast, float32 weights; auto: bf16 "
                            "where the device computes bf16 natively, else no (the resolved "
                            "choice is recorded)")
        s.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass (less memory, ~30%% "
                            "more compute)")
        s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from breadcrumbs_vllm.cli.init_model import parse_ratio_list
    from breadcrumbs_vllm.training.trainer import Run, load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    recorded = load_config(out)
    if args.resume:
        if recorded is None:
            raise ValueError(f"--resume: {out} holds no resumable run")
        cfg = extended(recorded, args.extend_steps)
    else:
        if recorded is not None:
            raise ValueError(f"{out} already holds a run: pass --resume or choose another --out")
        if args.extend_steps:
            raise ValueError("--extend-steps goes with --resume")
        cfg = config_from_args(args, parse_ratio_list)
    teacher_out = None
    if cfg.stage == "student" and not cfg.sequential:
        teacher_out = Path(getattr(args, "teacher_out", None) or f"{out}-teacher")
    training = Run(cfg, out, teacher_out)
    try:
        done = training.train(args.max_minutes)
    finally:
        training.close()
    print(f"{'finished' if done else 'paused'}: {out}"
          + ("" if done else " (continue with --resume)"))
    return 0


def extended(cfg, steps: int):
    """``cfg`` with ``steps`` more steps in its last phase: rollout steps if it has any, else the
    warm start (teacher SFT, student trace distillation)."""
    if steps < 0:
        raise ValueError("--extend-steps must be >= 0")
    if cfg.rl_steps:
        cfg.rl_steps += steps
    elif cfg.stage == "teacher":
        cfg.sft_steps += steps
    else:
        cfg.trace_steps += steps
    return cfg


def config_from_args(args: argparse.Namespace, parse_ratio_list):
    from breadcrumbs_vllm.tasks import get_task, parse_task_options
    from breadcrumbs_vllm.training.config import TrainConfig

    common = {"stage": args.stage, "seed": args.seed, "rl_steps": args.rl_steps,
              "rl_problems": args.rl_problems, "group": args.group, "rl_lr": args.rl_lr,
              "clip": args.clip, "kl_coef": args.kl_coef, "temperature": args.temperature,
              "max_tokens": args.max_tokens, "eval_every": args.eval_every, "eval_n": args.eval_n,
              "save_every": args.save_every, "warmup": args.warmup,
              "gradient_checkpointing": args.gradient_checkpointing,
              "mixed_precision": resolve_mixed_precision(args.mixed_precision, native_bf16())}
    if args.stage == "student":
        args.sequential = frozen_teacher(args)
    # GRPO compares completions within a group; a frozen teacher (--sequential) runs none.
    min_group = 2 if args.stage == "teacher" or not args.sequential else 1
    if (args.rl_steps < 0 or args.warmup < 0 or args.kl_coef < 0
            or args.group < min_group and args.rl_steps):
        raise ValueError("--rl-steps, --warmup and --kl-coef must be >= 0 and --group >= 2 "
                         "(>= 1 with --sequential)")
    if args.stage == "teacher":
        if args.data is not None and args.init is None:
            raise ValueError("--data trains a teacher from a model: pass --init FOLDER (a "
                             "`breadcrumbs convert` folder)")
        if args.init is not None:
            return teacher_config_from_init(args, common)
        if args.layers < 1 or args.hidden < 32 or args.hidden % 32:
            raise ValueError("--layers must be >= 1 and --hidden a positive multiple of 32")
        task_options = parse_task_options(args.task_option)
        get_task(args.task, **task_options)  # unknown tasks and knobs fail before any training
        return TrainConfig(task=args.task, task_options=task_options, layers=args.layers,
                           hidden=args.hidden, sft_steps=args.sft_steps, sft_batch=args.sft_batch,
                           lr=args.lr, **common)
    return student_config(args, parse_ratio_list, common)


def frozen_teacher(args: argparse.Namespace) -> bool:
    """Whether the teacher stays as it is: ``--sequential``, or ``--data`` without ``--joint``
    (a user's model is the teacher as it is unless asked otherwise)."""
    if args.data is None:
        if args.joint or args.keep_correct:
            raise ValueError("--joint and --keep-correct go with --data (without it, the student "
                             "trains jointly unless --sequential)")
        return args.sequential
    if args.joint and args.sequential:
        raise ValueError("--joint and --sequential exclude each other")
    return not args.joint


def lora_rank(args: argparse.Namespace) -> int:
    if args.lora_rank < 0:
        raise ValueError("--lora-rank must be >= 0")
    return args.lora_rank


def checked_data(args: argparse.Namespace):
    """The ``--data`` rows' spec; unreadable data, missing columns and unknown verifiers fail
    here, before any training."""
    from breadcrumbs_vllm.data import DataTask

    spec = data_spec(args)
    DataTask(spec)
    return spec


def data_options(args: argparse.Namespace) -> dict:
    """The ``--data`` settings of a student run (empty without ``--data``), checked up front."""
    if args.rollout_kv_gib <= 0:
        raise ValueError("--rollout-kv-gib must be positive")
    if lora_rank(args) and args.on_policy:
        raise ValueError("--lora-rank does not combine with --on-policy (the rollout engine needs "
                         "the merged student every step)")
    options = {"lora_rank": args.lora_rank, "rollout_kv_gib": args.rollout_kv_gib,
               "rollout_engine": args.rollout_engine or ("vllm" if args.data else "reference")}
    if args.data is None:
        return options
    return {**options, "data": checked_data(args).to_dict(), "keep_correct": args.keep_correct}


def native_bf16() -> bool:
    """Whether this machine's device computes bf16 natively (CPU: AVX512-BF16 or AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_mixed_precision(choice: str, native: bool) -> str:
    """``auto`` -> ``bf16`` or ``no``; warn when bf16 is asked of a device without it.

    Autocast to bf16 on a CPU without native bf16 falls back to slow conversions: a teacher SFT
    step took 22 s there against 2.2 s in float32, while on a CPU with it bf16 was the faster
    one (docs/training.md).
    """
    import sys

    if choice == "auto":
        return "bf16" if native else "no"
    if choice == "bf16" and not native:
        print("warning: this device has no native bf16; --mixed-precision bf16 will be many "
              "times slower than float32 (use auto or no)", file=sys.stderr)
    return choice


def teacher_config_from_init(args: argparse.Namespace, common: dict):
    """A teacher run that continues from ``--init``: the checkpoint decides size and task."""
    import json

    from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
    from breadcrumbs_vllm.tasks import get_task, parse_task_options
    from breadcrumbs_vllm.training.config import TrainConfig

    bc = read_breadcrumbs_config(args.init)  # one-line error if no checkpoint
    config = json.loads((Path(args.init) / "config.json").read_text())
    if args.sft_steps + args.rl_steps < 1:
        raise ValueError("a teacher run needs --sft-steps or --rl-steps >= 1")
    if args.data is not None:  # a user's model fine-tuned on the rows' worked answers
        return TrainConfig(task="data", layers=config["num_hidden_layers"],
                           hidden=config["hidden_size"], sft_steps=args.sft_steps,
                           sft_batch=args.sft_batch, lr=args.lr,
                           init=str(Path(args.init).resolve()),
                           lora_rank=lora_rank(args), data=checked_data(args).to_dict(), **common)
    task = bc.task or "countdown"
    # A curriculum: the knobs named here replace the checkpoint's, the others carry over, and the
    # new checkpoint records the merged set (the distribution it was last trained on).
    task_options = {**bc.task_options, **parse_task_options(args.task_option)}
    get_task(task, **task_options)  # an unknown knob fails before any training
    return TrainConfig(task=task, task_options=task_options,
                       layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                       sft_steps=args.sft_steps, sft_batch=args.sft_batch, lr=args.lr,
                       init=str(Path(args.init).resolve()), **common)


def student_config(args: argparse.Namespace, parse_ratio_list, common: dict):
    """A student run: the task and its knobs come from the teacher, ``--init`` must share them."""
    from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
    from breadcrumbs_vllm.training.config import TrainConfig

    if args.teacher is None:
        raise ValueError("the student needs --teacher PATH")
    ratios = parse_ratio_list(args.ratios)
    if None in ratios:
        raise ValueError("--ratios takes ratios >= 2; to distil some sequences uncompressed, "
                         "use --plain-share")
    teacher = read_breadcrumbs_config(args.teacher)
    task = "data" if args.data else teacher.task or "countdown"
    if args.trace_steps < 0 or args.trace_batch < 1 or args.trace_ce < 0:
        raise ValueError("--trace-steps and --trace-ce must be >= 0 and --trace-batch >= 1")
    if args.rl_steps + args.trace_steps < 1:
        raise ValueError("the student needs --trace-steps or --rl-steps >= 1")
    if args.on_policy and not args.sequential:
        raise ValueError("--on-policy needs --sequential: the teacher's GRPO learns from its own "
                         "samples, not the student's")
    init = None
    if args.init is not None:
        init_bc = read_breadcrumbs_config(args.init)
        if args.data is None and (init_bc.task or "countdown",
                                  init_bc.task_options) != (task, teacher.task_options):
            raise ValueError(f"--init {args.init} was trained for another task (or other task "
                             "options) than the teacher")
        init = str(Path(args.init).resolve())
    return TrainConfig(task=task, task_options=teacher.task_options,
                       teacher=str(Path(args.teacher).resolve()), ratios=ratios,
                       switch_share=args.switch_share, plain_share=args.plain_share,
                       sequential=args.sequential, on_policy=args.on_policy,
                       distill_lr=args.distill_lr, sft_steps=0,
                       trace_steps=args.trace_steps, sft_batch=args.trace_batch,
                       trace_ce=args.trace_ce, init=init, **data_options(args), **common)
