"""Per-request compression: checking ``compression_ratio`` and accounting what it saved.

The gateway checks a requested ratio against the model (a 400 naming the supported ones) and
forwards it. ``"auto"`` travels on unresolved: the engine's scheduler decides it at admission,
from that engine's own KV pool (``breadcrumbs_vllm/vllm_plugin/kv_budget.py``), and reports the
ratio it chose in the finished output's ``kv_transfer_params``. So the gateway, a plain
``vllm serve`` replica and a replica behind a router all use one rule.

Usage figures are measured: each finished compressed request reports what the engine held
(``breadcrumbs_vllm/vllm_plugin/report.py``), and ``usage.breadcrumbs`` adds those reports up.
Where vLLM passes on fewer reports than there are choices (``n > 1`` answered whole: its parallel
sampling keeps only the last choice's ``kv_transfer_params``; or a remote stream, which carries
none), the figures follow ``BeaconSchedule`` (the plugin is tested against the same rules: the
token that ends a generation is sampled but never fed, so ``n`` generated tokens mean ``n - 1``
fed ones), and ``measured`` says so. A :class:`RequestAccount` collects, per engine request,
the prompt length, the ratio it ran at, each choice's generated tokens and the engine's reports;
whoever sees the engine's outputs fills it (the embedded engine client, or the gateway reading a
remote answer).
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule
from breadcrumbs_vllm.vllm_plugin.compression import (
    AUTO,
    MAX_KEY,
    RATIO_KEY,
    resolve_ceiling,
    resolve_ratio,
)
from breadcrumbs_vllm.vllm_plugin.report import KVLedger
from server.errors import APIError

#: What a request may send as ``compression_ratio``: a ratio, ``None`` (no compression) or auto.
Requested = int | str | None


class RatioPolicy:
    """Validates requested ratios against the model."""

    def __init__(self, config: BreadcrumbsConfig) -> None:
        self.config = config

    @property
    def ratios(self) -> list[int]:
        return sorted(self.config.ratios)

    def check(self, requested: object, maximum: object = None) -> tuple[Requested, int | None]:
        """``(start, ceiling)``: the ratio the engine will start the request at (``"auto"``
        still to be chosen) and, for a range, the highest it may rise to.

        ``requested`` is what ``compression_ratio`` holds: an integer, null, ``"auto"``,
        ``"none"`` or a range ``{"min": a, "max": b}``; ``maximum`` is a separate
        ``compression_ratio_max`` (``vllm_xargs``' form of a range). JSON types are checked
        first; the values then go through ``resolve_ratio`` and ``resolve_ceiling``, the rule
        vLLM's front end and the scheduler apply too, so the gateway refuses exactly what the
        engine would, with a 400 naming the supported ratios. ``"auto"``'s own ceiling (the
        model's largest ratio) is the engine's to apply, so it is not returned.
        """
        if isinstance(requested, dict):
            if set(requested) - {"min", "max"} or maximum is not None:
                raise APIError(400, "a compression_ratio range is {\"min\": a, \"max\": b}",
                               param="compression_ratio")
            requested, maximum = requested.get("min"), requested.get("max")
        for value in (requested, maximum):
            _check_type(value)
        extra_args = {RATIO_KEY: requested, **({} if maximum is None else {MAX_KEY: maximum})}
        try:
            start = resolve_ratio(extra_args, self.config)
            ceiling = resolve_ceiling(extra_args, self.config)
        except ValueError as exc:
            raise APIError(400, str(exc), param="compression_ratio") from None
        return start, (ceiling if maximum is not None else None)


def _check_type(value: object) -> None:
    """400 unless ``value`` is what a ``compression_ratio`` field may hold in JSON."""
    words = (AUTO, "none", "null", "off")
    if isinstance(value, bool) or not (
            value is None or isinstance(value, int)
            or (isinstance(value, str) and value.strip().lower() in words)):
        raise APIError(400, f"compression_ratio must be an integer, null, \"auto\" or "
                            f"{{\"min\": a, \"max\": b}}, not {value!r}",
                       param="compression_ratio")


@dataclass(frozen=True)
class ChoiceSavings:
    beacons: int
    peak_entries: int
    entries_saved: int
    blocks_saved: int


def choice_savings(prompt_len: int, ratio: int | None, generated: int,
                   block_size: int) -> ChoiceSavings:
    """KV figures of one finished choice, from the spec's schedule (rule 5)."""
    fed = max(generated - 1, 0)
    schedule = BeaconSchedule(prompt_len, ratio)
    held = schedule.kv_entries(fed)
    uncompressed = prompt_len + fed
    return ChoiceSavings(
        beacons=schedule.num_beacons_fed(fed),
        peak_entries=schedule.peak_kv_entries(fed),
        entries_saved=uncompressed - held,
        blocks_saved=math.ceil(uncompressed / block_size) - math.ceil(held / block_size),
    )


def reported_savings(report: KVLedger, block_size: int) -> ChoiceSavings:
    """KV figures of one finished choice, from what the engine reported holding."""
    uncompressed = report.fed_tokens - report.beacons  # the prompt and the generated tokens fed
    return ChoiceSavings(
        beacons=report.beacons,
        peak_entries=report.peak_kv_entries,
        entries_saved=uncompressed - report.kv_entries,
        blocks_saved=(math.ceil(uncompressed / block_size)
                      - math.ceil(report.kv_entries / block_size)),
    )


@dataclass
class Generation:
    """One engine request: its prompt length, the ratio it ran at, tokens per choice index and
    the engine's reports of its finished compressed choices.

    ``ratio`` is ``"auto"`` until the engine reports what it chose (when the request finishes);
    one that never reports it (aborted, or a remote answer without ``kv_transfer_params``) has
    no savings to count.
    """

    prompt_len: int
    ratio: Requested
    tokens: dict[int, int] = field(default_factory=dict)
    reports: list[KVLedger] = field(default_factory=list)

    def add(self, index: int, num_tokens: int) -> None:
        self.tokens[index] = self.tokens.get(index, 0) + num_tokens

    def reported(self, report: KVLedger) -> None:
        """A finished choice's report: the ratio it started at ("auto" resolved), its path and
        its KV."""
        self.ratio = report.ratio
        if any(ratio is not None for _, ratio in report.path):
            self.reports.append(report)

    @property
    def measured(self) -> bool:
        """Whether every choice's figures come from an engine report (a choice that never ran
        compressed needs none: it holds its prompt and fed tokens)."""
        if not self.reports and self.ratio is None:
            return True
        return len(self.reports) == len(self.tokens)

    @property
    def path(self) -> list[list[int | None]] | None:
        """The ratio path its choices reported (``None``: none did, or they differ)."""
        paths = [r.path for r in self.reports]
        return paths[0] if paths and all(p == paths[0] for p in paths) else None

    def savings(self, block_size: int) -> list[ChoiceSavings]:
        if self.reports and self.measured:
            return [reported_savings(r, block_size) for r in self.reports]
        if self.ratio == AUTO:
            return []
        return [choice_savings(self.prompt_len, self.ratio, n, block_size)  # type: ignore[arg-type]
                for n in self.tokens.values()]


@dataclass
class RequestAccount:
    """What one HTTP request's generations did to the KV cache (an HTTP request may fan out to
    several engine requests: a list of prompts). ``route`` labels the gateway's metrics."""

    route: str
    requested: Requested
    #: The highest ratio a range may rise to (``None``: no range was sent).
    ceiling: int | None = None
    generations: list[Generation] = field(default_factory=list)

    @property
    def ratio(self) -> Requested:
        """The ratio the engine ran at; ``"auto"`` while the engine has not said which."""
        if self.generations:
            return self.generations[0].ratio
        return self.requested

    @property
    def path(self) -> list[list[int | None]] | None:
        """The ratios it ran from which generated token: a fixed ratio's is known, one that may
        rise comes from the engine's reports (``None`` where they did not come back)."""
        if self.requested != AUTO and self.ceiling is None:
            return [[0, self.requested]]  # type: ignore[list-item]
        paths = [g.path for g in self.generations]
        return paths[0] if paths and all(p == paths[0] for p in paths) else None

    def usage_breadcrumbs(self, block_size: int) -> dict[str, Requested]:
        """The ``usage.breadcrumbs`` object, summed over every choice of every generation
        (the figures are ``null`` where the ratio "auto" chose never came back)."""
        if self.ratio == AUTO:
            return {"ratio": AUTO, "ratio_path": None, "beacons_inserted": None,
                    "peak_kv_entries": None, "kv_entries_saved": None, "measured": False}
        savings = [s for g in self.generations for s in g.savings(block_size)]
        return {
            "ratio": self.ratio,
            "ratio_path": self.path,
            "beacons_inserted": sum(s.beacons for s in savings),
            "peak_kv_entries": sum(s.peak_entries for s in savings),
            "kv_entries_saved": sum(s.entries_saved for s in savings),
            "measured": all(g.measured for g in self.generations),
        }


#: The account of the HTTP request being served. The gateway sets it before handing the request
#: to vLLM's serving layer, whose ``engine_client.generate`` call runs in the same context.
CURRENT_ACCOUNT: ContextVar[RequestAccount | None] = ContextVar("breadcrumbs_account",
                                                                default=None)
