"""The checkpoint format: a Hugging Face causal-LM folder plus a ``breadcrumbs`` block in
``config.json``.

The bundled models are Qwen2 (:func:`init_model`); ``breadcrumbs convert`` makes the same kind of
folder from a user's Llama, Qwen2 or Qwen3. vLLM loads the very same folder natively; the plugin
and the reference engine read the ``breadcrumbs`` block to learn the beacon id and the ratios the
model was trained for, and every loader goes through ``AutoModelForCausalLM`` (the model's own
transformers class). Writes are atomic (temporary folder + rename) so a crash never leaves half a
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from breadcrumbs_vllm.tokenizer import BEACON, EOS, IM_END, build_tokenizer, load_tokenizer

DEFAULT_RATIOS = (2, 4, 8, 16)


class CheckpointError(ValueError):
    """A model path that is missing, unreadable or lacks the ``breadcrumbs`` block."""


@dataclass
class BreadcrumbsConfig:
    """The ``breadcrumbs`` block of ``config.json``: what the model supports for compression."""

    beacon_token_id: int
    ratios: list[int] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    default_ratio: int | None = None
    task: str | None = None
    task_options: dict = field(default_factory=dict)  # the task's difficulty knobs (get_task)
    teacher: str | None = None  # folder of the teacher a student was distilled from (relative)

    @classmethod
    def from_dict(cls, block: dict) -> BreadcrumbsConfig:
        known = {k: block[k] for k in cls.__dataclass_fields__ if k in block}
        if "beacon_token_id" not in known:
            raise CheckpointError("the 'breadcrumbs' block has no 'beacon_token_id'")
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)

    def check_ratio(self, ratio: int | None) -> int | None:
        """Return ``ratio`` if this model supports it (``None`` always is); else a clear error."""
        if ratio is None or ratio in self.ratios:
            return ratio
        raise ValueError(
            f"compression ratio {ratio} is not supported by this model; supported: "
            f"{', '.join(map(str, sorted(self.ratios)))} or none"
        )


def read_breadcrumbs_config(path: Path | str) -> BreadcrumbsConfig:
    """Read the ``breadcrumbs`` block of a checkpoint folder, with one-line errors."""
    config_file = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise CheckpointError(f"model path {str(path)!r} does not exist or is not a folder")
    if not config_file.is_file():
        raise CheckpointError(f"model path {str(path)!r} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from None
    if "breadcrumbs" not in config:
        raise CheckpointError(
            f"{config_file} has no 'breadcrumbs' block: not a beacon-capable checkpoint "
            "(create one with `breadcrumbs init-model` or `breadcrumbs train`)"
        )
    return BreadcrumbsConfig.from_dict(config["breadcrumbs"])


def init_model(
    layers: int,
    hidden: int,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 8192,
    seed: int = 0,
    ratios: list[int] | None = None,
    task: str | None = None,
    task_options: dict | None = None,
    init_std: float = 0.02,
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast, BreadcrumbsConfig]:
    """A randomly initialised Qwen2 model with the project tokenizer and a ``breadcrumbs`` block.

    ``heads`` defaults to ``hidden // 32`` so the head size (32) is one vLLM's CPU backend supports.
    Tests raise ``init_std`` so that a random model has confident, position-sensitive logits.
    """
    tokenizer = build_tokenizer()
    heads = heads or max(1, hidden // 32)
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
    vocab_size = (len(tokenizer) + 31) // 32 * 32
    bc = BreadcrumbsConfig(
        beacon_token_id=tokenizer.convert_tokens_to_ids(BEACON),
        ratios=sorted(ratios or DEFAULT_RATIOS),
        task=task,
        task_options=dict(task_options or {}),
    )
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_std,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = project_generation_config(tokenizer)
    model.eval()
    return model, tokenizer, bc


def project_generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """The project tokenizer's stops: ``<|im_end|>`` and ``<|endoftext|>`` (what vLLM reads)."""
    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END),
                      tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
    )


def atomic_write_dir(out_dir: Path | str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then move ``tmp_dir`` into place, replacing ``out_dir`` at once."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    bc: BreadcrumbsConfig,
    out_dir: Path | str,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save an HF-format folder (config with ``breadcrumbs`` block, safetensors, tokenizer, chat
    template, the model's generation config: its stop tokens), atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))
        config = json.loads((tmp / "config.json").read_text())
        config["breadcrumbs"] = bc.to_dict()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    return atomic_write_dir(out_dir, write)


def load_checkpoint(
    path: Path | str, attn_implementation: str = "eager"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, BreadcrumbsConfig]:
    """Load model (float32, eval mode), tokenizer and ``breadcrumbs`` block; one-line errors."""
    bc = read_breadcrumbs_config(path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.eval()
    return model, load_tokenizer(path), bc


def stop_token_ids(tokenizer: PreTrainedTokenizerBase,
                   generation_config: GenerationConfig | None = None) -> list[int]:
    """The ids that end a generation, as vLLM derives them: the tokenizer's end-of-sequence token
    plus the generation config's ``eos_token_id`` (an id or a list).

    A project model's generation config lists ``<|im_end|>`` and ``<|endoftext|>``
    (:func:`project_generation_config`); a converted model keeps its own (Llama 3: ``<|eot_id|>``
    and ``<|end_of_text|>``). Without a generation config, the project's two stops.
    """
    if generation_config is None:
        return stop_token_ids(tokenizer, project_generation_config(tokenizer))
    eos = generation_config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids
