"""Remote mode: forward to one or more vLLM OpenAI servers (running the plugin) over httpx.

The gateway keeps tokenising and validating itself and sends token ids to the upstream
``/v1/completions`` (chat is rendered with the model's template here, so both routes share one
upstream call). A background task polls every upstream's ``/health`` and ``/metrics``; requests
go to the healthy upstream with the lowest ``vllm:kv_cache_usage_perc`` (least loaded by memory,
the resource compression trades for). Closing the stream closes the upstream connection, which
makes vLLM abort the request and free its blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from breadcrumbs_vllm.vllm_plugin.compression import ratio_xargs
from server.compression import KVState
from server.engines.base import Delta, EngineBackend, GenParams
from server.errors import APIError
from server.settings import Settings

log = logging.getLogger("server")

_KV_USAGE = re.compile(r"^vllm:kv_cache_usage_perc(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.MULTILINE)
_CACHE_INFO = re.compile(r"^vllm:cache_config_info\{([^}]*)\}", re.MULTILINE)


def parse_upstream_metrics(text: str) -> tuple[float, int | None]:
    """KV usage (max over engines) and pool size in tokens from a vLLM ``/metrics`` page."""
    usages = [float(v) for v in _KV_USAGE.findall(text)]
    capacity = None
    if info := _CACHE_INFO.search(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', info.group(1)))
        if labels.get("num_gpu_blocks", "").isdigit() and labels.get("block_size", "").isdigit():
            capacity = int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    return (max(usages) if usages else 0.0), capacity


@dataclass
class Upstream:
    url: str
    healthy: bool = False
    kv_usage: float = 1.0
    capacity_tokens: int | None = None
    model: str | None = None
    in_flight: int = field(default=0)


class RemoteBackend(EngineBackend):
    name = "remote"

    def __init__(self, settings: Settings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``transport`` lets tests stand in for the upstream servers."""
        self.settings = settings
        self.upstreams = [Upstream(url.rstrip("/")) for url in settings.backends]
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout_s, connect=5.0), transport=transport)
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        await self.poll_once()
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self.client.aclose()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(u) for u in self.upstreams))

    async def _poll(self, upstream: Upstream) -> None:
        try:
            health = await self.client.get(f"{upstream.url}/health", timeout=5.0)
            metrics = await self.client.get(f"{upstream.url}/metrics", timeout=5.0)
            if upstream.model is None:
                models = await self.client.get(f"{upstream.url}/v1/models", timeout=5.0)
                upstream.model = models.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            upstream.healthy = False
            return
        upstream.healthy = health.status_code == 200 and metrics.status_code == 200
        upstream.kv_usage, upstream.capacity_tokens = parse_upstream_metrics(metrics.text)

    def pick(self) -> Upstream:
        """The healthy upstream with the least KV usage (ties: fewest requests in flight)."""
        healthy = [u for u in self.upstreams if u.healthy]
        if not healthy:
            raise APIError(503, "no healthy engine backend", code="backend_unavailable")
        return min(healthy, key=lambda u: (u.kv_usage, u.in_flight))

    async def ready(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    def kv_state(self) -> KVState:
        healthy = [u for u in self.upstreams if u.healthy]
        if not healthy:
            return KVState(usage=1.0, capacity_tokens=None)
        best = min(healthy, key=lambda u: u.kv_usage)
        return KVState(usage=best.kv_usage, capacity_tokens=best.capacity_tokens)

    async def generate(self, prompt_ids: list[int], params: GenParams,
                       request_id: str) -> AsyncIterator[Delta]:
        upstream = self.pick()
        body = {
            "model": upstream.model, "prompt": prompt_ids, "stream": True,
            "max_tokens": params.max_tokens, "n": params.n, "stop": params.stop,
            "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
            "ignore_eos": params.ignore_eos, "return_token_ids": True,
            "vllm_xargs": ratio_xargs(params.ratio),
        }
        upstream.in_flight += 1
        try:
            async with self.client.stream("POST", f"{upstream.url}/v1/completions", json=body,
                                          headers={"X-Request-Id": request_id}) as response:
                if response.status_code != 200:
                    await response.aread()
                    upstream.healthy = response.status_code < 500
                    raise APIError(503 if response.status_code >= 500 else 400,
                                   f"engine backend answered {response.status_code}",
                                   code="backend_error")
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for choice in json.loads(line[6:]).get("choices", []):
                        tokens = choice.get("token_ids")
                        yield Delta(choice["index"], choice.get("text", ""),
                                    len(tokens) if tokens is not None else 1,
                                    choice.get("finish_reason"))
        except httpx.HTTPError as exc:
            upstream.healthy = False
            raise APIError(503, f"engine backend failed: {type(exc).__name__}",
                           code="backend_error") from None
        finally:
            upstream.in_flight -= 1
