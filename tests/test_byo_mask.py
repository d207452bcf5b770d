"""Rule 6 on the architectures users bring: on converted tiny Llama and Qwen3 models, the masked
training forward pass equals the reference engine's incremental decoding with real eviction, and
the reference engine runs each model's own transformers class."""

from __future__ import annotations

import pytest
import torch
from byo_models import converted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mask import PATHS, assert_masked_forward_equals_decoding
from transformers import LlamaForCausalLM, Qwen3ForCausalLM

from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine

KINDS = {"llama": LlamaForCausalLM, "qwen3": Qwen3ForCausalLM}


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, ReferenceEngine]:
    root = tmp_path_factory.mktemp("byo")
    return {kind: ReferenceEngine.from_checkpoint(converted(kind, root)[1]) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_reference_engine_runs_the_models_own_class(engines, kind) -> None:
    engine = engines[kind]
    assert type(engine.model) is KINDS[kind]
    # Compression changes what a random model decodes: the beacons really are in its cache.
    prompt = engine.tokenizer("what is the sum of 12 and 30?").input_ids
    plain, compressed = engine.generate([GenerationRequest(prompt, ratio=r, max_tokens=40,
                                                           ignore_eos=True) for r in (None, 2)])
    assert plain.token_ids != compressed.token_ids
    assert compressed.peak_kv_entries < plain.peak_kv_entries


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(KINDS)),
    cases=st.lists(
        st.tuples(st.integers(1, 13), PATHS, st.integers(1, 40), st.integers(0, 10_000)),
        min_size=1, max_size=4,
    ),
    sampled=st.booleans(),
)
def test_masked_forward_equals_real_eviction(engines, kind, cases, sampled) -> None:
    engine = engines[kind]
    with torch.no_grad():
        assert_masked_forward_equals_decoding(engine.model, engine.tokenizer, engine.bc, cases,
                                              sampled)
