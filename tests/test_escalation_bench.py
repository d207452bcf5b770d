"""The escalation benchmark runs end to end: four arms, each rate, one JSON and one plot.

Figures are not asserted (timings on a shared machine are not a test; the README quotes a full
run). What is checked: every arm serves every arrival, the arm with escalation off never rises
or waits, stock vLLM has nothing to rise and reports no compression, each answer's final ratio
is counted, the JSON holds the table that was printed, and the comparison the issue asks for is
printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "loadtests" / "bench_escalation.py"


def test_bench_escalation_runs_every_arm_at_every_rate(tmp_path):
    out = tmp_path / "escalation.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--problems", "6", "--rates", "10,50",
                           "--max-tokens", "128", "--max-model-len", "320", "--pool-blocks", "12",
                           "--repeats", "1",
                           "--no-held-out", "--out", str(out)],
                          capture_output=True, text=True, timeout=400, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    arms = json.loads(out.read_text())["arms"]
    assert [(a["rate"], a["arm"]) for a in arms] == [
        (rate, arm) for rate in (10.0, 50.0)
        for arm in ("stock", "auto-admission", "auto-rises-only", "auto-escalation")]
    for arm in arms:
        assert arm["n"] == 6 and 0.0 <= arm["accuracy"] <= 1.0 and arm["tokens_per_s"] > 0
        assert sum(arm["final_ratios"].values()) == 6, arm
        if arm["arm"] in ("stock", "auto-admission"):  # escalation off: no rise, no wait
            assert arm["escalations"] == arm["waits"] == 0, arm
        if arm["arm"] == "stock":
            assert arm["final_ratios"] == {"none": 6}, arm
        assert (f"{arm['preemptions']:>8} {arm['waits']:>6} {arm['escalations']:>6}"
                in done.stdout)
    assert "@10/s escalation vs admission-only: preemptions" in done.stdout
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
