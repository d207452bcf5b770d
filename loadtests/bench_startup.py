"""Cold start-up and decode speed of ``breadcrumbs serve``, eager against torch.compile.

    python loadtests/bench_startup.py [--rounds 1] [--streams 8] [--max-tokens 512]

Each round starts the gateway on the bundled model twice, ``--no-compile`` then ``--compile``,
each with an empty cache folder (``XDG_CACHE_HOME``), as a new user's first start would be. It
times launch to ``/ready``, then one greedy chat request alone and ``--streams`` of them at once,
and prints one JSON row per start and the compile/eager ratios. Why: the gateway runs eagerly on
CPU by default, trading decode speed for a start-up within the first minute; this measures both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPT = "Use 15 6 25 23 to make 11 with + - * /, each at most once."
READY_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> float:
    """Seconds from now until ``/ready`` answers 200 (the caller launched ``proc`` just before)."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"not ready within {READY_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


async def _decode_rate(url: str, streams: int, max_tokens: int) -> float:
    """Generated tokens per second over ``streams`` identical greedy chat requests sent at once."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": max_tokens, "temperature": 0, "compression_ratio": None}
        start = time.monotonic()
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=body)
                                         for _ in range(streams)))
        elapsed = time.monotonic() - start
    for reply in replies:
        reply.raise_for_status()
    return sum(r.json()["usage"]["completion_tokens"] for r in replies) / elapsed


def measure(compile_model: bool, streams: int, max_tokens: int) -> dict:
    """One cold start of the gateway: seconds to ready, single-stream and batched tokens/s."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as cache:
        log = Path(cache) / "serve.log"
        env = {**os.environ, "XDG_CACHE_HOME": cache, "VLLM_CPU_KVCACHE_SPACE": "1"}
        cmd = [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--port", str(port),
               "--compile" if compile_model else "--no-compile"]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            ready_s = _wait_ready(url, proc, log)
            asyncio.run(_decode_rate(url, 1, 16))  # first request: tokenizer and sampler warm-up
            single = asyncio.run(_decode_rate(url, 1, max_tokens))
            batched = asyncio.run(_decode_rate(url, streams, max_tokens))
        finally:
            proc.send_signal(2)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"compile": compile_model, "ready_s": round(ready_s, 1),
            "single_tok_s": round(single, 1), f"batch{streams}_tok_s": round(batched, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        for compile_model in (False, True):
            print(f"round {round_ + 1}/{args.rounds}: starting with compile={compile_model}",
                  file=sys.stderr, flush=True)
            rows.append(measure(compile_model, args.streams, args.max_tokens))
            print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k != "compile"]
    ratios = {k: round(statistics.median(c[k] / e[k] for e, c in zip(rows[::2], rows[1::2])), 2)
              for k in keys}
    print(json.dumps({"compile_over_eager_median": ratios}))


if __name__ == "__main__":
    main()
