"""How big the embedded engine's KV pool is, chosen on purpose rather than left to luck.

vLLM's CPU worker takes ``gpu_memory_utilization`` (0.92 by default) *of the NUMA node* its first
CPU sits on and refuses to start when that much is not free, and a machine's node 0 may hold a
small part of what ``free`` shows (3.8 of 23 GiB on the machines this project is tested on). An
explicit KV size skips that check, so on CPU the gateway always passes one: ``--kv-cache-gib``
when given, otherwise :data:`DEFAULT_SHARE` of what is free on that node right now, clamped to
``[MIN_GIB, MAX_GIB]``. On GPUs the default stays vLLM's own (a share of the device's memory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from server.settings import Settings

GIB = 1 << 30
#: Share of the node's free memory a default CPU pool takes: the rest is for the weights, the
#: activations and whatever else runs there.
DEFAULT_SHARE = 0.25
MIN_GIB, MAX_GIB = 0.25, 4.0
_ENV = "VLLM_CPU_KVCACHE_SPACE"  # vLLM's legacy CPU knob (whole GiB); it overrides the flag


class PoolTooLarge(ValueError):
    """The requested pool does not fit in the memory free where the engine would allocate it."""


def cpu_node_free_bytes() -> tuple[int, int]:
    """``(node, free bytes)`` of the NUMA node vLLM's CPU worker allocates on (its first CPU's)."""
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

    node = get_allowed_cpu_list()[0].numa_node
    return node, get_memory_node_info(node).available_memory


@dataclass(frozen=True)
class KVPool:
    """The KV pool size handed to the engine (``None``: vLLM's own default) and why."""

    gib: float | None
    reason: str

    @classmethod
    def for_settings(cls, settings: Settings, cpu: bool) -> KVPool:
        requested = settings.kv_cache_gib
        if requested is not None:
            os.environ.pop(_ENV, None)  # else it would silently replace the flag on CPU
            if cpu:
                node, free = cpu_node_free_bytes()
                if requested * GIB > free:
                    raise PoolTooLarge(
                        f"--kv-cache-gib {requested:g} does not fit: NUMA node {node} has "
                        f"{free / GIB:.2f} GiB free; pass a smaller --kv-cache-gib")
            return cls(requested, "--kv-cache-gib")
        if not cpu:
            return cls(None, "vLLM's default share of GPU memory; --kv-cache-gib sets it")
        if os.environ.get(_ENV):
            return cls(float(int(os.environ[_ENV])), f"{_ENV}; --kv-cache-gib sets it")
        node, free = cpu_node_free_bytes()
        gib = min(MAX_GIB, math.floor(free * DEFAULT_SHARE / GIB * 4) / 4)
        if gib < MIN_GIB:
            raise PoolTooLarge(
                f"only {free / GIB:.2f} GiB is free on NUMA node {node}, too little for a "
                f"{MIN_GIB:g} GiB KV pool; free memory there or pass a smaller --kv-cache-gib")
        return cls(gib, f"default: {DEFAULT_SHARE:.0%} of the {free / GIB:.2f} GiB free on NUMA "
                        f"node {node}, at most {MAX_GIB:g}; --kv-cache-gib sets it")

    def engine_flags(self) -> list[str]:
        return [] if self.gib is None else ["--kv-cache-memory-bytes", str(int(self.gib * GIB))]

    def describe(self, tokens: int | None, block_size: int) -> str:
        """The start-up line: the pool in GiB and in tokens."""
        size = "vLLM's default" if self.gib is None else f"{self.gib:g} GiB"
        if tokens:
            size += f" = {tokens:,} tokens ({tokens // block_size:,} blocks of {block_size})"
        return f"KV pool: {size} ({self.reason})"
