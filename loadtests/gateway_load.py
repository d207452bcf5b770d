"""Load test for a running gateway: bounded in requests and time, loopback only.

    python loadtests/gateway_load.py --url http://127.0.0.1:8000 --requests 200 \
        --concurrency 8 --ratios none,4,8,auto --max-tokens 64 [--api-key KEY]

Mixes chat and completions, streaming and not, over the given ratios; ``--abort-fraction`` of all
requests are streams the client closes after their first few events (the gateway must abort them
and free their KV blocks). Prints one JSON summary (latency percentiles, TTFT, tokens/s, statuses,
KV usage and blocks saved from ``/metrics``). Exit code 1 when any request got a 5xx or failed
to connect.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS, MAX_SECONDS, MAX_CONCURRENCY = 20_000, 1800, 64
#: Streamed events an aborting client reads before it closes the connection (mid-stream).
ABORT_AFTER_EVENTS = 3


def loopback_url(url: str) -> str:
    """Refuse anything but this machine: these scripts must never load someone else's server."""
    if urlparse(url).hostname not in LOOPBACK:
        raise SystemExit(f"refusing non-loopback URL {url!r} (allowed hosts: {sorted(LOOPBACK)})")
    return url.rstrip("/")


def scrape(client: httpx.Client | None, url: str) -> dict[str, float]:
    """``/metrics`` summed by metric name (labels dropped)."""
    text = (client or httpx).get(f"{url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    kv_peak: float = 0.0

    def add_status(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("5") or s == "error")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] \
        if len(values) > 1 else values[0]


def _payload(i: int, ratios: list[str], model: str, max_tokens: int,
             ignore_eos: bool = False) -> tuple[str, dict]:
    """Request ``i`` of the mix: odd ones stream; each ratio comes streamed and not, then the
    next ``2 * len(ratios)`` requests go to the other route, so every (route, stream, ratio)
    combination recurs every ``4 * len(ratios)`` requests."""
    ratio = ratios[(i // 2) % len(ratios)]
    ratio_value = None if ratio == "none" else ratio if ratio == "auto" else int(ratio)
    common = {"model": model, "max_tokens": max_tokens, "stream": i % 2 == 1,
              "compression_ratio": ratio_value, "temperature": 0.8, "ignore_eos": ignore_eos}
    if ratio_value is None:  # seeded + compressed is refused on CPU engines
        common["seed"] = i
    if common["stream"]:
        common["stream_options"] = {"include_usage": True}
    if (i // (2 * len(ratios))) % 2 == 0:
        return "/v1/chat/completions", {
            **common, "messages": [{"role": "user", "content": f"Reach 24 with 3 5 {i % 9 + 1}"}]}
    return "/v1/completions", {**common, "prompt": f"{i}+{i * 7}="}


def aborts(i: int, fraction: float) -> bool:
    """Whether request ``i`` is aborted: streams only (odd ``i``), spread evenly so that
    ``fraction`` of all requests (at most half: every stream) are."""
    share = 2 * fraction
    return i % 2 == 1 and int((i // 2 + 1) * share) > int(i // 2 * share)


async def _one(client: httpx.AsyncClient, path: str, body: dict, results: Results,
               abort: bool = False) -> None:
    start = time.monotonic()
    try:
        if body["stream"]:
            async with client.stream("POST", path, json=body) as resp:
                first, events = None, 0
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and first is None:
                        first = time.monotonic() - start
                    events += line.startswith("data: ")
                    if abort and resp.status_code == 200 and events >= ABORT_AFTER_EVENTS:
                        results.add_status("aborted")
                        return  # leaving the block closes the connection mid-stream
                    if line.startswith("data: {") and '"usage":{' in line:
                        results.tokens += json.loads(line[6:])["usage"]["completion_tokens"]
                if first is not None:
                    results.ttfts.append(first)
                status = resp.status_code
        else:
            resp = await client.post(path, json=body)
            status = resp.status_code
            if status == 200:
                results.tokens += resp.json()["usage"]["completion_tokens"]
    except httpx.HTTPError:
        results.add_status("error")
        return
    results.latencies.append(time.monotonic() - start)
    results.add_status(str(status))


async def run_load(url: str, requests: int, seconds: float, concurrency: int, ratios: list[str],
                   max_tokens: int, api_key: str | None, abort_fraction: float = 0.0,
                   ignore_eos: bool = False) -> dict:
    """Send up to ``requests`` requests within ``seconds``; return the summary dict."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results = Results()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        before = scrape(None, url)
        counter = itertools.count()
        deadline = time.monotonic() + seconds
        start = time.monotonic()

        async def worker() -> None:
            while time.monotonic() < deadline and (i := next(counter)) < requests:
                path, body = _payload(i, ratios, model, max_tokens, ignore_eos)
                await _one(client, path, body, results, aborts(i, abort_fraction))

        async def watch_kv() -> None:
            while True:
                results.kv_peak = max(results.kv_peak, scrape(None, url).get(
                    "vllm:kv_cache_usage_perc", 0.0))  # embedded mode: the engine's own gauge
                await asyncio.sleep(1.0)

        watcher = asyncio.create_task(watch_kv())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        watcher.cancel()
        elapsed = time.monotonic() - start
    after = scrape(None, url)
    return {
        "requests": sum(results.statuses.values()), "seconds": round(elapsed, 2),
        "statuses": results.statuses, "failed": results.failed,
        "latency_p50_s": _pct(results.latencies, 50), "latency_p95_s": _pct(results.latencies, 95),
        "latency_p99_s": _pct(results.latencies, 99), "ttft_p50_s": _pct(results.ttfts, 50),
        "ttft_p95_s": _pct(results.ttfts, 95),
        "generated_tokens_per_s": round(results.tokens / elapsed, 1) if elapsed else None,
        "kv_usage_peak": results.kv_peak,
        "kv_blocks_saved": after.get("breadcrumbs_gateway_kv_blocks_saved_total", 0.0)
        - before.get("breadcrumbs_gateway_kv_blocks_saved_total", 0.0),
    }


def build_parser(seconds_default: float = 120) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--seconds", type=float, default=seconds_default)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--ratios", default="none,4,8,auto")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--abort-fraction", type=float, default=0.0,
                   help="share of all requests that are streams closed mid-stream (0-0.5)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="every request generates --max-tokens tokens (vLLM's ignore_eos)")
    p.add_argument("--api-key")
    return p


def parse_bounded(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and enforce the loopback-only rule and the hard bounds."""
    args = p.parse_args(argv)
    args.url = loopback_url(args.url)
    if not (0 < args.requests <= MAX_REQUESTS and 0 < args.seconds <= MAX_SECONDS
            and 0 < args.concurrency <= MAX_CONCURRENCY and 0 <= args.abort_fraction <= 0.5):
        p.error(f"bounds: requests <= {MAX_REQUESTS}, seconds <= {MAX_SECONDS}, "
                f"concurrency <= {MAX_CONCURRENCY}, abort fraction in [0, 0.5]")
    args.ratios = [r.strip() for r in args.ratios.split(",") if r.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    a = parse_bounded(build_parser(), argv)
    summary = asyncio.run(run_load(a.url, a.requests, a.seconds, a.concurrency, a.ratios,
                                   a.max_tokens, a.api_key, a.abort_fraction, a.ignore_eos))
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
