"""The plugin's Prometheus metrics: counted in the scheduler, exported by a vLLM stat logger.

The scheduler runs in vLLM's EngineCore process, which is a separate process behind
``AsyncLLM`` and vLLM's OpenAI server, while ``/metrics`` is served by the front-end process. So
the two halves are split the way vLLM splits its own metrics:

* :class:`CompressionStats` (EngineCore) counts beacons, evictions and freed blocks per ratio and
  snapshots the blocks held; :meth:`CompressionStats.attach` puts the counts since the last step
  into the step's ``SchedulerStats`` -- the object vLLM already ships to the front end after every
  step -- under the ``kv_connector_stats`` dict's ``"breadcrumbs"`` key (``SchedulerStats`` has no
  free-form field, and a subclass would not survive vLLM's msgpack decoding).
* :class:`BreadcrumbsStatLogger` (front end) is registered under vLLM's
  ``vllm.stat_logger_plugins`` entry point, so ``AsyncLLM`` and vLLM's OpenAI server load it with
  no user code. vLLM runs plugin loggers before its own, so it removes its payload before vLLM's
  connector metrics look at that dict, and turns it into ``breadcrumbs_*`` metrics in the default
  registry that ``/metrics`` serves.

Every series carries ``model_name`` and ``engine`` (the data-parallel rank), as vLLM's own
``vllm:*`` series do, so under ``--data-parallel-size N`` each engine's figures stay apart. The
``ratio`` label only takes the ratios a model supports (bounded cardinality).
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from vllm.v1.metrics.loggers import StatLoggerBase

PAYLOAD_KEY = "breadcrumbs"


@dataclass
class CompressionStats:
    """Engine-side compression counts since the last drain."""

    beacons: Tally[int] = field(default_factory=Tally)
    evicted: Tally[int] = field(default_factory=Tally)
    freed: Tally[int] = field(default_factory=Tally)
    #: Running totals since start-up, for in-process readers (tests, the benchmark).
    totals: dict[str, Tally[int]] = field(
        default_factory=lambda: {"beacons": Tally(), "evicted": Tally(), "freed": Tally()})

    def beacon_inserted(self, ratio: int) -> None:
        self._count("beacons", ratio, 1)
        self._count("evicted", ratio, ratio)

    def blocks_freed(self, ratio: int, count: int) -> None:
        self._count("freed", ratio, count)

    def _count(self, name: str, ratio: int, amount: int) -> None:
        getattr(self, name)[ratio] += amount
        self.totals[name][ratio] += amount

    def drain(self, holdings: dict[int, tuple[int, int]] | None,
              projected: float) -> dict[str, Any]:
        """The counts since the last drain (then reset), ``holdings`` and ``projected``, as plain
        data; a count with nothing new and ``holdings`` ``None`` are left out (the stock path's
        payload is the projection alone).

        ``holdings`` is ``{ratio: (blocks held, blocks the same requests would hold
        uncompressed)}`` now; ``projected`` the engine's projected KV usage (``kv_budget.py``).
        """
        payload: dict[str, Any] = {"projected": projected}
        for name in ("beacons", "evicted", "freed"):
            counts = getattr(self, name)
            if counts:
                payload[name] = {str(r): n for r, n in counts.items()}
                counts.clear()
        if holdings is not None:
            payload["holdings"] = {str(r): list(pair) for r, pair in holdings.items()}
        return payload

    def attach(self, scheduler_stats: Any, holdings: dict[int, tuple[int, int]] | None,
               projected: float) -> None:
        """Ship :meth:`drain` to the front end inside this step's ``SchedulerStats``."""
        carried = dict(scheduler_stats.kv_connector_stats or {})
        carried[PAYLOAD_KEY] = self.drain(holdings, projected)
        scheduler_stats.kv_connector_stats = carried


def take_payload(scheduler_stats: Any) -> dict[str, Any] | None:
    """Remove and return the plugin's payload, leaving ``kv_connector_stats`` as vLLM made it."""
    carried = scheduler_stats.kv_connector_stats
    if not carried or PAYLOAD_KEY not in carried:
        return None
    rest = {k: v for k, v in carried.items() if k != PAYLOAD_KEY}
    scheduler_stats.kv_connector_stats = rest or None
    return carried[PAYLOAD_KEY]


class PrometheusCompressionMetrics:
    """The ``breadcrumbs_*`` Prometheus metrics; one set per process (names must be unique),
    shared by the per-engine stat loggers, which tell their series apart by label.

    ``registry`` is prometheus_client's default one (what ``/metrics`` serves) but in tests,
    whose figures must not leak into a later server's ``/metrics`` in the same process.
    """

    _instance: PrometheusCompressionMetrics | None = None

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["model_name", "engine", "ratio"]
        self.counters = {
            "beacons": Counter("breadcrumbs_beacons_inserted", "Beacons fed", labels,
                               registry=registry),
            "evicted": Counter("breadcrumbs_kv_entries_evicted", "KV entries evicted", labels,
                               registry=registry),
            "freed": Counter("breadcrumbs_kv_blocks_freed",
                             "KV blocks returned to the pool early", labels, registry=registry),
        }
        self.held = Gauge("breadcrumbs_kv_blocks_held", "KV blocks held by compressed requests",
                          labels, registry=registry)
        self.saved = Gauge("breadcrumbs_kv_blocks_saved",
                           "Blocks the compressed requests would hold uncompressed minus held",
                           labels, registry=registry)
        self.projected = Gauge(
            "breadcrumbs_kv_cache_usage_projected_perc",
            "KV usage projected over the unfinished requests' remaining growth (kv_budget.py): "
            "blocks in use plus what they may still add until max_tokens, over the pool",
            ["model_name", "engine"], registry=registry)
        #: Per (model_name, engine): the ratios that engine has reported holdings for.
        self._seen_ratios: dict[tuple[str, str], set[str]] = {}

    @classmethod
    def get(cls) -> PrometheusCompressionMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def apply(self, payload: dict[str, Any], model_name: str, engine: str) -> None:
        """Add one engine's step payload to that engine's series."""
        self.projected.labels(model_name, engine).set(payload["projected"])
        for name, counter in self.counters.items():
            for ratio, amount in payload.get(name, {}).items():
                counter.labels(model_name, engine, ratio).inc(amount)
        holdings = payload.get("holdings")
        if holdings is None:  # the stock path: nothing compressed since the last zeroing
            return
        seen = self._seen_ratios.setdefault((model_name, engine), set())
        seen |= set(holdings)
        for ratio in seen:  # a ratio with no live request drops to 0
            held, uncompressed = holdings.get(ratio, (0, 0))
            self.held.labels(model_name, engine, ratio).set(held)
            self.saved.labels(model_name, engine, ratio).set(uncompressed - held)


class BreadcrumbsStatLogger(StatLoggerBase):
    """vLLM stat logger (front-end process) that exports the scheduler's compression counts.

    vLLM builds one per engine (``PerEngineStatLoggerAdapter``) and hands each its engine's
    ``SchedulerStats``; ``record`` still labels by the ``engine_idx`` it is given, which is the
    engine the stats came from.
    """

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.metrics = PrometheusCompressionMetrics.get()
        model_config = getattr(vllm_config, "model_config", None)
        self.model_name = str(getattr(model_config, "served_model_name", "") or "")

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if scheduler_stats is None:
            return
        payload = take_payload(scheduler_stats)
        if payload is not None:
            self.metrics.apply(payload, self.model_name, str(engine_idx))

    def log_engine_initialized(self) -> None:
        pass
