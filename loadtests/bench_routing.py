"""Does the vLLM Router's ``power_of_two`` on our ``/get_load`` beat ``round_robin``?

    python loadtests/bench_routing.py --requests 96 --concurrency 16 --seed 0

Starts two replicas once (``breadcrumbs router``'s launcher: same flags, same core pinning),
then for each policy starts the router in front of them and replays the same seeded workload:
KV-bound on purpose (a small pool per replica, long generations with ``ignore_eos``, half the
requests uncompressed and half at ratio 8, enough at once to force preemptions). ``/get_load``
counts what running requests will still grow into, so ``power_of_two`` should keep the
uncompressed (big) requests apart where ``round_robin`` may stack them on one replica.

Prints one JSON: per policy the requests finished, the preemptions (``vllm:num_preemptions_total``
summed over the replicas), p50/p99 latency, how the requests split over the replicas, and the
power_of_two / round_robin ratios. Bounded in requests and time; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from server.cli.router import check_ports_free, start_replicas, start_router, stop_all
from server.cli.serve import bundled_model

POLICIES = ("round_robin", "power_of_two")
MAX_REQUESTS, MAX_SECONDS = 500, 900


def workload(n: int, seed: int, lo: int, hi: int) -> list[dict]:
    """``n`` chat bodies: a Countdown prompt, ``max_tokens`` in ``[lo, hi]``, ratio none or 8."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        nums = " ".join(str(rng.randint(1, 12)) for _ in range(4))
        body = {"model": "countdown-student", "temperature": 0, "ignore_eos": True,
                "max_tokens": rng.randint(lo, hi),
                "messages": [{"role": "user", "content": f"Use {nums} to make "
                              f"{rng.randint(10, 40)} with + - * /, each at most once."}]}
        if rng.random() < 0.5:
            body["vllm_xargs"] = {"compression_ratio": 8}
        bodies.append(body)
    return bodies


def metric(base: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=60).text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rpartition(" ")[2])
    return total


def served(base: str) -> float:
    """Requests finished by this replica, aborts left out."""
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=60).text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'reason="abort"' not in line:
            total += float(line.rpartition(" ")[2])
    return total


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)


def replay(router: str, bodies: list[dict], concurrency: int, deadline: float) -> dict:
    """Send ``bodies`` through the router, ``concurrency`` at a time; latencies of the 200s."""
    def one(body: dict) -> tuple[int, float]:
        start = time.monotonic()
        try:
            resp = httpx.post(f"{router}/v1/chat/completions", json=body,
                              timeout=max(1.0, deadline - start))
            return resp.status_code, time.monotonic() - start
        except httpx.HTTPError:
            return 0, time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    ok = [t for status, t in results if status == 200]
    return {"finished": len(ok), "failed": len(results) - len(ok),
            "p50_s": percentile(ok, 0.50), "p99_s": percentile(ok, 0.99),
            "wall_s": round(time.monotonic() - start, 1)}


def drained(replicas: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(metric(r, "vllm:num_requests_running") + metric(r, "vllm:num_requests_waiting")
              for r in replicas):
        if time.monotonic() > deadline:
            raise RuntimeError("replicas did not drain")
        time.sleep(1)


def run_policy(policy: str, replicas: list, args, bodies: list[dict], log_dir: Path,
               children: list) -> dict:
    urls = [r.url for r in replicas]
    with contextlib.redirect_stdout(sys.stderr):
        router = start_router(replicas, args.port, policy, args.poll_interval, log_dir, children)
    try:
        before_p = sum(metric(u, "vllm:num_preemptions_total") for u in urls)
        before_s = [served(u) for u in urls]
        out = replay(router.url, bodies, args.concurrency, time.monotonic() + args.max_seconds)
        drained(urls)
        time.sleep(1.5)  # stat loggers publish after the step that finished the last request
        out["preemptions"] = sum(metric(u, "vllm:num_preemptions_total") for u in urls) - before_p
        out["per_replica"] = [served(u) - b for u, b in zip(urls, before_s, strict=True)]
        return out
    finally:
        stop_all([router])
        children.remove(router)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-tokens", type=int, default=800)
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--kv-cache-gib", type=float, default=0.02,
                   help="KV pool per replica (0.02 GiB = 5,216 tokens of the bundled model)")
    p.add_argument("--port", type=int, default=8300, help="router; replicas take the next two")
    p.add_argument("--poll-interval", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=300, help="per policy")
    args = p.parse_args()
    if not 0 < args.requests <= MAX_REQUESTS or not 0 < args.max_seconds <= MAX_SECONDS:
        p.error(f"--requests must be in 1..{MAX_REQUESTS}, --max-seconds in (0, {MAX_SECONDS}]")
    check_ports_free([args.port + i for i in range(4)])
    log_dir = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    bodies = workload(args.requests, args.seed, args.min_tokens, args.max_tokens)
    children: list = []
    try:
        with contextlib.redirect_stdout(sys.stderr):
            replicas = start_replicas(
                bundled_model(), [args.port + 1, args.port + 2], args.kv_cache_gib,
                # No prefix cache: the second policy replays the same prompts, it must not
                # find them cached by the first.
                ["--max-model-len", str(args.max_tokens + 256), "--no-enable-prefix-caching"],
                log_dir, 300, children)
        for r in replicas:  # warm both before the first policy's clock starts
            httpx.post(f"{r.url}/v1/completions", json={"model": "countdown-student",
                       "prompt": "a", "max_tokens": 4}, timeout=60).raise_for_status()
        results = {pol: run_policy(pol, replicas, args, bodies, log_dir, children)
                   for pol in POLICIES}
    finally:
        stop_all(children)
    rr, p2 = results["round_robin"], results["power_of_two"]
    summary = {
        "config": {k: getattr(args, k) for k in ("requests", "concurrency", "seed", "min_tokens",
                                                   "max_tokens", "kv_cache_gib",
                                                   "poll_interval")},
        "uncompressed_requests": sum("vllm_xargs" not in b for b in bodies),
        **results,
        "power_of_two / round_robin": {k: ratio(p2[k], rr[k])
                                        for k in ("preemptions", "p50_s", "p99_s", "wall_s")},
        "logs": str(log_dir),
    }
    print(json.dumps(summary, indent=1))
    return 0 if rr["failed"] == p2["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
