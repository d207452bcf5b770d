"""Shared fixtures: tiny random beacon-capable models made with the project's own init-model."""

from __future__ import annotations

import pytest

from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint


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
