"""The offline environment ``vllm_core_tests.py`` runs vLLM's core tests in (no Hub here).

:func:`stand_ins` builds a Hugging Face cache (``HF_HUB_OFFLINE=1``) with a stand-in for each
Hub model the three test files name: a ``config.json`` with the real model's shape from
transformers' config classes and the project's tokenizer. No weights: the tests only build
configs, schedulers and KV managers. ``Qwen/Qwen3-0.6B`` is ``ModelConfig``'s default model,
so the tests that build ``ModelConfig()`` without one need it too.

:func:`torchvision_site` exists for the llava tests. vLLM's ``llava`` module imports
transformers' Pixtral image processor, which imports ``torchvision``, and vLLM inspects an
architecture by importing its module in a subprocess: without torchvision that fails as "Model
architectures ['LlavaForConditionalGeneration'] failed to be inspected", whatever the config
says. The project's venv has no torchvision (``make setup`` removes it): PyPI's wheel is built
for CUDA torch, its ``_C`` ops cannot load beside torch+cpu, and its Python then registers a
fake kernel for ``torchvision::nms`` and ``::qnms``, which do not exist, so ``import torchvision``
raises. The runner therefore installs that wheel into its own folder with a ``sitecustomize``
that declares those two ops' schema (no kernel: nothing here calls them). Only the two test
runs (and vLLM's inspection subprocess, which inherits their ``PYTHONPATH``) see that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

#: torch 2.13's torchvision.
TORCHVISION = "torchvision==0.28.0"
NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
SITECUSTOMIZE = ('''"""Written by loadtests/vllm_core_hub.py: lets PyPI's CUDA torchvision '''
                 f'''import beside torch+cpu.

Its ``_C`` ops cannot load here; ``torchvision._meta_registrations`` still registers fake
kernels for ``torchvision::nms`` and ``::qnms``, which need the ops' schema. Nothing calls them.
"""
import torch

for op in ("nms", "qnms"):
    torch.library.define(f"torchvision::{{op}}", "{NMS_SCHEMA}")
''')


def torchvision_site(cache: Path) -> Path | None:
    """A folder for ``PYTHONPATH`` that makes ``import torchvision`` work, or None if it does."""
    if importlib.util.find_spec("torchvision") is not None:
        return None
    site = cache / "vllm-core-site"
    if not (site / "torchvision" / "__init__.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(site), TORCHVISION], check=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return site


def _configs() -> dict[str, object]:
    """Each Hub id the tests name -> a config of the real model's shape (its ``config.json``)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        OPTConfig,
        Qwen2Config,
        Qwen3Config,
    )

    return {
        "facebook/opt-125m": OPTConfig(
            hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
            word_embed_proj_dim=768, architectures=["OPTForCausalLM"]),
        "Qwen/Qwen1.5-7B": Qwen2Config(
            vocab_size=151936, hidden_size=4096, intermediate_size=11008,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            max_position_embeddings=32768, architectures=["Qwen2ForCausalLM"]),
        "Qwen/Qwen3-0.6B": Qwen3Config(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=40960, tie_word_embeddings=True, dtype="bfloat16",
            architectures=["Qwen3ForCausalLM"]),
        "llava-hf/llava-1.5-7b-hf": LlavaConfig(
            text_config=LlamaConfig(vocab_size=32064, max_position_embeddings=4096),
            vision_config=CLIPVisionConfig(hidden_size=1024, image_size=336, patch_size=14,
                                           num_hidden_layers=24, intermediate_size=4096,
                                           num_attention_heads=16, projection_dim=768),
            image_token_index=32000, architectures=["LlavaForConditionalGeneration"]),
    }


def _llava_files(snapshot: Path, image_token_id: int) -> None:
    """llava-1.5's processor files, and ``<image>`` in the tokenizer at the config's id.

    vLLM sizes the encoder budget by running the processor on a dummy image prompt and finding
    ``image_token_index`` in the result; the project tokenizer has ~100 ids, so unreachable
    filler entries pad its vocabulary up to that id (as Llama's 32,000 do).
    """
    path = snapshot / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), image_token_id)})
    data["added_tokens"].append({"id": image_token_id, "content": "<image>", "special": True,
                                 "single_word": False, "lstrip": False, "rstrip": False,
                                 "normalized": False})
    path.write_text(json.dumps(data))
    (snapshot / "processor_config.json").write_text(json.dumps({
        "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
        "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"}))
    (snapshot / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
        "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))


def stand_ins(hub: Path) -> None:
    """Write the offline Hub cache; a snapshot is named by its config's hash (rebuilt on change)."""
    from breadcrumbs_vllm.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    for repo, config in _configs().items():
        folder = hub / f"models--{repo.replace('/', '--')}"
        name = hashlib.sha256(config.to_json_string().encode()).hexdigest()[:12]
        snapshot = folder / "snapshots" / name
        if not (snapshot / "config.json").exists():
            snapshot.mkdir(parents=True, exist_ok=True)
            tokenizer.save_pretrained(snapshot)
            if config.model_type == "llava":
                _llava_files(snapshot, config.image_token_index)
            config.save_pretrained(snapshot)  # last: its presence marks a finished snapshot
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(name)
