"""The ``breadcrumbs`` command line: one module per subcommand, registered in ``COMMANDS``.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
Packages built on this one add subcommands the same way through the ``breadcrumbs.commands``
entry-point group (the gateway adds ``serve`` and ``router`` from ``server.cli``), so the library
never imports the applications above it. User errors (``ValueError`` and friends) become a
one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

# Subcommand modules, in the order ``--help`` lists them (entry-point commands follow).
COMMANDS = [
    "breadcrumbs_vllm.cli.init_model",
    "breadcrumbs_vllm.cli.convert",
    "breadcrumbs_vllm.cli.fetch",
    "breadcrumbs_vllm.cli.adapter",
    "breadcrumbs_vllm.cli.generate",
    "breadcrumbs_vllm.cli.eval",
    "breadcrumbs_vllm.cli.train",
]
# Where installed packages declare their ``register`` functions.
COMMAND_GROUP = "breadcrumbs.commands"


class UsageError(ValueError):
    """Raised by subcommands for bad user input; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breadcrumbs",
        description="Learned KV-cache compression (Breadcrumbs beacons): generate, evaluate, "
        "train and serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    for command in entry_points(group=COMMAND_GROUP):
        try:
            register = command.load()
        except ImportError as exc:  # its package is here but what it needs is not
            register = _unavailable(command.name, exc)
        register(sub)
    return parser


def _unavailable(name: str, exc: ImportError) -> Callable[[argparse._SubParsersAction], None]:
    """A stand-in for an entry-point command that failed to import: the other commands still
    work (a machine with only the training dependencies), and this one says what is missing."""
    def register(sub: argparse._SubParsersAction) -> None:
        def refuse(args: argparse.Namespace) -> int:
            raise UsageError(f"this command cannot run here: {exc}")

        # No option prefix: every argument is taken as is, so the refusal is what is printed.
        p = sub.add_parser(name, help=f"(unavailable here: {exc})", add_help=False,
                           prefix_chars="\0")
        p.add_argument("rest", nargs="*")
        p.set_defaults(func=refuse)
    return register


def _quiet_libraries() -> None:
    """Keep the terminal for our own output: no weight-loading bars or library warnings."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        print(f"breadcrumbs {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"breadcrumbs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
