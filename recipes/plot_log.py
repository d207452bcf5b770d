"""Plot one metric of training logs against the step: ``python recipes/plot_log.py OUT.png
LOG:METRIC[:LABEL] ...`` (each LOG a ``training_log.jsonl``, gzipped or not)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def rows(path: Path) -> list[dict]:
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main() -> None:
    out, series = Path(sys.argv[1]), sys.argv[2:]
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.4), squeeze=False)
    for ax, spec in zip(axes[0], series):
        log, metric, *label = spec.split(":")
        points = [(r["step"], r[metric]) for r in rows(Path(log)) if metric in r]
        ax.plot(*zip(*points), marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(label[0] if label else Path(log).name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
