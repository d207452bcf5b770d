"""Embedded mode: vLLM's ``AsyncLLM`` in this process, with the breadcrumbs plugin auto-loaded.

The compression ratio travels as ``SamplingParams(extra_args={"compression_ratio": c})``; the
plugin reads it (stock vLLM ignores it). KV usage comes from the scheduler stats vLLM hands every
stat logger after each engine step, so reading it costs nothing on the request path. vLLM's own
Prometheus logger stays on (``log_stats``), which puts its ``vllm:*`` metrics -- and the
plugin's ``breadcrumbs_*`` ones -- in the default registry that ``/metrics`` serves.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from server.compression import KVState
from server.engines.base import Delta, EngineBackend, GenParams
from server.errors import APIError
from server.settings import Settings


class _KVUsageSink:
    """Latest KV usage reported by the engine (a fraction of the pool)."""

    usage: float = 0.0


def _kv_logger_factory(sink: _KVUsageSink):
    """A per-engine vLLM stat logger that copies ``kv_cache_usage`` into ``sink``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KVUsageLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            self.sink = sink

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                self.sink.usage = scheduler_stats.kv_cache_usage

        def log_engine_initialized(self) -> None:
            pass

    return KVUsageLogger


@contextmanager
def _cpu_cold_start(model: Path) -> Iterator[dict]:
    """Engine arguments that skip two Python start-ups vLLM pays to protect GPUs, not CPUs.

    Each fresh process re-imports torch and vLLM, 15-20 s on a 2-core CPU, which is what kept a
    first eager ``breadcrumbs serve`` over a minute (bench_startup.py):

    - vLLM inspects a model class missing from its cache (``~/.cache/vllm/modelinfos``) in a
      subprocess, so this process never initialises CUDA. Registering the class object itself
      lets it inspect here; there is no CUDA to keep out.
    - The CPU platform runs the model in a worker process below the engine-core process unless
      V1 multiprocessing is off; with it off it keeps the in-process ("uni") executor, so the
      model runs in the engine-core process. ``AsyncLLM`` starts that process either way. The
      variable is set only while the engine starts (the child inherits it), so an engine built
      later in this process (tests) is not affected.

    The price is that scheduling no longer overlaps the forward pass: a compiled model, whose
    forward is short, decodes slower this way, so only the eager (fast-start) mode uses it.
    """
    from vllm import ModelRegistry

    for arch in json.loads((model / "config.json").read_text()).get("architectures", []):
        if arch in ModelRegistry.models:
            ModelRegistry.register_model(arch, ModelRegistry.models[arch].load_model_cls())
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    before = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield {"distributed_executor_backend": "uni"}
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


class EmbeddedBackend(EngineBackend):
    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = None
        self._sink = _KVUsageSink()

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        self.seeded_compression = not current_platform.is_cpu()
        kv_bytes = None
        if s.kv_cache_gib is not None:
            if current_platform.is_cpu():
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{s.kv_cache_gib:g}"
            else:
                kv_bytes = int(s.kv_cache_gib * (1 << 30))
        # On CPU, torch.compile's warm-up would push a cold start past a minute (which matters
        # more there than decode speed); on GPUs, compilation and CUDA graphs pay for themselves.
        compile_model = s.compile if s.compile is not None else not current_platform.is_cpu()
        fast_start = current_platform.is_cpu() and not compile_model
        with _cpu_cold_start(s.model) if fast_start else nullcontext({}) as fast:
            args = AsyncEngineArgs(
                model=str(s.model), served_model_name=[s.model_name], block_size=s.block_size,
                max_model_len=s.max_model_len, kv_cache_memory_bytes=kv_bytes,
                enable_log_requests=s.log_content, enforce_eager=not compile_model, **fast,
            )
            self.engine = AsyncLLM.from_engine_args(
                args, stat_loggers=[_kv_logger_factory(self._sink)])

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    async def ready(self) -> bool:
        if self.engine is None or self.engine.errored:
            return False
        try:
            await self.engine.check_health()
        except Exception:  # noqa: BLE001 -- any failure means "not ready", never a 500
            return False
        return True

    def kv_state(self) -> KVState:
        blocks = self.engine.vllm_config.cache_config.num_gpu_blocks if self.engine else None
        capacity = blocks * self.settings.block_size if blocks else None
        return KVState(usage=self._sink.usage, capacity_tokens=capacity)

    async def generate(self, prompt_ids: list[int], params: GenParams,
                       request_id: str) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        try:
            sampling = SamplingParams(
                n=params.n, max_tokens=params.max_tokens, stop=params.stop or None,
                temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                ignore_eos=params.ignore_eos, output_kind=RequestOutputKind.DELTA,
                extra_args={"compression_ratio": params.ratio},
            )
        except ValueError as exc:  # vLLM's own checks: a 400, never an engine error
            raise APIError(400, f"invalid sampling parameters: {exc}") from None
        finished = False
        try:
            async for output in self.engine.generate(
                    TokensPrompt(prompt_token_ids=prompt_ids), sampling, request_id):
                for choice in output.outputs:
                    yield Delta(choice.index, choice.text, len(choice.token_ids),
                                choice.finish_reason)
                finished = output.finished
        finally:
            if not finished and self.engine is not None:
                await self.engine.abort(request_id)


