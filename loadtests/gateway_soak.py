"""Soak test for a running gateway: rounds of mixed load, then checks that nothing leaks.

    python loadtests/gateway_soak.py --url http://127.0.0.1:8000 --requests 10000 \
        --seconds 1800 --round-seconds 60 --concurrency 8 --ratios none,4,8,auto \
        --abort-fraction 0.2 --max-tokens 64 [--ignore-eos]

Each round runs ``gateway_load`` (chat and completions, streaming and not, the given ratios,
``--abort-fraction`` of the requests closed mid-stream) for ``--round-seconds``; then it waits
for the engine to drain, sends one 1-token probe (an abort that arrives while the engine is idle
frees its blocks without an engine step, so vLLM's gauges update only at the next step) and
checks from ``/metrics`` that: no request got a 5xx, nothing runs or waits, vLLM's KV usage is 0
and the plugin holds no block (``breadcrumbs_kv_blocks_held``), and the gateway's resident
memory grew less than ``--max-rss-growth-mib``. In remote mode vLLM's and the plugin's series
live on the vLLM server's own ``/metrics``: ``--engine-url`` points there (by default the
gateway, which serves them in embedded mode). Bounded in requests and time, loopback only, like
the load test. Prints one JSON line per round (with throughput and preemptions in the round) and
a final summary line; exit code 1 on the first failed check.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
from gateway_load import build_parser, loopback_url, parse_bounded, run_load, scrape

MIB = 1 << 20


def probe(url: str, headers: dict[str, str]) -> None:
    """A 1-token request: its engine step publishes the KV state after every free before it."""
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        client.post("/v1/completions", json={"model": model, "prompt": "a", "max_tokens": 1,
                                             "compression_ratio": None}).raise_for_status()


def in_flight(samples: dict[str, float]) -> float:
    return samples.get("vllm:num_requests_running", 0.0) + samples.get(
        "vllm:num_requests_waiting", 0.0)


def engine_side(name: str) -> bool:
    """A series the engine exports (vLLM's and the plugin's), not the gateway's own."""
    return name.startswith("vllm:") or (name.startswith("breadcrumbs_")
                                        and not name.startswith("breadcrumbs_gateway_"))


def samples(url: str, engine_url: str) -> dict[str, float]:
    """The gateway's ``/metrics`` with the engine's series taken from ``engine_url``."""
    gateway = scrape(None, url)
    if engine_url == url:
        return gateway
    engine = scrape(None, engine_url)
    return {**{k: v for k, v in gateway.items() if not engine_side(k)},
            **{k: v for k, v in engine.items() if engine_side(k)}}


def drained(url: str, engine_url: str, headers: dict[str, str],
            timeout: float = 120.0) -> dict[str, float]:
    """``/metrics`` once nothing runs or waits (or ``timeout`` passed), after one probe."""
    deadline = time.monotonic() + timeout
    while in_flight(samples(url, engine_url)) and time.monotonic() < deadline:
        time.sleep(0.5)
    probe(url, headers)
    return samples(url, engine_url)


def leftovers(samples: dict[str, float], rss_start: float) -> dict[str, float]:
    """What a drained gateway still holds: all of it must be 0 but the memory growth."""
    return {
        "in_flight": in_flight(samples),
        "vllm_kv_usage": samples.get("vllm:kv_cache_usage_perc", 0.0),
        "plugin_blocks_held": samples.get("breadcrumbs_kv_blocks_held", 0.0),
        "rss_growth_mib": round((samples.get("process_resident_memory_bytes", 0.0) - rss_start)
                                / MIB, 1),
    }


def passed(failed: int, held: dict[str, float], max_rss_growth_mib: float) -> dict[str, bool]:
    return {
        "no_5xx": failed == 0,
        "drained": held["in_flight"] == 0,
        "no_kv_blocks_in_use": held["vllm_kv_usage"] == 0,
        "no_plugin_blocks_held": held["plugin_blocks_held"] == 0,
        "rss_bounded": held["rss_growth_mib"] < max_rss_growth_mib,
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(seconds_default=600)
    parser.add_argument("--round-seconds", type=float, default=60.0)
    parser.add_argument("--max-rss-growth-mib", type=float, default=512.0)
    parser.add_argument("--engine-url", help="where vLLM's /metrics is (remote mode's upstream)")
    a = parse_bounded(parser, argv)
    engine_url = loopback_url(a.engine_url or a.url)
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    start = drained(a.url, engine_url, headers)
    rss_start = start.get("process_resident_memory_bytes", 0.0)
    sent, failed, aborted, previous = 0, 0, 0, start
    began = time.monotonic()
    end = began + a.seconds
    round_no = 0
    while time.monotonic() < end and sent < a.requests:
        round_no += 1
        summary = asyncio.run(run_load(
            a.url, a.requests - sent, min(a.round_seconds, end - time.monotonic()),
            a.concurrency, a.ratios, a.max_tokens, a.api_key, a.abort_fraction, a.ignore_eos))
        now = drained(a.url, engine_url, headers)
        sent += summary["requests"]
        failed += summary["failed"]
        aborted += summary["statuses"].get("aborted", 0)
        held = leftovers(now, rss_start)
        checks = passed(summary["failed"], held, a.max_rss_growth_mib)
        print(json.dumps({
            "round": round_no, "at_s": round(time.monotonic() - began, 1), **summary,
            "requests_per_s": round(summary["requests"] / summary["seconds"], 2),
            "preemptions": now.get("vllm:num_preemptions_total", 0.0)
            - previous.get("vllm:num_preemptions_total", 0.0),
            "after_drain": held, "checks": checks}), flush=True)
        previous = now
        if not all(checks.values()):
            return 1
    held = leftovers(previous, rss_start)
    print(json.dumps({
        "summary": True, "requests": sent, "rounds": round_no, "failed_5xx": failed,
        "aborted_mid_stream": aborted, "seconds": round(time.monotonic() - began, 1),
        "preemptions": previous.get("vllm:num_preemptions_total", 0.0)
        - start.get("vllm:num_preemptions_total", 0.0),
        "kv_blocks_saved": previous.get("breadcrumbs_gateway_kv_blocks_saved_total", 0.0)
        - start.get("breadcrumbs_gateway_kv_blocks_saved_total", 0.0),
        "after_drain": held, "checks": passed(failed, held, a.max_rss_growth_mib)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
