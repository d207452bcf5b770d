"""What a finished request reports about its KV cache: measured by the engine, read by the gateway.

The scheduler keeps one :class:`KVLedger` per compressed (or ``"auto"``) request. Each step it
records the physical KV length the worker is told to attend over (the plan's
``physical_start`` plus the chunk, which the worker writes into ``seq_lens`` and the slot
mapping) and the blocks the request really holds in the pool after allocation. When the request
finishes, the ledger goes out in the finished output's ``kv_transfer_params`` under
:data:`REPORT_KEY`, which vLLM passes to ``RequestOutput.kv_transfer_params`` and its chat
completions answer carries. The gateway's ``usage.breadcrumbs`` is built from it, so a broken
eviction shows up in the answer (and in ``tests/test_server_api.py``, which compares it with
``BeaconSchedule``'s formulas) instead of being recomputed away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The ``kv_transfer_params`` key of a finished request's report.
REPORT_KEY = "breadcrumbs"


@dataclass
class KVLedger:
    """One request's compression as the engine ran it."""

    #: The ratio it started at (``None``: ``"auto"`` chose no compression).
    ratio: int | None
    #: ``[generated tokens, ratio]`` from which each ratio ran: ``[[0, 4], [212, 16]]`` rose
    #: from 4 to 16 after 212 generated tokens (``kv_budget.escalate``).
    path: list[list[int | None]] = field(default_factory=list)
    #: Beacons it fed (each counted once: a replay after preemption feeds none anew).
    beacons: int = 0
    #: Tokens it fed, beacons included (its logical length in the KV cache's terms).
    fed_tokens: int = 0
    #: Physical KV entries after its last step (what it held when it finished).
    kv_entries: int = 0
    #: The most physical KV entries any of its steps attended over.
    peak_kv_entries: int = 0
    #: The most pool blocks it held after any step's allocation.
    peak_kv_blocks: int = 0

    def observe(self, fed_tokens: int, kv_entries: int, blocks: int, beacon: bool) -> None:
        """One step: how far its chunk reaches (logical, physical), the blocks it holds, and
        whether the chunk ends on a beacon."""
        if fed_tokens > self.fed_tokens:  # not a replay
            self.fed_tokens = fed_tokens
            self.beacons += beacon
        self.kv_entries = kv_entries
        self.peak_kv_entries = max(self.peak_kv_entries, kv_entries)
        self.peak_kv_blocks = max(self.peak_kv_blocks, blocks)

    def into(self, kv_params: dict[str, Any] | None) -> dict[str, Any]:
        """``kv_params`` (vLLM's, possibly ``None``) with this report added."""
        return {**(kv_params or {}), REPORT_KEY: asdict(self)}


def read_report(kv_params: dict[str, Any] | None) -> KVLedger | None:
    """The report in a finished output's ``kv_transfer_params``; ``None`` if it has none (an
    uncompressed request, or a server without the plugin). A compressed request that was never
    scheduled reports zeros."""
    raw = (kv_params or {}).get(REPORT_KEY)
    if not isinstance(raw, dict) or "ratio" not in raw:
        return None
    report = KVLedger(**{k: raw[k] for k in KVLedger.__dataclass_fields__ if k in raw})
    report.path = report.path or [[0, report.ratio]]
    return report
