"""Soak test for a running gateway: rounds of load, then checks that nothing leaks.

    python loadtests/gateway_soak.py --url http://127.0.0.1:8000 --seconds 600 --concurrency 4

Each round runs ``gateway_load`` for ``--round-seconds``; between rounds it waits for the engine
to drain and checks that: no request got a 5xx, no request is left running, KV usage is back
to its starting level after a 1-token probe (blocks were returned), and the gateway's resident
memory grew less than ``--max-rss-growth-mib``. Bounded in time and loopback only, like the
load test. Prints one JSON line per round; exit code 1 on the first failed check.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
from gateway_load import build_parser, parse_bounded, run_load, scrape


def probe(url: str, headers: dict[str, str]) -> None:
    """A 1-token request: its last engine step reports KV usage after every free."""
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        client.post("/v1/completions", json={"model": model, "prompt": "a", "max_tokens": 1}
                    ).raise_for_status()


def drained(url: str, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(None, url)
        if samples.get("vllm:num_requests_running", 0.0) == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(seconds_default=600)
    parser.add_argument("--round-seconds", type=float, default=60.0)
    parser.add_argument("--max-rss-growth-mib", type=float, default=512.0)
    a = parse_bounded(parser, argv)
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    probe(a.url, headers)
    start_samples = drained(a.url)
    kv_start = start_samples.get("vllm:kv_cache_usage_perc", 0.0)
    rss_start = start_samples.get("process_resident_memory_bytes", 0.0)
    end = time.monotonic() + a.seconds
    round_no = 0
    while time.monotonic() < end:
        round_no += 1
        seconds = min(a.round_seconds, end - time.monotonic())
        summary = asyncio.run(run_load(a.url, a.requests, seconds, a.concurrency, a.ratios,
                                       a.max_tokens, a.api_key))
        samples = drained(a.url)
        probe(a.url, headers)
        samples = scrape(None, a.url)
        checks = {
            "no_5xx": summary["failed"] == 0,
            "none_running": samples.get("vllm:num_requests_running", 0.0) == 0,
            "kv_back_to_start": samples.get("vllm:kv_cache_usage_perc", 0.0) <= kv_start,
            "rss_bounded": samples.get("process_resident_memory_bytes", 0.0) - rss_start
            < a.max_rss_growth_mib * (1 << 20),
        }
        print(json.dumps({"round": round_no, **summary, "checks": checks}), flush=True)
        if not all(checks.values()):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
