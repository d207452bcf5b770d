"""Gateway metrics, registered once in prometheus_client's default registry.

``/metrics`` serves that registry as a whole, so in embedded mode vLLM's ``vllm:*`` metrics and
the plugin's ``breadcrumbs_*`` metrics appear next to these. Labels are bounded sets only
(route, status code, ratio, backend name): never request ids, users or keys.
"""

from __future__ import annotations

import time

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


class LatencyClock:
    """The latency metrics of one generation request, fed as its answer passes: the embedded
    engine client ticks on each engine output, the remote forwarder on each chunk of bytes.

    Time to the first tick, between ticks (streamed deltas), end to end for an answer that
    finished; an answer the client left before its end counts as an abort. ``route`` ``None``
    (not a generation route) makes every call a no-op.
    """

    def __init__(self, route: str | None) -> None:
        self.route = route
        self.started = self.last = time.monotonic()
        self.first, self.finished = True, False

    def tick(self) -> None:
        if self.route is None:
            return
        now = time.monotonic()
        (TTFT if self.first else INTER_TOKEN).labels(self.route).observe(now - self.last)
        self.first, self.last = False, now

    def done(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self.route is None:
            return
        if self.finished:
            E2E.labels(self.route).observe(time.monotonic() - self.started)
        else:
            ABORTED.labels(self.route).inc()
