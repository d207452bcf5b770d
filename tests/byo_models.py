"""Tiny random "bring your own model" checkpoints: a Llama and a Qwen3 with a real BPE tokenizer.

They stand in for a user's Hugging Face model: a plain HF folder (no ``breadcrumbs`` block) whose
tokenizer is a byte-level BPE trained here with ``tokenizers`` (merges, multi-character tokens,
the family's own special tokens and chat template), so ``breadcrumbs convert`` meets what it meets
on a real model. Weights are random with a raised ``initializer_range`` so logits depend strongly
on context. Head size is 32, one vLLM's CPU attention supports.

The Llama has an untied LM head and a vocabulary exactly as large as its tokenizer (convert must
grow both matrices); the Qwen3 ties its head and has one embedding row past its tokenizer, as
Qwen's releases carry padding rows (the beacon takes it, no resize). One row, not Qwen's hundred:
a random model would sample untrained padding rows, which a trained one never does.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content']"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
WORDS = ["what", "is", "the", "sum", "of", "and", "answer", "total", "apples", "each", "has",
         "step", "so", "then", "we", "add", "times", "minus", "equals", "how", "many"]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Arithmetic word problems and their working: the text the BPE merges are learned from."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 9)))
        lines.append(f"{words} {a} + {b}? {a} + {b} = {a + b}. Answer: {a + b}\n")
    return lines


def train_bpe(specials: list[str], vocab_size: int = 384) -> Tokenizer:
    """A byte-level BPE (GPT-2 / Llama-3 / Qwen style) with ``specials`` first."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(corpus(), trainer)
    return core


def _save(model, tokenizer: PreTrainedTokenizerFast, eos: list[int], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    GenerationConfig(eos_token_id=eos, bos_token_id=tokenizer.bos_token_id).save_pretrained(str(out))
    return out


def make_llama(out: Path, seed: int = 0, init_std: float = 0.3) -> Path:
    """A 2-layer Llama (GQA, untied head, vocabulary = tokenizer size) saved as an HF folder."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(LLAMA_SPECIALS), bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>", chat_template=LLAMA_TEMPLATE, clean_up_tokenization_spaces=False)
    ids = tokenizer.convert_tokens_to_ids
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=[ids("<|end_of_text|>"), ids("<|eot_id|>")], initializer_range=init_std)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return _save(model, tokenizer, [ids("<|end_of_text|>"), ids("<|eot_id|>")], out)


def make_qwen3(out: Path, seed: int = 0, init_std: float = 0.3) -> Path:
    """A 2-layer Qwen3 (q/k norm, tied head, one padding row) saved as an HF folder."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(QWEN_SPECIALS), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", chat_template=QWEN_TEMPLATE, clean_up_tokenization_spaces=False)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3Config(
        vocab_size=len(tokenizer) + 1, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
        initializer_range=init_std)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    return _save(model, tokenizer, [ids("<|im_end|>"), ids("<|endoftext|>")], out)


MAKERS = {"llama": make_llama, "qwen3": make_qwen3}


def converted(kind: str, root: Path, ratios: list[int] | None = None) -> tuple[Path, Path]:
    """``(original, converted)`` folders of a tiny model made by ``breadcrumbs convert``."""
    from breadcrumbs_vllm.cli import main

    original = MAKERS[kind](root / kind)
    out = root / f"{kind}-beacon"
    ratio_text = ",".join(map(str, ratios or [2, 4, 8, 16]))
    assert main(["convert", "--model", str(original), "--ratios", ratio_text, "--out", str(out)]) == 0
    return original, out
