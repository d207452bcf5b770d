"""The shipped Grafana dashboard drawn from Prometheus's HTTP API, as one PNG.

    python deploy/grafana/plot_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 10 \
        --out docs/results/dashboard.png

Grafana's image renderer is not available on the machines this project is tested on, so this
runs every panel's PromQL expressions through ``/api/v1/query_range`` and plots them, one subplot
per panel in the dashboard's order, each series named by its ``legendFormat``. The queries are
read from ``breadcrumbs.json``, so the picture shows exactly what the dashboard would. Loopback
Prometheus only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "breadcrumbs.json"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def legend(fmt: str, labels: dict[str, str]) -> str:
    """The series' name as Grafana shows it. A series without the labels its name needs is the
    ``or vector(0)`` that keeps a panel drawn before its first event: named "(none)"."""
    if PLACEHOLDER.search(fmt) and not labels:
        return fmt.split("{{")[0].strip() + " (none)"
    return PLACEHOLDER.sub(lambda m: labels.get(m.group(1), ""), fmt)


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    answer = httpx.get(f"{prom}/api/v1/query_range", timeout=60, params={
        "query": expr, "start": start, "end": end, "step": step}).json()
    if answer.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr!r}: {answer.get('error')}")
    return answer["data"]["result"]


def plot(prom: str, minutes: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    cols = 2
    rows = math.ceil(len(panels) / cols)
    drawn = []  # (panel index, label, timestamps, values)
    for k, panel in enumerate(panels):
        for target in panel["targets"]:
            for series in query_range(prom, target["expr"], start, end, step):
                ts = [float(t) for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                drawn.append((k, legend(target.get("legendFormat", ""), series["metric"]), ts, ys))
    # Every panel spans the same time: from the first non-zero sample of any series (the
    # ``or vector(0)`` fallbacks cover the whole window with zeros), to now.
    first = min((t for _, _, ts, ys in drawn for t, y in zip(ts, ys) if y), default=start)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    for k, label, ts, ys in drawn:
        axes.flat[k].plot([(t - first) / 60 for t in ts], ys, label=label)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel(f"minutes since {time.strftime('%H:%M:%S', time.localtime(first))}",
                      fontsize=7)
        ax.set_xlim(0, (end - first) / 60)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # the top 2% for the title, above the first row
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus", default="http://127.0.0.1:9090")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="breadcrumbs gateway (plotted from Prometheus)")
    a = p.parse_args(argv)
    if urlparse(a.prometheus).hostname not in LOOPBACK:
        p.error(f"refusing non-loopback Prometheus {a.prometheus!r}")
    if not 0 < a.minutes <= 24 * 60:
        p.error("--minutes must be in (0, 1440]")
    plot(a.prometheus.rstrip("/"), a.minutes, a.out, a.title)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
