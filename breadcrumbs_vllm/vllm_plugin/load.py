"""``GET /get_load``: a replica's load as the vLLM Router's ``power_of_two`` policy reads it.

The vLLM Router never reads ``/metrics``; it polls each worker's ``/get_load`` for
``{"load": <int>}`` and sends a request to the less loaded of two. The integer here is::

    load = round(100 * mean over engines of breadcrumbs_kv_cache_usage_projected_perc)
           + sum over engines of vllm:num_requests_waiting

so a replica counts what its running requests will still grow into -- about ``1/c`` of normal
under compression (``kv_budget.py``) -- plus its queue. Both figures are read from the
process's Prometheus registry, where vLLM's stat loggers (ours included) write them after every
engine step; a replica that has not stepped yet reads 0.

``vllm serve`` serves it through vLLM's ``vllm.endpoint_plugins`` entry point, which vLLM
loads only when ``VLLM_PLUGINS`` names it (``VLLM_PLUGINS=breadcrumbs``: every entry point of
this package is named ``breadcrumbs``); the gateway serves it itself (``server/routers/ops.py``).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

PROJECTED = "breadcrumbs_kv_cache_usage_projected_perc"
WAITING = "vllm:num_requests_waiting"


def server_load(families: Iterable[Metric]) -> int:
    """The ``load`` integer from a registry's (or a scraped page's) metric families."""
    projected: list[float] = []
    waiting = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == PROJECTED:
                projected.append(sample.value)
            elif sample.name == WAITING:
                waiting += sample.value
    mean = sum(projected) / len(projected) if projected else 0.0
    return round(100 * mean + waiting)


def get_load() -> dict[str, int]:
    return {"load": server_load(REGISTRY.collect())}


class LoadEndpoint:
    """The ``vllm.endpoint_plugins`` factory (vLLM's ``EndpointPlugin`` protocol)."""

    name = "breadcrumbs"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.add_api_route("/get_load", get_load, methods=["GET"],
                          summary="Load for the vLLM Router's power_of_two policy")

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        """Nothing to set up: the route reads the metrics registry."""
