"""``breadcrumbs adapter export|assemble``: a LoRA student as a small artifact, and back."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapter", help="export a LoRA student as adapters over a PyPI base, or "
                                       "assemble such an artifact into a servable folder")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the adapter artifact of a --lora-rank run")
    export.add_argument("--run", required=True, help="the student's run folder")
    export.add_argument("--out", required=True, help="artifact folder")
    assemble = actions.add_parser("assemble", help="base + adapters -> a checkpoint to serve")
    assemble.add_argument("artifact", help="artifact folder (artifact.json)")
    assemble.add_argument("--out", required=True, help="checkpoint folder to write")
    assemble.add_argument("--base", default=None,
                          help="the fetched base folder (default: fetch it into the cache)")
    assemble.add_argument("--upto", default=None, metavar="LAYER",
                          help="stop after this layer (e.g. teacher: the model the student "
                               "was distilled from)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm import adapters
    from breadcrumbs_vllm.bases import default_folder, fetch, get_base

    if args.action == "export":
        out = adapters.export(args.run, args.out)
        print(f"wrote {out}")
        return 0
    record = adapters.read_artifact(args.artifact)
    base = args.base
    if base is None:
        spec = get_base(record["base"]["name"])
        base = fetch(spec, default_folder(spec), record["breadcrumbs"]["ratios"])
    out = adapters.assemble(args.artifact, base, args.out, args.upto)
    print(f"wrote {out}; serve it with `breadcrumbs serve --model {args.out}`")
    return 0
