"""vLLM 0.32.0's own core tests as a regression suite for the plugin (``make vllm-core-tests``).

Runs ``tests/v1/core/{test_scheduler,test_kv_cache_utils,test_prefix_caching}.py`` from the
vLLM sdist twice: stock, and with the plugin's scheduler and KV manager on a beacon model with
nothing compressed (``vllm_core_plugin.py``). Prints passed/failed per file side by side and
exits non-zero if a test that passes stock fails ours for any reason but the refusal of a
layout with several KV groups (the plugin's one-line ``ValueError``, checked by its message).

The sdist is fetched once into ``~/.cache/breadcrumbs/`` and checked against its sha256.
``pip download --no-binary :all:`` cannot be used: it builds the sdist's metadata, which needs
vLLM's build requirements (cmake, setuptools-rust). The tests name Hub models; there is no Hub
here, so an offline Hugging Face cache of stand-ins is built beside it (``HF_HUB_OFFLINE=1``),
and the llava tests need a ``torchvision`` the project's venv lacks (``vllm_core_hub.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from vllm_core_hub import stand_ins, torchvision_site

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "breadcrumbs"
SDIST = "vllm-0.32.0.tar.gz"
URL = ("https://files.pythonhosted.org/packages/d5/df/"
       "5471312c76e335eaa2b8333e87ea39f0d37bfe24f10a582620e34ff12e33/" + SDIST)
SHA256 = "d2c957d5eee3d0985012151315ddc62cbe0cd368fc96a5fc3510438d9dddf2ad"
FILES = ("test_scheduler.py", "test_kv_cache_utils.py", "test_prefix_caching.py")
REFUSED = "breadcrumbs: beacon models need one full-attention KV-cache group"
#: Tests that cannot hold for any scheduler subclass with state of its own, and why.
NOT_APPLICABLE = {
    "tests/v1/core/test_scheduler.py::test_abort_request_when_structured_output_fsm_cannot_advance":
        "builds its scheduler with object.__new__(Scheduler), skipping __init__, so a "
        "subclass's own attributes do not exist (an engine always runs __init__)",
}


def fetch() -> Path:
    """The sdist's ``tests/`` tree, extracted once under the cache (idempotent)."""
    root = CACHE / "vllm-0.32.0-tests"
    if (root / "tests" / "v1" / "core" / FILES[0]).exists():
        return root
    archive = CACHE / SDIST
    if not archive.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".part")
        with urllib.request.urlopen(URL, timeout=300) as resp, partial.open("wb") as out:
            out.write(resp.read())
        partial.rename(archive)
    if hashlib.sha256(archive.read_bytes()).hexdigest() != SHA256:
        archive.unlink()
        raise SystemExit(f"{SDIST}: sha256 mismatch, removed; run again")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("vllm-0.32.0/tests/")]
        for m in members:
            m.name = m.name.removeprefix("vllm-0.32.0/")
        tar.extractall(root, members, filter="data")
    # Its conftest needs vLLM's test requirements; vllm_core_plugin.py has the fixture used.
    (root / "tests" / "conftest.py").write_text("")
    return root


def run(root: Path, mode: str, hub: Path, site: Path | None,
        extra: list[str]) -> dict[str, dict]:
    """``{test id: {"outcome", "message"}}`` of one pytest run in ``mode``."""
    report = root / f"report-{mode}.jsonl"
    report.unlink(missing_ok=True)
    env = {**os.environ, "BREADCRUMBS_CORE_MODE": mode, "BREADCRUMBS_CORE_REPORT": str(report),
           "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
           "PYTHONPATH": os.pathsep.join([*([str(site)] if site else []), str(root), str(REPO),
                                          str(REPO / "loadtests")])}
    paths = [f"tests/v1/core/{name}" for name in FILES]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "vllm_core_plugin",
                    "-p", "no:cacheprovider", "--rootdir", str(root), *paths, *extra],
                   cwd=root, env=env, check=False)
    results: dict[str, dict] = {}
    for line in report.read_text().splitlines() if report.exists() else []:
        row = json.loads(line)
        kept = results.get(row["test"])
        if kept is None or kept["outcome"] == "passed":  # a failed phase decides
            results[row["test"]] = row
    return results


def compare(stock: dict[str, dict], ours: dict[str, dict]) -> tuple[list, list]:
    """Tests passing stock but not ours: ``(refused, regressions)``, each ``(test, message)``."""
    refused, regressions = [], []
    for test, row in stock.items():
        if (row["outcome"] != "passed" or ours.get(test, {}).get("outcome") == "passed"
                or test in NOT_APPLICABLE):
            continue
        message = ours.get(test, {}).get("message", "missing from the plugin's run")
        (refused if message.startswith(f"ValueError: {REFUSED}") else regressions).append(
            (test, message))
    return refused, regressions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pytest_args", nargs="*", help="passed to both pytest runs (e.g. -k)")
    args = parser.parse_args()
    started = time.monotonic()
    root = fetch()
    hub = CACHE / "vllm-core-hub"
    stand_ins(hub)
    site = torchvision_site(CACHE)
    stock = run(root, "stock", hub, site, args.pytest_args)
    middle = time.monotonic()
    ours = run(root, "ours", hub, site, args.pytest_args)
    refused, regressions = compare(stock, ours)
    print(f"\n{'file':28} {'stock pass/fail':>16} {'ours pass/fail':>16} {'refused':>8}")
    for name in FILES:
        counts = []
        for results in (stock, ours):
            tally = Counter(r["outcome"] for t, r in results.items() if f"/{name}::" in t)
            counts.append(f"{tally['passed']}/{tally['failed']}")
        n_refused = sum(f"/{name}::" in test for test, _ in refused)
        print(f"{name:28} {counts[0]:>16} {counts[1]:>16} {n_refused:>8}")
    print(f"\nrefused layouts (the plugin's ValueError): {len(refused)}")
    for test, _ in refused:
        print(f"  {test}")
    for test, why in NOT_APPLICABLE.items():
        print(f"not applicable: {test}: {why}")
    print(f"regressions: {len(regressions)}")
    for test, message in regressions:
        print(f"  {test}: {message.splitlines()[0] if message else ''}")
    print(f"\nset-up and stock {middle - started:.0f} s, ours {time.monotonic() - middle:.0f} s")
    return 1 if regressions or not stock else 0


if __name__ == "__main__":
    sys.exit(main())
