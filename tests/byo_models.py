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


#: The shape both models share: 2 layers, hidden 64, head size 32.
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 2, "head_dim": 32, "max_position_embeddings": 4096}


def make(kind: str, out: Path, seed: int = 0, init_std: float = 0.3) -> Path:
    """A random model of family ``kind`` (see :data:`FAMILIES`) saved as the folder a user
    would download: weights, tokenizer with its chat template, generation config with the
    family's stop ids."""
    family = FAMILIES[kind]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_bpe(family["specials"]),
                                        clean_up_tokenization_spaces=False, **family["tokens"])
    ids = tokenizer.convert_tokens_to_ids
    config = family["config"](
        **SHAPE, **family["shape"], vocab_size=len(tokenizer) + family["padding_rows"],
        initializer_range=init_std, eos_token_id=[ids(t) for t in family["stops"]],
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = family["model"](config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    GenerationConfig(eos_token_id=config.eos_token_id,
                     bos_token_id=tokenizer.bos_token_id).save_pretrained(str(out))
    return out


#: Llama: GQA, untied head, vocabulary = tokenizer size. Qwen3: q/k norm, tied head, one padding
#: row.
FAMILIES = {
    "llama": {"specials": LLAMA_SPECIALS, "config": LlamaConfig, "model": LlamaForCausalLM,
              "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                         "chat_template": LLAMA_TEMPLATE},
              "stops": ["<|end_of_text|>", "<|eot_id|>"], "padding_rows": 0,
              "shape": {"num_key_value_heads": 1, "tie_word_embeddings": False}},
    "qwen3": {"specials": QWEN_SPECIALS, "config": Qwen3Config, "model": Qwen3ForCausalLM,
              "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                         "chat_template": QWEN_TEMPLATE},
              "stops": ["<|im_end|>", "<|endoftext|>"], "padding_rows": 1,
              "shape": {"num_key_value_heads": 2, "tie_word_embeddings": True}},
}




def converted(kind: str, root: Path, ratios: list[int] | None = None) -> tuple[Path, Path]:
    """``(original, converted)`` folders of a tiny model made by ``breadcrumbs convert``."""
    from breadcrumbs_vllm.cli import main

    original = make(kind, root / kind)
    out = root / f"{kind}-beacon"
    ratio_text = ",".join(map(str, ratios or [2, 4, 8, 16]))
    assert main(["convert", "--model", str(original), "--ratios", ratio_text,
                 "--out", str(out)]) == 0
    return original, out
