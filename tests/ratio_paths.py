"""Hypothesis strategies for ratio paths (spec rule 8), shared by the spec, engine, mask tests."""

from __future__ import annotations

from hypothesis import strategies as st

from breadcrumbs_vllm.spec import RatioPath


@st.composite
def ratio_paths(draw: st.DrawFn, max_ratio: int = 6, min_switches: int = 0, max_switches: int = 3,
                max_windows: int = 4) -> RatioPath:
    """A valid path ``((0, c_0), (t_1, c_1), ...)``: each switch 1..max_windows windows after the
    previous one, each ratio above the previous one."""
    ratio = draw(st.integers(2, max_ratio))
    at, path = 0, [(0, ratio)]
    for _ in range(draw(st.integers(min_switches, max_switches))):
        at += ratio * draw(st.integers(1, max_windows))
        ratio = draw(st.integers(ratio + 1, ratio + max_ratio))
        path.append((at, ratio))
    return tuple(path)


def ratio_and_switches(path: RatioPath) -> tuple[int | None, RatioPath]:
    """The ``ratio`` and ``switches`` arguments that spell a path (``()``: uncompressed)."""
    return (path[0][1], path[1:]) if path else (None, ())
