"""The ``breadcrumbs`` command as a user runs it: a real subprocess, its output captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def breadcrumbs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "breadcrumbs_vllm.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300, check=False)
