"""A character-level tokenizer built with ``tokenizers``, saved as ``tokenizer.json``.

Why character level: the reasoning tasks are arithmetic and graph traces over a tiny alphabet, a
tiny model learns them faster without merges, and every generated character is one token, which
makes "KV entries" easy to reason about. The special tokens follow Qwen's chat format so that
vLLM's chat template handling works unchanged.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BEACON = "<beacon>"
UNK = "<|unk|>"
SPECIAL_TOKENS = [PAD, EOS, IM_START, IM_END, BEACON, UNK]

# Every printable ASCII character except the vertical whitespace we do not need.
ALPHABET = [ch for ch in string.printable if ch not in "\r\x0b\x0c\t"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the project tokenizer: special tokens first (stable ids), then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in ALPHABET:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=IM_END,
        unk_token=UNK,
        additional_special_tokens=[EOS, IM_START, BEACON],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 16,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the chat template lives there)."""
    tokenizer.save_pretrained(str(out_dir))


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    """Load the tokenizer of a checkpoint folder exactly as vLLM does (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
