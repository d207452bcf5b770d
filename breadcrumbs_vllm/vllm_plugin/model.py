"""Which models the plugin engages for: those whose ``config.json`` has a ``breadcrumbs`` block."""

from __future__ import annotations

from typing import Any

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule
from breadcrumbs_vllm.vllm_plugin.compression import (
    RequestCompression,
    resolve_ceiling,
    resolve_ratio,
)


class BeaconModel:
    """The served model's ``breadcrumbs`` block and the per-request compression it implies."""

    def __init__(self, bc: BreadcrumbsConfig) -> None:
        self.bc = bc

    @classmethod
    def from_model_config(cls, model_config: Any) -> BeaconModel | None:
        """``None`` for models without a ``breadcrumbs`` block: vLLM then runs exactly as stock."""
        hf_config = getattr(model_config, "hf_config", None)
        block = getattr(hf_config, "breadcrumbs", None)
        if not isinstance(block, dict):
            return None
        return cls(BreadcrumbsConfig.from_dict(block))

    @property
    def decodes_uncompressed(self) -> bool:
        """Whether ``"auto"`` may run a request without beacons: not for a distilled student
        (its block names its teacher), which was trained for its ratios only."""
        return self.bc.teacher is None

    def requested(self, params: Any) -> int | None | str:
        """The ratio a request's ``SamplingParams`` ask for (``None`` for pooling requests,
        which carry none): a supported ratio, ``None`` or ``"auto"``; ``ValueError`` otherwise."""
        return resolve_ratio(params.extra_args if params is not None else None, self.bc)

    def ceiling(self, params: Any) -> int | None:
        """The highest ratio the request may rise to while it runs (``None``: never changes)."""
        return resolve_ceiling(params.extra_args if params is not None else None, self.bc)

    def at_ratio(self, prompt_len: int, ratio: int | None, max_tokens: int,
                 offset: int = 0) -> RequestCompression | None:
        """The compression state of a request the scheduler runs at ``ratio`` from generated
        token ``offset`` on (0: from its start); ``None`` when it runs uncompressed."""
        if ratio is None:
            return None
        return RequestCompression(BeaconSchedule(prompt_len + offset, ratio),
                                  self.bc.beacon_token_id, offset=offset,
                                  max_tokens=max_tokens - offset)
