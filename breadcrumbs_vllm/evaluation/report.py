"""Presenting evaluation rows: a terminal table, a JSON file and the memory-accuracy plot, for
the per-problem mode and the fixed-budget sweep (one column per budget, AUAC per method)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from breadcrumbs_vllm.evaluation.auac import auac
from breadcrumbs_vllm.evaluation.runner import EvalRow


def print_table(rows: Sequence[EvalRow], title: str) -> None:
    table = Table(title=title)
    for column in ("setting", "ratio", "budget", "accuracy", "gen tokens", "mean KV", "peak KV"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in rows:
        table.add_row(
            r.setting, "-" if r.ratio is None else str(r.ratio),
            "-" if r.budget is None else f"{r.budget:.1f}", f"{r.accuracy:.1%}",
            f"{r.mean_generated_tokens:.1f}", f"{r.mean_kv_entries:.1f}",
            f"{r.peak_kv_entries:.1f}",
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


def kl_json_path(results: Path) -> Path:
    """Where ``eval --kl`` writes its per-token KL beside the results JSON: ``NAME-kl.json``."""
    return results.with_name(results.stem + "-kl.json")


def _accuracy_axes(width: float = 6.4):
    """A figure for an accuracy plot, on the file-only backend (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 4.2))


def _save(fig, ax, path: Path, title: str, xlabel: str, legend_outside: bool = False) -> None:
    """Labels, title, legend (beside the axes when there are many lines), then the file."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(textwrap.fill(title, 72), fontsize=10)  # titles name model, seed, held-out set
    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(rows: Sequence[EvalRow], path: Path, title: str) -> None:
    """Accuracy against mean peak KV entries per sequence: one line per method, a point per
    switch row (a ratio path is no point of the fixed-ratio frontier)."""
    fig, ax = _accuracy_axes()
    beacon = sorted((r for r in rows if r.setting == "none"
                     or r.setting.startswith("c=") and not r.switches),
                    key=lambda r: r.peak_kv_entries)
    ax.plot([r.peak_kv_entries for r in beacon], [r.accuracy for r in beacon], "o-",
            label="breadcrumbs (beacons)")
    for r in beacon:
        ax.annotate(r.setting, (r.peak_kv_entries, r.accuracy), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for name in sorted({r.setting for r in rows} - {r.setting for r in beacon}):
        line = sorted((r for r in rows if r.setting == name), key=lambda r: r.peak_kv_entries)
        ax.plot([r.peak_kv_entries for r in line], [r.accuracy for r in line], "s--", label=name)
    _save(fig, ax, path, title, "peak KV entries per sequence (mean)")


# ---- fixed-budget mode --------------------------------------------------------------------------
def budget_curves(rows: Sequence[EvalRow]) -> dict[str, list[tuple[int, float]]]:
    """Each method's ``(B, accuracy)`` points in budget order, methods in the rows' order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        assert r.kv_budget is not None, "not a fixed-budget row"
        curves.setdefault(r.setting, []).append((r.kv_budget, r.accuracy))
    return {name: sorted(points) for name, points in curves.items()}


def auac_by_method(rows: Sequence[EvalRow]) -> dict[str, float | None]:
    """:func:`~breadcrumbs_vllm.evaluation.auac.auac` per method; ``None`` with one budget."""
    return {name: auac(points) if len(points) > 1 else None
            for name, points in budget_curves(rows).items()}


def against_teacher(rows: Sequence[EvalRow]) -> list[str]:
    """One sentence per ratio: the budgets where it beats, ties and trails the teacher."""
    curves = budget_curves(rows)
    teacher = dict(curves.get("teacher", []))
    lines = []
    for name, points in curves.items():
        if not name.startswith("c="):
            continue
        verdicts: dict[str, list[int]] = {"beats": [], "ties": [], "trails": []}
        for budget, accuracy in points:
            key = ("beats" if accuracy > teacher[budget] else
                   "ties" if accuracy == teacher[budget] else "trails")
            verdicts[key].append(budget)
        said = "; ".join(f"{verb} it at B={', '.join(map(str, budgets))}"
                         for verb, budgets in verdicts.items() if budgets)
        lines.append(f"{name} against its teacher at equal B: {said}")
    return lines


def print_budget_table(rows: Sequence[EvalRow], title: str) -> None:
    """Accuracy per method (rows) and budget (columns), AUAC last, then the teacher verdicts."""
    curves, areas = budget_curves(rows), auac_by_method(rows)
    budgets = sorted({r.kv_budget for r in rows})
    table = Table(title=title)
    table.add_column("method")
    for budget in budgets:
        table.add_column(f"B={budget}", justify="right")
    table.add_column("AUAC", justify="right")
    for name, points in curves.items():
        accuracy = dict(points)
        area = areas[name]
        table.add_row(name, *(f"{accuracy[b]:.1%}" for b in budgets),
                      "-" if area is None else f"{area:.3f}")
    console = Console()
    console.print(table)
    for line in against_teacher(rows):
        console.print(line)
    stopped = {(r.setting, r.kv_budget): r.finish_reasons.get("budget", 0) for r in rows}
    console.print("stopped by the budget (of n): " + ", ".join(
        f"{name}@{budget} {count}" for (name, budget), count in stopped.items() if count))


def write_budget_json(rows: Sequence[EvalRow], path: Path, title: str) -> None:
    """The rows, each method's AUAC and its definition, in one object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "title": title,
        "budgets": sorted({r.kv_budget for r in rows}),
        "auac_definition": "mean accuracy over the swept budgets: trapezoid rule over B in KV "
                           "entries (prompt included), divided by max(B) - min(B)",
        "auac": auac_by_method(rows),
        "against_teacher": against_teacher(rows),
        "rows": [r.to_dict() for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def combine_budget_runs(paths: Sequence[Path]) -> tuple[str, list[EvalRow]]:
    """The title and rows of fixed-budget JSONs of one setting, joined in budget order.

    A long sweep runs as one command per budget; the title (model, task, knobs, n, seed,
    held-out set, baseline model) must be the same in every part, and no method may appear twice
    at one budget, so the joined table compares the same problems throughout.
    """
    titles, rows = set(), []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            titles.add(doc["title"])
            rows += [EvalRow(**row) for row in doc["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a fixed-budget results JSON ({err})") from None
    if len(titles) != 1:
        raise ValueError("--combine needs runs of one setting; their titles differ: "
                         f"{sorted(titles)}")
    keys = [(r.setting, r.kv_budget) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("--combine got one method at one budget twice")
    return titles.pop(), sorted(rows, key=lambda r: r.kv_budget)  # stable: methods keep order


def plot_budget_sweep(rows: Sequence[EvalRow], path: Path, title: str) -> None:
    """Accuracy against the shared KV budget ``B``: one line per method, AUAC in the legend."""
    fig, ax = _accuracy_axes(width=8.4)
    areas = auac_by_method(rows)
    for name, points in budget_curves(rows).items():
        style = "o-" if name == "teacher" or name.startswith("c=") else "s--"
        label = name if areas[name] is None else f"{name} (AUAC {areas[name]:.3f})"
        ax.plot([b for b, _ in points], [a for _, a in points], style, label=label)
    _save(fig, ax, path, title, "KV budget B per sequence (entries, prompt included)",
          legend_outside=True)
