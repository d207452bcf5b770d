"""KV compaction for every attention backend vLLM 0.32 runs, derived from vLLM's own layout.

vLLM 0.32 allocates every attention layer's paged cache the same way (``allocate_kv_cache`` ->
``create_kv_cache_views``): a 4D view ``[B, H, N, C]`` of kernel blocks, KV-head slots, tokens per
kernel block and K|V content (with any in-line scales), whose memory order is the engine's one
``KVCacheLayout`` (``CacheConfig.get_resolved_kv_cache_layout()``; FlashInfer's HND is
``LBHNC``/``BLHNC``, the NHD backends' is ``LBNHC``). The per-backend ``get_kv_cache_shape`` /
``get_kv_cache_stride_order`` of earlier releases are gone: the view's strides *are* the layout.
Indexing the view logically hides the stride order, so what still differs between backends is
only where inside a block the backend's cache-write kernel puts a token. FlashAttention,
FlashInfer (NHD and HND, not NVFP4-NHD), Triton attention and FlexAttention write token ``s``
into the cell ``[s // N, :, s % N, :]``; CPU_ATTN packs K rows then V rows of a block in an
ISA-specific order.

So nothing here names a backend. At engine start (:func:`attach`) each attention group's own
writer (``impl.do_kv_cache_update``) is run on two blocks of the real cache and each in-block
offset's footprint is recorded (:class:`TokenFootprint`): the whole cell when every write stays
in its cell (any dtype: fp8 bytes and in-line scales move as they are, and per-tensor fp8 scales
live outside the cache), else the element map found with coded probe values (exact dtypes only).
What cannot be derived, and what the plugin cannot serve (several KV-cache groups, sliding
windows, MLA, packed kernel blocks), is refused there with one line, not at the first beacon.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: ``write(key [T, H, D], value [T, H, Dv], cache [B, H, N, C], slot_mapping [T])``: the
#: backend's cache-write (``impl.do_kv_cache_update`` bound to its layer).
CacheWriter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]

#: Largest code a probe writes: integers up to 256 are exact in bfloat16, float16 and float32.
_MAX_CODE = 255
_EXACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class UnsupportedKVLayout(ValueError):
    """A KV cache the plugin cannot compact; the message is the one-line reason."""


@dataclass
class AttentionCaches:
    """The layers of one attention group: their caches, their writer and their token shape.

    The caches are the per-layer ``[B, H, N, C]`` views in the cache dtype; under tensor
    parallelism they hold this worker's KV heads only, and so does every probe and copy here.
    """

    caches: list[torch.Tensor]
    write: CacheWriter
    num_kv_heads: int
    head_size: int
    head_size_v: int
    dtype: torch.dtype  #: the activations' dtype (what K and V arrive in)
    quantized: bool  #: the cache stores quantized values (fp8 ...), not K/V themselves


class CellFootprint:
    """Token ``o`` of a block is every byte of every head at row ``o`` (the cell writers').

    Moving whole cells also moves in-line scales and padding, so any dtype is exact.
    """

    def copy(self, cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Move tokens ``src`` to ``dst`` (slots, device tensors) in one ``[B, H, N, C]`` view.

        One gather then one scatter, so a step's moves may chain; no host sync.
        """
        n = cache.shape[2]
        cache[dst // n, :, dst % n] = cache[src // n, :, src % n]


@dataclass(frozen=True)
class ElementFootprint:
    """The bytes of a token at each in-block offset of a packing writer (CPU_ATTN's).

    ``heads``, ``rows`` and ``cols`` are ``[N, K]`` byte coordinates in the ``[B, H, N, C]``
    byte view; byte ``k`` of offset ``o`` holds the same datum as byte ``k`` of offset ``o'``, so
    a move copies them index for index.
    """

    heads: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    def copy(self, cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        """As :meth:`CellFootprint.copy`, through the element map."""
        n = cache.shape[2]
        sb, so, db, do = src // n, src % n, dst // n, dst % n
        cache[db[:, None], self.heads[do], self.rows[do], self.cols[do]] = \
            cache[sb[:, None], self.heads[so], self.rows[so], self.cols[so]]


TokenFootprint = CellFootprint | ElementFootprint


def byte_view(cache: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, C]`` in bytes; valid for every ``KVCacheLayout`` (C has stride 1 in all)."""
    return cache if cache.dtype == torch.uint8 else cache.view(torch.uint8)


class FootprintProbe:
    """Finds a group's :class:`TokenFootprint` by running its writer on two cache blocks.

    The blocks' bytes are saved and restored, so probing the live cache at engine start leaves
    it as it was.
    """

    def __init__(self, group: AttentionCaches) -> None:
        self.group = group
        self.cache = group.caches[0]
        self.bytes = byte_view(self.cache)
        if self.cache.shape[0] < 2:
            raise UnsupportedKVLayout("breadcrumbs: the KV cache has fewer than two blocks")
        self.block_size = self.cache.shape[2]

    def footprint(self) -> TokenFootprint:
        saved = self.bytes[:2].clone()
        try:
            written = [self._written(offset) for offset in range(self.block_size)]
            if all(bool((rows == offset).all()) for offset, (_, rows, _) in enumerate(written)):
                return CellFootprint()
            return self._coded(written)
        finally:
            self.bytes[:2].copy_(saved)

    def _token(self, values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.group
        k_len = g.num_kv_heads * g.head_size
        if values is None:  # any values do: two sentinels reveal every byte written
            values = torch.arange(k_len + g.num_kv_heads * g.head_size_v) % 7 + 1.0
        values = values.to(device=self.cache.device, dtype=g.dtype)
        return (values[:k_len].view(1, g.num_kv_heads, g.head_size),
                values[k_len:].view(1, g.num_kv_heads, g.head_size_v))

    def _write(self, offset: int, values: torch.Tensor | None = None) -> None:
        key, value = self._token(values)
        slot = torch.tensor([offset], dtype=torch.long, device=self.cache.device)
        self.group.write(key, value, self.cache, slot)

    def _written(self, offset: int) -> tuple[torch.Tensor, ...]:
        """(heads, rows, cols) of the bytes one token at ``offset`` of block 0 changes.

        Two sentinels, so a byte written equal to one of them is still seen; a write reaching
        block 1 (or nothing at all) is refused.
        """
        changed = torch.zeros_like(self.bytes[:2], dtype=torch.bool)
        for sentinel in (0x00, 0xFF):
            self.bytes[:2].fill_(sentinel)
            self._write(offset)
            changed |= self.bytes[:2] != sentinel
        g = self.group
        if changed[1].any() or int(changed[0].sum()) < g.num_kv_heads * (
                g.head_size + g.head_size_v):
            raise UnsupportedKVLayout(
                f"breadcrumbs: the attention backend's cache write of in-block offset {offset} "
                "does not stay inside one block; its KV layout cannot be compacted")
        return torch.nonzero(changed[0], as_tuple=True)

    def _coded(self, written: list[tuple[torch.Tensor, ...]]) -> TokenFootprint:
        """Element map of a packing writer: each K/V element written with its own code."""
        g = self.group
        if g.quantized or self.cache.dtype not in _EXACT_DTYPES:
            raise UnsupportedKVLayout(
                "breadcrumbs: the attention backend packs tokens across rows of a block and the "
                f"KV cache is {self.cache.dtype} (quantized: {g.quantized}); its packing can only "
                "be probed in an unquantized float cache")
        num_elements = g.num_kv_heads * (g.head_size + g.head_size_v)
        size = self.cache.element_size()
        heads, rows, cols = (torch.empty(self.block_size, num_elements * size, dtype=torch.long)
                             for _ in range(3))
        for offset in range(self.block_size):
            for start in range(0, num_elements, _MAX_CODE):
                stop = min(start + _MAX_CODE, num_elements)
                values = torch.zeros(num_elements)
                values[start:stop] = torch.arange(1, stop - start + 1, dtype=torch.float32)
                self.bytes[:2].zero_()
                self._write(offset, values)
                block = self.cache[0].float()
                where = torch.nonzero(block)
                codes = block[tuple(where.T)].long()
                if codes.numel() != stop - start or set(codes.tolist()) != set(
                        range(1, stop - start + 1)):
                    raise UnsupportedKVLayout(
                        "breadcrumbs: the attention backend's cache write could not be mapped "
                        "element by element (probe codes lost or repeated)")
                ks = (start + codes[:, None] - 1) * size + torch.arange(size)
                heads[offset, ks] = where[:, :1]
                rows[offset, ks] = where[:, 1:2]
                cols[offset, ks] = where[:, 2:] * size + torch.arange(size)
            shape = self.bytes.shape[1:]
            mapped = (heads[offset] * shape[1] + rows[offset]) * shape[2] + cols[offset]
            h, n, c = written[offset]
            if not torch.equal(mapped.sort().values, ((h * shape[1] + n) * shape[2] + c).cpu()):
                raise UnsupportedKVLayout(
                    "breadcrumbs: the attention backend writes bytes besides K and V (in-line "
                    "scales?) into a packed block; its KV layout cannot be compacted")
        device = self.cache.device
        return ElementFootprint(heads.to(device), rows.to(device), cols.to(device))


class KVCompactor:
    """Moves tokens between physical slots in every layer's paged cache, batched per step.

    :meth:`move` only stages a (source, destination) pair of slots on the host; :meth:`flush`
    ships all of one step's pairs to the device in one copy and moves them with one gather and
    one scatter per layer (layers sharing storage are copied once). Invariant relied on: the
    plugin flushes right after the worker's compaction hook, on the stream the forward ran on,
    so the moves follow this step's KV writes and precede the next forward and the scheduler's
    reuse of the freed blocks.
    """

    def __init__(self, groups: Sequence[AttentionCaches], block_size: int) -> None:
        #: The unit of the block ids :meth:`move` is given (the worker block table's).
        self.block_size = block_size
        self._layers: list[tuple[TokenFootprint, list[torch.Tensor]]] = []
        seen: set[int] = set()
        for group in groups:
            caches = [byte_view(c) for c in group.caches if c.data_ptr() not in seen]
            seen.update(c.data_ptr() for c in group.caches)
            if caches:
                self._layers.append((FootprintProbe(group).footprint(), caches))
        self.device = groups[0].caches[0].device
        self._src: list[int] = []
        self._dst: list[int] = []

    def move(self, block_row: np.ndarray, src: int, dst: int) -> None:
        """Stage moving the token at physical index ``src`` of a request to index ``dst``.

        ``block_row`` holds the request's block ids in units of the worker block table's
        ``block_size``; a global slot is the same number in kernel-block units when a backend
        splits blocks, so the copy divides by the view's own ``N``.
        """
        block_size = self.block_size
        self._src.append(int(block_row[src // block_size]) * block_size + src % block_size)
        self._dst.append(int(block_row[dst // block_size]) * block_size + dst % block_size)

    def flush(self) -> None:
        """Apply every staged move (one host-to-device copy, then one copy per layer)."""
        if not self._src:
            return
        slots = torch.tensor(self._src + self._dst, dtype=torch.long)
        self._src.clear()
        self._dst.clear()
        if self.device.type != "cpu":
            from vllm.platforms import current_platform

            if current_platform.is_pin_memory_available():
                slots = slots.pin_memory()
            slots = slots.to(self.device, non_blocking=True)
        src, dst = slots.chunk(2)
        for footprint, caches in self._layers:
            for cache in caches:
                footprint.copy(cache, src, dst)


def build_compactor(runner: Any) -> KVCompactor:
    """The runner's compactor, built after its KV cache is allocated, or refuse the engine."""
    return KVCompactor(runner_attention_caches(runner),
                       runner.input_batch.block_table[0].block_size)


def runner_attention_caches(runner: Any) -> list[AttentionCaches]:
    """The runner's attention groups, checked against what compaction can serve."""
    from vllm.utils.torch_utils import is_quantized_kv_cache
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MLAAttentionSpec

    groups = runner.kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise UnsupportedKVLayout(
            f"breadcrumbs: beacon models need one KV-cache group, this model has {len(groups)} "
            "(hybrid, sliding-window or state-space layers keep KV the plugin cannot compact)")
    spec = groups[0].kv_cache_spec
    if not isinstance(spec, FullAttentionSpec) or isinstance(spec, MLAAttentionSpec):
        raise UnsupportedKVLayout(
            f"breadcrumbs: KV cache spec {type(spec).__name__} is not served; beacon models need "
            "full (non-MLA) attention")
    if getattr(spec, "sliding_window", None) is not None:
        raise UnsupportedKVLayout(
            "breadcrumbs: sliding-window attention would window physical, not logical, slots")
    quantized = is_quantized_kv_cache(runner.cache_config.cache_dtype)
    context = runner.compilation_config.static_forward_context
    out = []
    for attn_group in runner.attn_groups[0]:
        if attn_group.kernel_block_stride:
            raise UnsupportedKVLayout(
                f"breadcrumbs: {attn_group.backend.get_name()} maps kernel blocks through a "
                "packed stride; its slots are not block * N + offset")
        layers = [context[name] for name in attn_group.layer_names]
        first = layers[0]
        out.append(AttentionCaches(
            caches=[layer.kv_cache for layer in layers],
            write=functools.partial(first.impl.do_kv_cache_update, first),
            num_kv_heads=first.num_kv_heads, head_size=first.head_size,
            head_size_v=getattr(first, "head_size_v", first.head_size),
            dtype=runner.model_config.dtype, quantized=quantized))
    return out
