"""``breadcrumbs convert`` on tiny random Llama and Qwen3 models with a trained BPE tokenizer, and
its one-line refusals of the architectures the method cannot serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from byo_models import converted
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DeepseekV2Config,
    GPT2Config,
    LlamaConfig,
    LlavaConfig,
    MistralConfig,
    T5Config,
)

import breadcrumbs_vllm.convert as convert_module
from breadcrumbs_vllm.checkpoint import load_checkpoint, stop_token_ids
from breadcrumbs_vllm.cli import main
from breadcrumbs_vllm.convert import UnsupportedModel, check_architecture
from breadcrumbs_vllm.tokenizer import BEACON


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def pair(request, tmp_path_factory) -> tuple[str, Path, Path]:
    original, out = converted(request.param, tmp_path_factory.mktemp(request.param), [2, 4, 8])
    return request.param, original, out


def test_convert_round_trips(pair) -> None:
    kind, original, out = pair
    model, tokenizer, bc = load_checkpoint(out)
    before = AutoModelForCausalLM.from_pretrained(str(original))
    old_tok = AutoTokenizer.from_pretrained(str(original))
    assert type(model) is type(before)  # the model's own transformers class
    assert bc.ratios == [2, 4, 8] and bc.task is None
    # <beacon> is one special token of the model's own tokenizer, the next id after its tokens.
    assert bc.beacon_token_id == len(old_tok) == tokenizer.convert_tokens_to_ids(BEACON)
    text = "what is 12 + 30? Answer: 42"
    assert tokenizer(text).input_ids == old_tok(text).input_ids
    ids = tokenizer(f"a {BEACON} b").input_ids
    assert bc.beacon_token_id in ids
    assert BEACON not in tokenizer.decode(ids, skip_special_tokens=True)
    assert tokenizer.chat_template == old_tok.chat_template
    assert (out / "chat_template.jinja").read_text() == (
        original / "chat_template.jinja").read_text()
    assert stop_token_ids(tokenizer, model.generation_config) == stop_token_ids(
        old_tok, before.generation_config)
    # Original rows are untouched; the beacon's row is the mean of the real tokens' rows.
    rows = len(old_tok)
    emb, old = model.get_input_embeddings().weight, before.get_input_embeddings().weight
    assert torch.equal(emb[:rows], old[:rows])
    assert torch.allclose(emb[bc.beacon_token_id], old[:rows].mean(0), atol=1e-6)
    grew = kind == "llama"  # its vocabulary was exactly its tokenizer; Qwen3 had a padding row
    assert emb.shape[0] == old.shape[0] + grew
    assert json.loads((out / "config.json").read_text())["vocab_size"] == emb.shape[0]
    if kind == "llama":  # untied head: its beacon row is initialised the same way
        head, old_head = model.get_output_embeddings().weight, before.get_output_embeddings().weight
        assert head.data_ptr() != emb.data_ptr()
        assert torch.equal(head[:rows], old_head[:rows])
        assert torch.allclose(head[bc.beacon_token_id], old_head[:rows].mean(0), atol=1e-6)


def test_convert_refuses_a_converted_model(pair, capsys) -> None:
    _, _, out = pair
    assert main(["convert", "--model", str(out), "--out", str(out.parent / "again")]) == 2
    assert "already beacon-capable" in capsys.readouterr().err


REFUSED = [
    (T5Config(), "encoder-decoder"),
    (LlavaConfig(), "multimodal"),
    (DeepseekV2Config(q_lora_rank=None), "multi-head latent attention"),
    (MistralConfig(sliding_window=4096), "sliding-window attention"),
    (GPT2Config(), "no RoPE positions"),
]


@pytest.mark.parametrize(("config", "reason"), REFUSED, ids=[r for _, r in REFUSED])
def test_unsupported_architectures_get_a_one_line_refusal(config, reason, tmp_path, capsys) -> None:
    config.save_pretrained(str(tmp_path / "model"))
    code = main(["convert", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert reason in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_refusal_checks_the_vllm_registry_and_causal_lm_head() -> None:
    llama = LlamaConfig(architectures=["LlamaForCausalLM"])
    assert check_architecture(llama, vllm_archs={"LlamaForCausalLM"}) is True
    with pytest.raises(UnsupportedModel, match="vLLM does not run LlamaForCausalLM"):
        check_architecture(llama, vllm_archs=set())
    with pytest.raises(UnsupportedModel, match="not a causal LM"):
        check_architecture(LlamaConfig(architectures=["LlamaModel"]), vllm_archs={"LlamaModel"})
    # A RoPE decoder of another family passes, but is not one the suite verifies.
    mistral = MistralConfig(sliding_window=None, architectures=["MistralForCausalLM"])
    assert check_architecture(mistral, vllm_archs={"MistralForCausalLM"}) is False


def test_without_vllm_the_registry_check_is_skipped_with_a_warning(monkeypatch) -> None:
    """A machine that only trains (a GPU without vLLM) still converts; serving checks again."""
    monkeypatch.setattr(convert_module, "vllm_architectures", lambda: None)
    with pytest.warns(UserWarning, match="vLLM is not installed here"):
        assert check_architecture(LlamaConfig(architectures=["LlamaForCausalLM"])) is True


def test_convert_bad_input_is_one_line(tmp_path, capsys) -> None:
    assert main(["convert", "--model", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot load a model config" in capsys.readouterr().err
