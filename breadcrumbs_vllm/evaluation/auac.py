"""AUAC: the area under a method's accuracy-vs-memory curve, as one number per method."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise


def auac(points: Sequence[tuple[float, float]]) -> float:
    """Area under the accuracy-vs-memory curve, normalised by the memory range it spans.

    Definition (the one ``breadcrumbs eval --budgets`` reports):

    - **x axis**: the KV budget ``B`` in entries per sequence, prompt included (the fixed-budget
      sweep's budgets, which every method shares); **y**: accuracy, a fraction in ``[0, 1]``.
    - **interpolation**: points sorted by ``x`` and joined by straight lines (the trapezoid
      rule); nothing is extrapolated beyond the smallest and largest budget.
    - **normalisation**: the area is divided by ``x_max - x_min``, so AUAC is the mean accuracy
      over the swept budget range, in ``[0, 1]``: a method at 60% everywhere scores 0.6.

    Only methods swept over the same budgets are comparable, which is why the per-problem mode
    of ``breadcrumbs eval`` (each method at its own memory) reports none. Needs at least two
    points with distinct budgets; a repeated budget is an error (two accuracies for one ``x``).
    """
    ordered = sorted(points)
    xs = [x for x, _ in ordered]
    if len(ordered) < 2:
        raise ValueError("AUAC needs accuracies at two or more budgets")
    if len(set(xs)) != len(xs):
        raise ValueError(f"AUAC got two accuracies for one budget: {xs}")
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(ordered))
    return area / (xs[-1] - xs[0])
