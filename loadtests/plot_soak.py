"""Plot a soak run: throughput, preemptions and resident memory against time, one point a round.

    python loadtests/plot_soak.py soak.jsonl --out docs/results/soak-long.png

``soak.jsonl`` is what ``gateway_soak.py`` printed (one JSON line per round, then a summary).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the file backend


def plot(lines: list[dict], out: Path, title: str) -> None:
    rounds = [line for line in lines if "round" in line]
    if not rounds:
        raise SystemExit("plot_soak: no rounds in the input")
    minutes = [r["at_s"] / 60 for r in rounds]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(minutes, [r["requests_per_s"] for r in rounds], marker="o", label="requests/s")
    tokens = axes[0].twinx()
    tokens.plot(minutes, [r["generated_tokens_per_s"] for r in rounds], color="tab:orange",
                marker=".", label="generated tokens/s")
    axes[0].set_ylabel("requests/s")
    tokens.set_ylabel("tokens/s")
    axes[0].legend(loc="lower left")
    tokens.legend(loc="lower right")
    axes[1].bar(minutes, [r["preemptions"] for r in rounds], width=0.5)
    axes[1].set_ylabel("preemptions per round")
    axes[2].plot(minutes, [r["after_drain"]["rss_growth_mib"] for r in rounds], marker="o")
    axes[2].set_ylabel("gateway RSS growth (MiB)")
    axes[2].set_xlabel("minutes into the soak")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="breadcrumbs gateway soak")
    a = p.parse_args(argv)
    lines = [json.loads(line) for line in a.jsonl.read_text().splitlines() if line.strip()]
    plot(lines, a.out, a.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
