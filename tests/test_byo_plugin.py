"""vLLM with the breadcrumbs plugin equals the reference engine on converted Llama and Qwen3.

The bundled-model test's probe and comparison (``tests/test_plugin_engine.py``) run unchanged on
tiny random models made by ``breadcrumbs convert``: greedy tokens equal the reference's under the
top-2-margin rule, ratios 2/4/8/16/none mixed in one batch, a KV pool small enough to preempt,
the rule-5 block bound checked at every scheduler step. Eager mode only: the compiled path is the
same plugin code, and compiling each new architecture would double this module's CI time.
"""

from __future__ import annotations

import gc

import pytest
from byo_models import converted
from test_plugin_engine import RATIOS, EngineProbe, _assert_same, _prompts

from breadcrumbs_vllm.reference import ReferenceEngine

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def pair(request, tmp_path_factory):
    _, path = converted(request.param, tmp_path_factory.mktemp(request.param))
    probe = EngineProbe(path, 32, eager=True)
    yield probe, ReferenceEngine.from_checkpoint(path)
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def test_mixed_ratios_with_preemption_equal_the_reference(pair) -> None:
    engine, reference = pair
    prompts, ratios = _prompts(10, seed=5), RATIOS * 2
    got = engine.generate(prompts, ratios)
    assert engine.preemptions > 0, "the pool is meant to force preemption"
    _assert_same(reference, prompts, ratios, got)
    assert not engine.violations
    assert engine.max_blocks_saved > 0
