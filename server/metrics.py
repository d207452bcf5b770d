"""Gateway metrics, registered once in prometheus_client's default registry.

``/metrics`` serves that registry as a whole, so in embedded mode vLLM's ``vllm:*`` metrics and
the plugin's ``breadcrumbs_*`` metrics appear next to these. Labels are bounded sets only
(route, status code, ratio, backend name): never request ids, users or keys.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from server.compression import Requested

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
KV_ENTRIES_SAVED = Counter("breadcrumbs_gateway_kv_entries_saved",
                           "KV entries compression saved at request end", ["ratio"])
KV_BLOCKS_SAVED = Counter("breadcrumbs_gateway_kv_blocks_saved",
                          "KV blocks compression saved at request end", ["ratio"])
BEACONS = Counter("breadcrumbs_gateway_beacons_inserted", "Beacons fed (from the schedule)",
                  ["ratio"])
AUTO_CHOSEN = Counter("breadcrumbs_gateway_auto_ratio_chosen",
                      "Requests that asked for \"auto\", by the ratio it chose", ["ratio"])


def ratio_label(ratio: Requested) -> str:
    return "none" if ratio is None else str(ratio)
