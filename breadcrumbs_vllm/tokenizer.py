"""A character-level tokenizer built with ``tokenizers``, saved as ``tokenizer.json``.

Why character level: the reasoning tasks are arithmetic and graph traces over a tiny alphabet, a
tiny model learns them faster without merges, and every generated character is one token, which
makes "KV entries" easy to reason about. The special tokens follow Qwen's chat format so that
vLLM's chat template handling works unchanged.

Why byte-level symbols (space stored as ``Ġ``, newline as ``Ċ``): transformers 5 loads the
tokenizer of any ``model_type: qwen2`` checkpoint as ``Qwen2Tokenizer``, whatever
``tokenizer_config.json`` says, and that class rebuilds the pipeline around the vocabulary --
NFC, Qwen's split regex, a byte-level pre-tokenizer and decoder, unknown characters dropped.
vLLM and the gateway load tokenizers that way (``AutoTokenizer``). So the tokenizer is built with
exactly that pipeline: with no merges, one character is one token on every path, and
:func:`build_tokenizer` and :func:`load_tokenizer` agree on every string (a test holds them to it).
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

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


#: Qwen2's pre-tokenizer split (transformers' ``PRETOKENIZE_REGEX``); with no merges it cannot
#: change which tokens a string becomes, but keeping it makes the pipeline identical.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the project tokenizer: special tokens first (stable ids), then one id per character."""
    byte_symbol = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in ALPHABET:
        vocab[byte_symbol[ord(ch)]] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
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


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills unused batch slots: the pad token, else end of sequence, else 0.

    Llama tokenizers have no pad token. The training mask hides padding from every real token
    (and the losses never read a padding position), so any id serves.
    """
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0
