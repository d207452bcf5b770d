"""Plot a student's held-out scores against its training steps, with the targets: ``python
recipes/plot_gap.py OUT.png --teacher TEACHER.json STEPS=EVAL.json[,EVAL.json...] ...``.

Each point is one checkpoint of one lineage of runs: STEPS is its training steps in all, and its
files are what ``breadcrumbs eval --out`` wrote for it (the results list, and with ``--kl`` the
``-kl.json`` beside it). The left panel is accuracy as a share of the teacher's, with the
targets of 90% at c=4 and 80% at c=8; the right one is the per-token KL to the teacher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from breadcrumbs_vllm.evaluation.report import kl_json_path

SETTINGS = ("none", "c=4", "c=8")
TARGETS = {"c=4": 0.9, "c=8": 0.8}


def scores(files: list[Path]) -> tuple[dict[str, float], dict[str, float]]:
    """Accuracy and KL per setting (``none``, ``c=4``...) from one checkpoint's eval files."""
    accuracy: dict[str, float] = {}
    kl: dict[str, float] = {}
    for path in files:
        accuracy.update({row["setting"]: row["accuracy"] for row in json.loads(path.read_text())})
        kl_file = kl_json_path(path)
        if kl_file.exists():
            per_token = json.loads(kl_file.read_text())["kl_per_token"]
            kl.update({(k if k == "none" else f"c={k}"): v for k, v in per_token.items()})
    return accuracy, kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's eval JSON")
    parser.add_argument("points", nargs="+", help="STEPS=EVAL.json[,EVAL.json...]")
    args = parser.parse_args()
    teacher = json.loads(args.teacher.read_text())[0]["accuracy"]
    points = []
    for point in args.points:
        steps, files = point.split("=", 1)
        points.append((int(steps), *scores([Path(f) for f in files.split(",")])))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for setting in SETTINGS:
        acc = [(s, a[setting] / teacher) for s, a, _ in points if setting in a]
        kls = [(s, k[setting]) for s, _, k in points if setting in k]
        line = left.plot(*zip(*acc), marker="o", label=setting)[0]
        if setting in TARGETS:
            left.axhline(
                TARGETS[setting],
                ls="--",
                color=line.get_color(),
                alpha=0.6,
                label=f"target at {setting}",
            )
        if kls:
            right.plot(*zip(*kls), marker="o", label=setting, color=line.get_color())
    left.set(
        xlabel="training steps",
        ylabel="accuracy / teacher's",
        ylim=(-0.03, 1.05),
        title=f"held out (teacher {teacher:.1%})",
    )
    right.set(xlabel="training steps", ylabel="KL per token", title="KL to the teacher, held out")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
