"""The ``--data`` flags that ``train student`` and ``eval`` share: a user's rows and verifier."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_arguments(parser: argparse.ArgumentParser, purpose: str) -> argparse._ArgumentGroup:
    """Add ``--data``, ``--verifier`` and the column flags in a group titled ``purpose``."""
    group = parser.add_argument_group(purpose)
    group.add_argument("--data", default=None,
                       help="JSONL with prompt/answer fields, or a file or dataset name "
                            "`datasets.load_dataset` reads; replaces the built-in task")
    group.add_argument("--verifier", default="exact",
                       help="exact, math (math-verify), a built-in task, an entry point of group "
                            "breadcrumbs_vllm.verifiers, or package.module:attribute")
    group.add_argument("--prompt-column", default="prompt")
    group.add_argument("--answer-column", default="answer")
    group.add_argument("--split", default="train", help="dataset split (datasets-loaded data)")
    return group


def data_spec(args: argparse.Namespace):
    """The parsed flags as a :class:`~breadcrumbs_vllm.data.DataSpec` (a local path resolved)."""
    from breadcrumbs_vllm.data import DataSpec

    path = Path(args.data)
    return DataSpec(path=str(path.resolve()) if path.exists() else args.data,
                    verifier=args.verifier, prompt_column=args.prompt_column,
                    answer_column=args.answer_column, split=args.split)
