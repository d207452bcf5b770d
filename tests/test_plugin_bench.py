"""The KV-bound benchmark script runs end to end and prints its comparison table.

Figures are not asserted here (timings on a shared machine are not a test); the README quotes a
full run. What is checked: every setting runs, the table has one row per setting, and at c=8 a
request never holds more blocks than the uncompressed one does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

SCRIPT = Path(__file__).resolve().parents[1] / "loadtests" / "bench_plugin.py"


def test_bench_plugin_prints_one_row_per_setting():
    done = subprocess.run([sys.executable, str(SCRIPT), "--requests", "6", "--max-tokens", "96",
                           "--pool-blocks", "12", "--rounds", "2"],
                          capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m[0]: m[1].split() for m in
            re.findall(r"^(stock|plugin c=\w+)\s+(.*)$", done.stdout, flags=re.MULTILINE)}
    assert list(rows) == ["stock", "plugin c=off", "plugin c=4", "plugin c=8", "plugin c=16"]
    peak_blocks = {name: int(cols[3]) for name, cols in rows.items()}
    assert peak_blocks["plugin c=8"] < peak_blocks["stock"] == peak_blocks["plugin c=off"]
    assert all(int(cols[3]) <= int(cols[4]) for cols in rows.values())  # within the physical bound
    assert all(cols[6] == "0" for cols in rows.values())  # fixed ratios preempt, never wait
    assert rows["stock"][7] == "1.000"  # each round's stock over itself: the pairing is per round
