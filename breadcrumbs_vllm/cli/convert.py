"""``breadcrumbs convert``: make a Hugging Face causal LM beacon-capable (see ``convert.py``)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="make a Hugging Face causal LM (Llama, Qwen2, Qwen3) "
                                       "beacon-capable: <beacon> token, embedding row, config")
    p.add_argument("--model", required=True,
                   help="model folder, hub id, or GGUF file (or a folder holding one: "
                        "dequantized to float32 first)")
    p.add_argument("--ratios", default="2,4,8,16",
                   help="compression ratios the student will be trained for")
    p.add_argument("--out", required=True, help="output folder (HF format, loads in vLLM)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm.cli.init_model import parse_ratio_list
    from breadcrumbs_vllm.convert import convert

    ratios = [r for r in parse_ratio_list(args.ratios) if r is not None]
    if not ratios:
        raise ValueError("--ratios needs at least one ratio >= 2")
    done = convert(args.model, ratios, args.out)
    if not done.verified:
        print(f"warning: {done.model_type} is not a family the test suite verifies (llama, qwen2, "
              "qwen3); check exactness with `breadcrumbs generate --engine vllm` against the "
              "reference engine before training", file=sys.stderr)
    print(f"wrote {done.out} ({done.model_type}, <beacon> = id {done.beacon_token_id}, "
          f"{'embeddings resized' if done.resized else 'beacon took a padding row'}, "
          f"ratios {sorted(ratios)})")
    return 0
