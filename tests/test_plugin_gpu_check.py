"""``loadtests/gpu_check.py``, the GPU acceptance script, runs here on CPU and passes.

A small configuration (one eager CPU_ATTN engine, 200 tokens per request, the benchmark at 6 x 96
tokens on 12 blocks) so that the script a GPU user runs is exercised end to end by the suite: its
JSON summary, its exit status and every check it makes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

SCRIPT = Path(__file__).resolve().parents[1] / "loadtests" / "gpu_check.py"


def test_gpu_check_runs_on_cpu_and_passes():
    done = subprocess.run([sys.executable, str(SCRIPT), "--modes", "eager", "--max-tokens", "200",
                           "--bench-requests", "6", "--bench-tokens", "96", "--bench-pool", "12"],
                          capture_output=True, text=True, timeout=600, check=False)
    summary = json.loads(done.stdout)
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert done.returncode == 0 and summary["passed"], failed or done.stderr[-3000:]
    assert summary["platform"] == "cpu"
    assert [(c["name"], c["backend"], c["mode"]) for c in summary["checks"]] == [
        ("exact-no-preemption", "CPU_ATTN", "eager"),
        ("exact-with-preemption+block-bound", "CPU_ATTN", "eager"),
        ("no-leak-after-aborts", "CPU_ATTN", "eager"),
        ("throughput-vs-stock", "CPU_ATTN", "eager")]
    assert set(summary["throughput"]) == {"stock", "plugin c=4", "plugin c=8", "plugin c=16"}
    assert summary["cudagraph_modes"] == {"CPU_ATTN/eager": "NONE"}


def test_gpu_check_without_compilation_names_the_effective_mode():
    """``--no-compile`` (the GPU pack's setting) on CPU: native ops, the engine's mode recorded;
    the benchmark at c=8 only reports tokens/s and mean running requests against stock."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--no-compile", "--modes", "eager",
                           "--max-tokens", "120", "--bench-ratios", "8", "--bench-requests", "6",
                           "--bench-tokens", "96", "--bench-pool", "12"],
                          capture_output=True, text=True, timeout=600, check=False)
    summary = json.loads(done.stdout)
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert done.returncode == 0 and summary["passed"], failed or done.stderr[-3000:]
    assert summary["cudagraph_modes"] == {"CPU_ATTN/eager": "NONE"}
    assert set(summary["throughput"]) == {"stock", "plugin c=8"}
    assert summary["throughput"]["plugin c=8"]["mean_running_vs_stock"] > 0


def test_gpu_check_refuses_modes_this_platform_lacks():
    done = subprocess.run([sys.executable, str(SCRIPT), "--modes", "FULL"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "not available on this platform: FULL" in done.stderr
