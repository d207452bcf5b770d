"""Make a user's Hugging Face causal LM beacon-capable: ``breadcrumbs convert``.

The method needs three things of a model, and :func:`check_architecture` refuses (one line, with
the reason) any model that lacks one:

* a decoder-only self-attention KV cache that the plugin can cut per token: no encoder-decoder,
  no multimodal towers, no multi-head latent attention (MLA caches one shared latent per token in
  a layout the plugin's compactor does not move), no sliding-window layers (their own eviction
  would fight the beacons' and vLLM keeps those layers in a separate cache);
* RoPE positions, because a token keeps its logical position after earlier windows are evicted
  (spec rule 3), which absolute or ALiBi position schemes cannot express;
* an architecture vLLM runs (its model registry), so the converted folder serves unchanged.

Llama, Qwen2 and Qwen3 are the families the test suite proves exact against the reference engine
(:data:`VERIFIED_FAMILIES`); other RoPE decoders pass the checks with a warning.

A GGUF file (llama.cpp's format) is dequantized to a float32 Hugging Face folder first
(``gguf_model.py``), then converted like any other.

The conversion itself: ``<beacon>`` joins the model's own tokenizer as a special token; the beacon
takes the next id, and the embedding matrix (and an untied LM head) grows to hold it unless the
checkpoint already has padding rows there (Qwen releases do). Its input row -- and an untied
head's output row -- start at the mean of the real tokens' rows: the point of the embedding space
nearest to all tokens, so the untrained beacon perturbs the teacher's hidden states as little as
any single choice can (the training pipeline's students started the same way,
``init_beacon_embedding``). The chat template, generation config and dtype are the original's.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig, save_checkpoint
from breadcrumbs_vllm.gguf_model import dequantize, gguf_config, gguf_file
from breadcrumbs_vllm.tokenizer import BEACON

VERIFIED_FAMILIES = ("llama", "qwen2", "qwen3")


class UnsupportedModel(ValueError):
    """A model the method cannot serve correctly; the message says why, in one line."""


def check_architecture(config: Any, vllm_archs: set[str] | None = None) -> bool:
    """Refuse models the method cannot serve; return whether the family is a verified one.

    ``vllm_archs`` is vLLM's registry (``None``: look it up; importing vLLM takes seconds).
    """
    name = getattr(config, "model_type", "?")
    archs = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(f"{name} is an encoder-decoder model: beacons compress a decoder's "
                               "self-attention cache")
    if any(hasattr(config, key) for key in ("vision_config", "audio_config", "text_config")):
        raise UnsupportedModel(f"{name} is multimodal: only text-only causal LMs are supported")
    if getattr(config, "kv_lora_rank", None) is not None:
        raise UnsupportedModel(f"{name} uses multi-head latent attention (MLA): its compressed KV "
                               "latent is not a per-head K/V entry the plugin can move")
    if _has_sliding_window(config):
        raise UnsupportedModel(f"{name} uses sliding-window attention: its window eviction would "
                               "conflict with beacon eviction")
    if not _has_rope(config):
        raise UnsupportedModel(f"{name} has no RoPE positions: beacons need each token to keep its "
                               "logical position after eviction (spec rule 3)")
    if not archs or not all(a.endswith("ForCausalLM") for a in archs):
        raise UnsupportedModel(f"{name} ({', '.join(archs) or 'no architectures'}) is not a "
                               "causal LM")
    known = vllm_archs if vllm_archs is not None else vllm_architectures()
    if known is None:
        warnings.warn(f"vLLM is not installed here: not checked that it serves "
                      f"{', '.join(archs)}", stacklevel=2)
    elif missing := [a for a in archs if a not in known]:
        raise UnsupportedModel(f"vLLM does not run {', '.join(missing)}")
    return name in VERIFIED_FAMILIES


def _has_sliding_window(config: Any) -> bool:
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return True
    return (getattr(config, "sliding_window", None) is not None
            and getattr(config, "use_sliding_window", True) is not False)


def _has_rope(config: Any) -> bool:
    if getattr(config, "alibi", False) or getattr(config, "position_embedding_type",
                                                  "rope") != "rope":
        return False
    return (getattr(config, "rope_parameters", None) is not None
            or getattr(config, "rope_theta", None) is not None)


def vllm_architectures() -> set[str] | None:
    """What vLLM runs, or ``None`` where it is not installed: a machine that only trains (a
    GPU without vLLM) converts without the check, and serving the result checks again."""
    try:
        from vllm import ModelRegistry
    except ImportError:
        return None

    return set(ModelRegistry.get_supported_archs())


@dataclass(frozen=True)
class Conversion:
    """What ``convert`` did: where the folder went and what the beacon became."""

    out: Path
    model_type: str
    beacon_token_id: int
    resized: bool  # the embedding (and an untied head) grew to hold the beacon
    verified: bool  # a family the test suite proves exact


def convert(model_id: str, ratios: list[int], out: Path | str,
            vllm_archs: set[str] | None = None,
            extra_files: dict[str, str] | None = None) -> Conversion:
    """Convert ``model_id``: a folder or a hub id (the normal transformers path), or a GGUF file
    (or a folder holding one), which is dequantized to a float32 folder first. ``extra_files``
    (name: text) are written into the output folder with it, atomically."""
    gguf = gguf_file(model_id)
    if gguf is None:
        return _convert_hf(model_id, ratios, out, vllm_archs, extra_files)
    check_architecture(gguf_config(gguf), vllm_archs)  # before any tensor is dequantized
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dequantized-", dir=Path(out).parent) as tmp:
        return _convert_hf(str(dequantize(gguf, Path(tmp) / "model")), ratios, out, vllm_archs,
                           extra_files)


def _convert_hf(model_id: str, ratios: list[int], out: Path | str,
                vllm_archs: set[str] | None, extra_files: dict[str, str] | None) -> Conversion:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a model config from {model_id!r}: "
                         f"{str(exc).splitlines()[0]}") from None
    if getattr(config, "breadcrumbs", None) is not None:
        raise ValueError(f"{model_id} is already beacon-capable (its config has a 'breadcrumbs' "
                         "block)")
    verified = check_architecture(config, vllm_archs)
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    if BEACON in tokenizer.get_vocab():
        raise ValueError(f"the tokenizer of {model_id} already has a {BEACON} token")
    real_tokens = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [BEACON]},
                                 replace_extra_special_tokens=False)
    beacon_id = tokenizer.convert_tokens_to_ids(BEACON)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto")
    resized = beacon_id >= model.get_input_embeddings().weight.shape[0]
    if resized:
        model.resize_token_embeddings(beacon_id + 1, mean_resizing=False)
    init_beacon_rows(model, beacon_id, real_tokens)
    bc = BreadcrumbsConfig(beacon_token_id=beacon_id, ratios=sorted(ratios))
    path = save_checkpoint(model, tokenizer, bc, out, extra_files=extra_files)
    return Conversion(path, config.model_type, beacon_id, resized, verified)


def init_beacon_rows(model: Any, beacon_id: int, real_tokens: int) -> None:
    """Set the beacon's input row (and an untied head's output row) to the mean of the rows of
    the ``real_tokens`` tokenizer tokens (padding rows a checkpoint carries are left out)."""
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            weight[beacon_id] = weight[:real_tokens].float().mean(dim=0).to(weight.dtype)
