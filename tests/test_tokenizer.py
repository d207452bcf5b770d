"""The tokenizer a checkpoint is trained with is the one vLLM and the gateway load from it.

transformers 5 loads every ``model_type: qwen2`` checkpoint's tokenizer as ``Qwen2Tokenizer``
(byte-level pipeline), whatever ``tokenizer_config.json`` names; an earlier char tokenizer lost
every space that way. These tests hold ``build_tokenizer`` and ``load_tokenizer`` to the same ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breadcrumbs_vllm.tasks import get_task
from breadcrumbs_vllm.tokenizer import ALPHABET, BEACON, build_tokenizer, load_tokenizer

BUNDLED = sorted(p for p in (Path(__file__).parent.parent / "models").iterdir()
                 if (p / "tokenizer.json").exists())
BUILT = build_tokenizer()


@pytest.fixture(scope="module", params=["init-model", *BUNDLED], ids=str)
def loaded(request, tiny_checkpoint):
    """The tokenizer as vLLM loads it: of a fresh ``init-model`` checkpoint, or a bundled one."""
    return load_tokenizer(tiny_checkpoint if request.param == "init-model" else request.param)


def test_one_character_is_one_token_with_stable_ids():
    ids = BUILT("Use 19 9\n").input_ids
    assert len(ids) == 9 and len(set(ids)) == 7  # U s e " " 1 9 \n
    assert BUILT.decode(ids) == "Use 19 9\n"
    assert len(BUILT) == 6 + len(ALPHABET)
    assert BUILT.convert_tokens_to_ids(BEACON) == 4


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(ALPHABET + ["é", "\t", "∑"]), max_size=80))
def test_loaded_tokenizer_equals_the_built_one(loaded, text):
    assert loaded(text).input_ids == BUILT(text).input_ids
    assert loaded.decode(BUILT(text).input_ids) == BUILT.decode(BUILT(text).input_ids)


def test_task_traces_round_trip_through_the_loaded_tokenizer(loaded):
    task = get_task("countdown")
    for problem in task.problems(5, seed=3):
        trace = task.solve(problem)
        assert loaded.decode(loaded(trace).input_ids) == trace
