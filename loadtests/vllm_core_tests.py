"""vLLM 0.32.0's own core tests as a regression suite for the plugin (``make vllm-core-tests``).

Runs ``tests/v1/core/{test_scheduler,test_kv_cache_utils,test_prefix_caching}.py`` from the
vLLM sdist twice: stock, and with the plugin's scheduler and KV manager on a beacon model with
nothing compressed (``vllm_core_plugin.py``). Prints passed/failed per file side by side and
exits non-zero if a test that passes stock fails ours for any reason but the refusal of a
layout with several KV groups (the plugin's one-line ``ValueError``, checked by its message).

The sdist is fetched once into ``~/.cache/breadcrumbs/`` and checked against its sha256.
``pip download --no-binary :all:`` cannot be used: it builds the sdist's metadata, which needs
vLLM's build requirements (cmake, setuptools-rust). The tests name Hub models; there is no Hub
here, so an offline Hugging Face cache of stand-ins (their ``config.json`` from transformers'
config classes, the project's tokenizer) is built beside it (``HF_HUB_OFFLINE=1``).
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

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "breadcrumbs"
SDIST = "vllm-0.32.0.tar.gz"
URL = ("https://files.pythonhosted.org/packages/d5/df/"
       "5471312c76e335eaa2b8333e87ea39f0d37bfe24f10a582620e34ff12e33/" + SDIST)
SHA256 = "d2c957d5eee3d0985012151315ddc62cbe0cd368fc96a5fc3510438d9dddf2ad"
FILES = ("test_scheduler.py", "test_kv_cache_utils.py", "test_prefix_caching.py")
REFUSED = "breadcrumbs: beacon models need one full-attention KV-cache group"


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


def stand_ins(hub: Path) -> None:
    """An offline Hugging Face cache with a stand-in for each Hub model the tests name."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        OPTConfig,
        Qwen2Config,
    )

    from breadcrumbs_vllm.tokenizer import build_tokenizer

    configs = {
        "facebook/opt-125m": OPTConfig(
            hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
            word_embed_proj_dim=768, architectures=["OPTForCausalLM"]),
        "Qwen/Qwen1.5-7B": Qwen2Config(
            vocab_size=151936, hidden_size=4096, intermediate_size=11008,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            max_position_embeddings=32768, architectures=["Qwen2ForCausalLM"]),
        "llava-hf/llava-1.5-7b-hf": LlavaConfig(
            text_config=LlamaConfig(vocab_size=32064, max_position_embeddings=4096),
            vision_config=CLIPVisionConfig(hidden_size=1024, image_size=336, patch_size=14,
                                           num_hidden_layers=24, intermediate_size=4096,
                                           num_attention_heads=16, projection_dim=768),
            image_token_index=32000, architectures=["LlavaForConditionalGeneration"]),
    }
    tokenizer = build_tokenizer()
    for repo, config in configs.items():
        folder = hub / f"models--{repo.replace('/', '--')}"
        snapshot = folder / "snapshots" / "standin"
        if (snapshot / "config.json").exists():
            continue
        snapshot.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        if isinstance(config, LlavaConfig):
            (snapshot / "preprocessor_config.json").write_text(json.dumps({
                "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 336},
                "crop_size": {"height": 336, "width": 336}, "do_center_crop": True}))
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text("standin")


def run(root: Path, mode: str, hub: Path, extra: list[str]) -> dict[str, dict]:
    """``{test id: {"outcome", "message"}}`` of one pytest run in ``mode``."""
    report = root / f"report-{mode}.jsonl"
    report.unlink(missing_ok=True)
    env = {**os.environ, "BREADCRUMBS_CORE_MODE": mode, "BREADCRUMBS_CORE_REPORT": str(report),
           "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
           "PYTHONPATH": os.pathsep.join([str(root), str(REPO), str(REPO / "loadtests")])}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pytest_args", nargs="*", help="passed to both pytest runs (e.g. -k)")
    args = parser.parse_args()
    started = time.monotonic()
    root = fetch()
    hub = CACHE / "vllm-core-hub"
    stand_ins(hub)
    stock = run(root, "stock", hub, args.pytest_args)
    ours = run(root, "ours", hub, args.pytest_args)
    print(f"\n{'file':28} {'stock pass/fail':>16} {'ours pass/fail':>16}")
    for name in FILES:
        counts = []
        for results in (stock, ours):
            tally = Counter(r["outcome"] for t, r in results.items() if f"/{name}::" in t)
            counts.append(f"{tally['passed']}/{tally['failed']}")
        print(f"{name:28} {counts[0]:>16} {counts[1]:>16}")
    refused, regressions = [], []
    for test, row in stock.items():
        if row["outcome"] != "passed" or ours.get(test, {}).get("outcome") == "passed":
            continue
        message = ours.get(test, {}).get("message", "missing from the plugin's run")
        (refused if REFUSED in message else regressions).append((test, message))
    print(f"\nrefused layouts (the plugin's ValueError): {len(refused)}")
    for test, message in refused:
        print(f"  {test}")
    print(f"regressions: {len(regressions)}")
    for test, message in regressions:
        print(f"  {test}: {message.splitlines()[0] if message else ''}")
    print(f"\n{time.monotonic() - started:.0f} s")
    return 1 if regressions or not stock else 0


if __name__ == "__main__":
    sys.exit(main())
