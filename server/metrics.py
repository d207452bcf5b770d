"""Gateway metrics, registered once in prometheus_client's default registry.

``/metrics`` serves that registry as a whole, so in embedded mode vLLM's ``vllm:*`` metrics and
the plugin's ``breadcrumbs_*`` metrics appear next to these. Labels are bounded sets only
(route, status code, ratio, backend name): never request ids, users or keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from server.compression import KVState

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("breadcrumbs_gateway_requests", "Requests answered",
                   ["route", "status", "ratio"])
ABORTED = Counter("breadcrumbs_gateway_aborted_requests",
                  "Requests aborted because the client went away", ["route"])
TTFT = Histogram("breadcrumbs_gateway_time_to_first_token_seconds", "Time to first token",
                 ["route"], buckets=_LATENCY_BUCKETS)
INTER_TOKEN = Histogram("breadcrumbs_gateway_inter_token_seconds",
                        "Time between streamed deltas", ["route"], buckets=_LATENCY_BUCKETS)
E2E = Histogram("breadcrumbs_gateway_e2e_seconds", "Request latency, first byte in to last out",
                ["route"], buckets=_LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("breadcrumbs_gateway_prompt_tokens", "Prompt tokens", ["route"])
GENERATED_TOKENS = Counter("breadcrumbs_gateway_generation_tokens",
                           "Generated tokens (beacons excluded)", ["route"])
KV_USAGE = Gauge("breadcrumbs_gateway_kv_usage_ratio",
                 "KV pool usage of the engine (remote: the upstream's fullest)", ["backend"])
KV_ENTRIES_SAVED = Counter("breadcrumbs_gateway_kv_entries_saved",
                           "KV entries compression saved at request end", ["ratio"])
KV_BLOCKS_SAVED = Counter("breadcrumbs_gateway_kv_blocks_saved",
                          "KV blocks compression saved at request end", ["ratio"])
BEACONS = Counter("breadcrumbs_gateway_beacons_inserted", "Beacons fed (from the schedule)",
                  ["ratio"])
AUTO_CHOSEN = Counter("breadcrumbs_gateway_auto_ratio_chosen",
                      "Requests that asked for \"auto\", by the ratio it chose", ["ratio"])


def ratio_label(ratio: int | None) -> str:
    return "none" if ratio is None else str(ratio)


def engine_kv_state(families: Iterable[Metric]) -> KVState:
    """KV usage (the fullest engine's) and pool size in tokens from vLLM's own metrics.

    The families come from this process's registry (embedded: vLLM's logger writes them here)
    or from a scraped ``/metrics`` page (remote), so both modes read the same two series.
    """
    usage, capacity = 0.0, None
    for family in families:
        for sample in family.samples:
            if sample.name == "vllm:kv_cache_usage_perc":
                usage = max(usage, sample.value)
            elif sample.name == "vllm:cache_config_info":
                blocks, size = sample.labels.get("num_gpu_blocks"), sample.labels.get("block_size")
                if blocks and size and blocks.isdigit() and size.isdigit():
                    capacity = int(blocks) * int(size)
    return KVState(usage=usage, capacity_tokens=capacity)
