"""The reference engine obeys the spec's rules 1-5 exactly: it is the oracle for all the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ratio_paths import ratio_and_switches, ratio_paths

from breadcrumbs_vllm.reference import (
    TOVA,
    GenerationRequest,
    ReferenceEngine,
    StreamingLLM,
    make_policy,
)
from breadcrumbs_vllm.spec import BeaconSchedule, RatioPath


@pytest.fixture(scope="module")
def engine(tiny_model):
    return ReferenceEngine(*tiny_model)


def _prompt(n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in torch.randint(10, 100, (n,),
                                          generator=torch.Generator().manual_seed(seed))]


#: Fixed ratios, then paths that rise (rule 8): at the first boundary, twice, late (t=9 of 37),
#: to a window longer than what is left, and three times by one.
RATIO_PATHS = [(None, ()), (2, ()), (3, ()), (8, ()), (2, ((2, 3),)), (2, ((4, 4), (12, 8))),
               (3, ((9, 16),)), (4, ((8, 40),)), (2, ((6, 3), (9, 4), (21, 5)))]


@pytest.mark.parametrize(("ratio", "switches"), RATIO_PATHS)
@pytest.mark.parametrize("prompt_len", [1, 5, 9])
def test_kv_accounting_follows_rule_5(engine, ratio, switches, prompt_len):
    assert_trace_follows_the_schedule(engine, prompt_len, ratio, switches, 37)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt_len=st.integers(1, 9), path=ratio_paths(max_switches=3), n=st.integers(1, 70))
def test_kv_accounting_follows_rule_8_at_random_switches(engine, prompt_len, path, n):
    assert_trace_follows_the_schedule(engine, prompt_len, *ratio_and_switches(path), n)


def assert_trace_follows_the_schedule(engine: ReferenceEngine, prompt_len: int, ratio: int | None,
                                      switches: RatioPath, n: int) -> None:
    """The KV trace, token by token, is the spec's formulas along the request's ratio path."""
    res = engine.generate([GenerationRequest(_prompt(prompt_len), ratio=ratio, switches=switches,
                                             max_tokens=n, ignore_eos=True)])[0]
    sched = BeaconSchedule(prompt_len, ratio, switches)
    fed = n - 1  # the last generated token is never fed
    assert len(res.token_ids) == n
    assert res.num_beacons == sched.num_beacons_fed(fed)
    # One KV measurement after the prefill and after every fed token or beacon.
    expected = [prompt_len] + [sched.kv_len_after_feeding(i)
                               for i in range(prompt_len, sched.logical_len(fed))]
    assert res.kv_trace == expected
    assert res.peak_kv_entries == sched.peak_kv_entries(fed)
    if ratio is not None:  # prompt, beacons, the longest window and the beacon closing it
        longest = max(c for _, c in sched.path)
        assert res.peak_kv_entries <= prompt_len + res.num_beacons + longest + 1


@pytest.mark.parametrize(("ratio", "switches"), [(2, ((4, 3),)), (3, ((6, 4), (14, 8)))])
def test_a_switch_changes_nothing_before_it_takes_effect(engine, ratio, switches):
    """Up to the window after the first switch, the path decodes what its first ratio decodes:
    the same tokens, the same trace; the first beacon the switch moves is where they part."""
    at = switches[0][0]
    fixed, rising = engine.generate([
        GenerationRequest(_prompt(5), ratio=ratio, switches=s, max_tokens=40, ignore_eos=True)
        for s in ((), switches)])
    same = at + ratio + 1  # token at + ratio + 1 is sampled before either feeds a beacon there
    assert rising.token_ids[:same] == fixed.token_ids[:same]
    shared = BeaconSchedule(5, ratio).logical_len(at + ratio) - 5 + 1  # prefill + fed so far
    assert rising.kv_trace[:shared] == fixed.kv_trace[:shared]
    assert rising.num_beacons < fixed.num_beacons


def test_batch_mixing_ratios_equals_one_by_one(engine):
    requests = [GenerationRequest(_prompt(p, p), ratio=r, switches=s, max_tokens=50,
                                  ignore_eos=True)
                for p, r, s in [(3, None, ()), (7, 2, ()), (4, 4, ()), (11, 16, ()),
                                (6, 2, ((4, 3), (10, 8)))]]
    together = engine.generate(requests)
    for request, res in zip(requests, together):
        assert engine.generate([request])[0].token_ids == res.token_ids


def test_compression_changes_the_output(engine):
    """Eviction is real: the same prompt decodes differently with and without beacons."""
    plain, compressed = engine.generate([
        GenerationRequest(_prompt(6), ratio=None, max_tokens=40, ignore_eos=True),
        GenerationRequest(_prompt(6), ratio=2, max_tokens=40, ignore_eos=True),
    ])
    assert plain.token_ids != compressed.token_ids


def test_beacon_never_returned(engine):
    """Beacons are fed (num_beacons > 0) but are not outputs: 60 tokens out for max_tokens=60."""
    res = engine.generate([GenerationRequest(_prompt(5), ratio=2, max_tokens=60, ignore_eos=True,
                                             temperature=1.0, seed=3)])[0]
    assert res.num_beacons > 0
    assert len(res.token_ids) == 60


def test_stop_token_ends_generation_without_beacon(engine):
    """Rule 4: stop conditions work as without compression; the stop token is the last output."""
    base = engine.generate([GenerationRequest(_prompt(4), ratio=4, max_tokens=30,
                                              ignore_eos=True)])[0]
    stop_at = base.token_ids[9]
    first = base.token_ids.index(stop_at)
    res = engine.generate([GenerationRequest(_prompt(4), ratio=4, max_tokens=30,
                                             stop_token_ids=[stop_at])])[0]
    assert res.finish_reason == "stop"
    assert res.token_ids == base.token_ids[: first + 1]
    assert res.num_beacons == BeaconSchedule(4, 4).num_beacons_fed(first)


def test_max_tokens_counts_generated_tokens_only(engine):
    res = engine.generate([GenerationRequest(_prompt(4), ratio=2, max_tokens=7,
                                             ignore_eos=True)])[0]
    assert len(res.token_ids) == 7 and res.finish_reason == "length" and res.num_beacons == 2


def test_sampling_is_seeded(engine):
    req = lambda seed: GenerationRequest(_prompt(4), ratio=4, max_tokens=30, ignore_eos=True,
                                         temperature=1.0, top_p=0.9, seed=seed)
    a, b, c = engine.generate([req(1), req(1), req(2)])
    assert a.token_ids == b.token_ids != c.token_ids


@pytest.mark.parametrize("policy_cls", [StreamingLLM, TOVA])
def test_baselines_hold_the_budget_and_keep_the_prompt(engine, policy_cls):
    budget = 12
    res = engine.generate([GenerationRequest(_prompt(8), max_tokens=40, ignore_eos=True,
                                             policy=policy_cls(budget))])[0]
    # Measured right after each forward: one new entry, then eviction back to the budget.
    assert res.peak_kv_entries == budget + 1
    assert res.kv_trace[-10:] == [budget + 1] * 10
    # Below the prompt length, a budget keeps the prompt (rule 1 holds for baselines too).
    res = engine.generate([GenerationRequest(_prompt(8), max_tokens=10, ignore_eos=True,
                                             policy=policy_cls(3))])[0]
    assert res.kv_trace == [8] + [9] * 9


def test_streaming_keeps_the_most_recent_entries():
    evicted = StreamingLLM(budget=6).select(kv_len=9, prompt_len=2, attention=None)
    assert evicted.tolist() == [2, 3, 4]


def test_tova_evicts_the_least_attended_generated_entry():
    attention = torch.tensor([[0.5, 0.2, 0.01, 0.09, 0.2], [0.3, 0.3, 0.05, 0.05, 0.3]])
    assert TOVA(budget=4).select(kv_len=5, prompt_len=1, attention=attention).tolist() == [2]


def test_bad_requests_fail_clearly(engine):
    with pytest.raises(ValueError, match="ratio"):
        engine.generate([GenerationRequest([5, 6], ratio=1)])
    with pytest.raises(ValueError, match="window boundary"):
        engine.generate([GenerationRequest([5, 6], ratio=4, switches=((6, 8),))])
    with pytest.raises(ValueError, match="either"):
        engine.generate([GenerationRequest([5, 6], ratio=4, policy=StreamingLLM(8))])
    with pytest.raises(ValueError, match="unknown baseline"):
        make_policy("quest", 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_engine_on_a_gpu_decodes_what_it_decodes_on_the_cpu():
    """The engine follows its model's device (cache, inputs); sampling and baseline policies stay
    on the CPU, so seeded draws match too. Compared on the bundled LinSys teacher, float32:
    uncompressed, a ratio, three baselines, a KV budget and seeded sampling, token for token up
    to the first step the CPU's top-2 margin is below 1e-3 (a near tie the GPU's kernels may
    break the other way). Run on an H200: all 22 requests equal to the end."""
    from breadcrumbs_vllm.checkpoint import load_checkpoint
    from breadcrumbs_vllm.evaluation.runner import chat_prompt_ids
    from breadcrumbs_vllm.tasks import get_task

    def generate(device: str):
        teacher = Path(__file__).resolve().parents[1] / "models/linsys-teacher"
        model, tokenizer, bc = load_checkpoint(teacher, attn_implementation="eager")
        engine = ReferenceEngine(model.to(device), tokenizer, bc)
        task = get_task("linsys", coef_max=3, value_max=5, show_work=3)
        prompts = [chat_prompt_ids(engine, p) for p in task.problems(6, 777)]
        return engine.generate(
            [GenerationRequest(p, max_tokens=640) for p in prompts]
            + [GenerationRequest(p, ratio=4, max_tokens=640) for p in prompts]
            + [GenerationRequest(p, policy=make_policy(name, 200), max_tokens=640)
               for p in prompts[:2] for name in ("snapkv", "rkv", "h2o")]
            + [GenerationRequest(p, max_tokens=640, kv_budget=300) for p in prompts[:2]]
            + [GenerationRequest(p, max_tokens=200, temperature=0.7, seed=3) for p in prompts[:2]])

    for cpu, gpu in zip(generate("cpu"), generate("cuda"), strict=True):
        ties = [i for i, m in enumerate(cpu.top2_margins) if m < 1e-3]
        end = ties[0] + 1 if ties else None
        assert gpu.token_ids[:end] == cpu.token_ids[:end]
