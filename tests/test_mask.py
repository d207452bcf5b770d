"""Rule 6: the masked training forward pass equals incremental decoding with real eviction, at
fixed ratios and along ratio paths that rise at random window boundaries (rule 8)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ratio_paths import ratio_and_switches, ratio_paths

from breadcrumbs_vllm.checkpoint import init_model
from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.spec import RatioPath
from breadcrumbs_vllm.tokenizer import pad_token_id
from breadcrumbs_vllm.training.mask import beacon_mask, build_beacon_batch, pack

FIXED = st.sampled_from([(), ((0, 2),), ((0, 3),), ((0, 4),), ((0, 8),)])
SWITCHING = ratio_paths(max_ratio=4, min_switches=1, max_switches=2, max_windows=3)
#: Ratio paths of the decoded cases: uncompressed, fixed, or rising at window boundaries.
PATHS = st.one_of(FIXED, SWITCHING)


def _models():
    """Random tiny models of two shapes (GQA included), built once."""
    models = []
    for seed, (layers, hidden, heads, kv_heads) in enumerate([(2, 64, 2, 2), (3, 64, 2, 1)]):
        model, tok, bc = init_model(layers, hidden, heads=heads, kv_heads=kv_heads,
                                    init_std=0.2, seed=seed)
        model.config._attn_implementation = "eager"
        models.append((model, tok, bc))
    return models


MODELS = _models()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_idx=st.integers(0, len(MODELS) - 1),
    cases=st.lists(
        st.tuples(st.integers(1, 13), PATHS, st.integers(1, 40), st.integers(0, 10_000)),
        min_size=1, max_size=5,
    ),
    sampled=st.booleans(),
)
def test_masked_forward_equals_incremental_decoding(model_idx, cases, sampled):
    assert_masked_forward_equals_decoding(*MODELS[model_idx], cases, sampled)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_idx=st.integers(0, len(MODELS) - 1),
    cases=st.lists(
        st.tuples(st.integers(1, 13), SWITCHING, st.integers(10, 60), st.integers(0, 10_000)),
        min_size=1, max_size=4,
    ),
    sampled=st.booleans(),
)
def test_masked_forward_equals_decoding_whose_ratio_rises(model_idx, cases, sampled):
    """Every case switches at least once; most decode past their first switch."""
    assert_masked_forward_equals_decoding(*MODELS[model_idx], cases, sampled)


def assert_masked_forward_equals_decoding(model, tokenizer, bc, cases, sampled) -> None:
    """Decode ``cases`` (prompt length, ratio path, tokens, seed) with real eviction, then check
    that one masked forward pass over the results gives the same logits, sequence by sequence."""
    engine = ReferenceEngine(model, tokenizer, bc)
    requests = [_request(*case, sampled=sampled) for case in cases]
    results = engine.generate(requests)
    batch = build_beacon_batch(
        [r.prompt_ids for r in requests], [res.token_ids for res in results],
        [r.ratio for r in requests], bc.beacon_token_id, pad_token_id(tokenizer),
        switches=[r.switches for r in requests],
    )
    with torch.no_grad():
        logits = batch.gather(model(**batch.model_inputs()).logits)
    for b, res in enumerate(results):  # sequences may share a row: each is checked on its own
        mine = batch.owner == b
        assert torch.equal(batch.targets[mine], torch.tensor(res.token_ids))
        diff = (logits[mine] - res.logits).abs().max().item()
        assert diff < 1e-4, f"masked forward differs from real eviction by {diff}"


def _request(prompt_len: int, path: RatioPath, max_tokens: int, seed: int,
             sampled: bool) -> GenerationRequest:
    ratio, switches = ratio_and_switches(path)
    prompt = torch.randint(10, 100, (prompt_len,), generator=torch.Generator().manual_seed(seed))
    return GenerationRequest(
        prompt_ids=[int(t) for t in prompt], ratio=ratio, switches=switches,
        max_tokens=max_tokens, ignore_eos=True, return_logits=True,
        temperature=1.0 if sampled else 0.0, seed=seed,
    )


def test_masked_forward_detects_a_wrong_mask(tiny_model):
    """The equivalence is not vacuous: letting tokens see evicted entries changes the logits."""
    model, tokenizer, bc = tiny_model
    res = ReferenceEngine(model, tokenizer, bc).generate(
        [GenerationRequest(prompt_ids=[20, 21, 22], ratio=2, max_tokens=12, ignore_eos=True,
                           return_logits=True)])[0]
    batch = build_beacon_batch([[20, 21, 22]], [res.token_ids], [2], bc.beacon_token_id, 0)
    causal = torch.zeros_like(batch.attention_mask)
    causal.masked_fill_(torch.ones_like(causal, dtype=torch.bool).triu(1),
                        torch.finfo(causal.dtype).min)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       attention_mask=causal).logits
    assert (batch.gather(logits) - res.logits).abs().max() > 1e-2


def test_beacon_mask_by_hand():
    """Prompt of 2, c=2, generated g1 g2 | b1 | g3: the visibility table from the spec."""
    kinds = torch.tensor([0, 0, 1, 1, 2, 1])
    windows = torch.tensor([0, 0, 1, 1, 1, 2])
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],  # p1
        [1, 1, 0, 0, 0, 0],  # p2
        [1, 1, 1, 0, 0, 0],  # g1 (window 1)
        [1, 1, 1, 1, 0, 0],  # g2
        [1, 1, 1, 1, 1, 0],  # b1 sees prompt, window 1, itself
        [1, 1, 0, 0, 1, 1],  # g3 (window 2) sees prompt, b1, itself
    ], dtype=torch.bool)
    assert torch.equal(beacon_mask(kinds, windows), expected)


def test_pack_is_first_fit_decreasing():
    assert pack([5, 3, 2, 4, 1], width=5) == [[0], [3, 4], [1, 2]]
    assert pack([2, 2], width=2) == [[0], [1]]


def test_packed_sequences_do_not_see_each_other():
    """Three sequences in two rows give each the logits it gets alone in a batch of one."""
    model, _, _ = MODELS[0]
    prompts, generations, ratios = ([[20, 21], [30], [40, 41, 42]],
                                    [list(range(50, 70)), [60, 61, 62], [70] * 5], [2, None, 4])
    batch = build_beacon_batch(prompts, generations, ratios, beacon_id=9, pad_id=0)
    assert batch.input_ids.shape[0] == 2  # the two short ones share a row
    with torch.no_grad():
        packed = batch.gather(model(**batch.model_inputs()).logits)
        for i, args in enumerate(zip(prompts, generations, ratios)):
            alone = build_beacon_batch(*([a] for a in args), beacon_id=9, pad_id=0)
            expected = alone.gather(model(**alone.model_inputs()).logits)
            assert (packed[batch.owner == i] - expected).abs().max() < 1e-5
