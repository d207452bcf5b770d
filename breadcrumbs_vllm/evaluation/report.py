"""Presenting evaluation rows: a terminal table, a JSON file and the memory-accuracy plot."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from breadcrumbs_vllm.evaluation.runner import EvalRow


def print_table(rows: Sequence[EvalRow], title: str) -> None:
    table = Table(title=title)
    for column in ("setting", "ratio", "budget", "accuracy", "gen tokens", "mean KV", "peak KV"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in rows:
        table.add_row(
            r.setting, "-" if r.ratio is None else str(r.ratio),
            "-" if r.budget is None else f"{r.budget:.1f}", f"{r.accuracy:.1%}",
            f"{r.mean_generated_tokens:.1f}", f"{r.mean_kv_entries:.1f}", f"{r.peak_kv_entries:.1f}",
        )
    console = Console()
    console.print(table)
    console.print("failures, by the first faulty step:")
    for r in rows:
        kinds = ", ".join(f"{kind} {count}" for kind, count in r.failures.items()) or "none"
        where = "" if r.budget is None else f" at the c={r.ratio} peaks"  # a baseline row
        console.print(f"  {r.setting}{where}: {kinds}")


def write_json(rows: Sequence[EvalRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")


def plot_frontier(rows: Sequence[EvalRow], path: Path, title: str) -> None:
    """Accuracy against mean peak KV entries per sequence: one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    beacon = sorted((r for r in rows if r.setting == "none" or r.setting.startswith("c=")),
                    key=lambda r: r.peak_kv_entries)
    ax.plot([r.peak_kv_entries for r in beacon], [r.accuracy for r in beacon], "o-",
            label="breadcrumbs (beacons)")
    for r in beacon:
        ax.annotate(r.setting, (r.peak_kv_entries, r.accuracy), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for name in sorted({r.setting for r in rows} - {r.setting for r in beacon}):
        line = sorted((r for r in rows if r.setting == name), key=lambda r: r.peak_kv_entries)
        ax.plot([r.peak_kv_entries for r in line], [r.accuracy for r in line], "s--", label=name)
    ax.set_xlabel("peak KV entries per sequence (mean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(textwrap.fill(title, 72), fontsize=10)  # titles name model, seed, held-out set
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
