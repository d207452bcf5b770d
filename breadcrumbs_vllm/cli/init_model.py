"""``breadcrumbs init-model``: a randomly initialised beacon-capable checkpoint to train from."""

from __future__ import annotations

import argparse

from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint
from breadcrumbs_vllm.spec import parse_ratio


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-model", help="write a randomly initialised model with tokenizer")
    p.add_argument("--task", required=True, help="task the model is for (recorded in its config)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128, help="hidden size (head size is 32)")
    p.add_argument("--ratios", default="2,4,8,16", help="compression ratios it will support")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (HF format)")
    p.set_defaults(func=run)


def parse_ratio_list(text: str) -> list[int | None]:
    """``"none,2,4"`` -> ``[None, 2, 4]`` with one-line errors."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no compression ratios given")
    return [parse_ratio(t) for t in items]


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm.tasks import get_task

    get_task(args.task)  # unknown task names fail here, with the list of known ones
    if args.layers < 1 or args.hidden < 32 or args.hidden % 32:
        raise ValueError("--layers must be >= 1 and --hidden a positive multiple of 32")
    ratios = [r for r in parse_ratio_list(args.ratios) if r is not None]
    model, tokenizer, bc = init_model(args.layers, args.hidden, seed=args.seed, ratios=ratios,
                                      task=args.task)
    out = save_checkpoint(model, tokenizer, bc, args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({params / 1e6:.2f}M parameters, ratios {bc.ratios})")
    return 0
