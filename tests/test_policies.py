"""Each eviction baseline on a hand-built cache: kept sets worked out by hand from its docstring.

A :class:`Cache` stands in for the engine: it tracks which original entries are still cached and
feeds each policy one attention row per step, exactly as the engine calls :meth:`select` (once
per layer after every forward, evicting what it returns).
"""

from __future__ import annotations

import pytest
import torch

from breadcrumbs_vllm.reference import (
    H2O,
    POLICIES,
    RKV,
    GenerationRequest,
    RandomEviction,
    ReferenceEngine,
    SnapKV,
    StreamingLLMSinks,
    make_policy,
)


class Cache:
    """The original ids of one layer's cached entries, evicted as the policy says."""

    def __init__(self, policy, prompt_len: int, layer: int = 0) -> None:
        self.policy, self.prompt_len, self.layer = policy, prompt_len, layer
        self.ids = list(range(prompt_len))

    def step(self, attention: list[float] | list[list[float]],
             keys: torch.Tensor | None = None) -> list[int]:
        """Append one entry, let the policy evict; returns the evicted original ids."""
        self.ids.append(max(self.ids) + 1)
        weights = torch.tensor(attention)
        if weights.dim() == 1:
            weights = weights[None]
        assert weights.shape[1] == len(self.ids)
        evict = self.policy.select(len(self.ids), self.prompt_len, weights, layer=self.layer,
                                   keys=keys).tolist()
        gone = [self.ids[i] for i in evict]
        self.ids = [t for i, t in enumerate(self.ids) if i not in evict]
        return gone


def test_streaming_sinks_keeps_four_sinks_and_may_evict_the_prompt():
    # budget 6, prompt 5, 9 cached: entries 0-3 are sinks, the newest 2 stay; 4, 5, 6 go.
    evicted = StreamingLLMSinks(budget=6).select(kv_len=9, prompt_len=5, attention=None)
    assert evicted.tolist() == [4, 5, 6]
    # The whole-prompt variant never touches the prompt: 5, 6 go instead (budget 7).
    assert make_policy("streaming", 7).select(kv_len=9, prompt_len=5,
                                              attention=None).tolist() == [5, 6]


def test_h2o_evicts_the_least_accumulated_outside_its_recent_window():
    # Prompt 1, budget 4: room 3, recent window 3 // 2 = 1, so one heavy-hitter slot fewer.
    # Two heads whose mean is the row written below (head 0 twice it, head 1 zero).
    cache = Cache(H2O(budget=4), prompt_len=1)
    rows = [[0.5, 0.5], [0.4, 0.1, 0.5], [0.1, 0.1, 0.6, 0.2]]
    for row in rows:
        assert cache.step([[2 * w for w in row], [0.0] * len(row)]) == []
    # Sums: e0 1.2, e1 0.8, e2 1.2, e3 0.3, e4 0.5; e4 is the recent window; e3 goes.
    # (TOVA on the last row alone would drop e1: 0.1 ties with e2 and e3, the older goes.)
    assert cache.step([[0.4, 0.2, 0.2, 0.2, 1.0], [0.0] * 5]) == [3]
    # Sums now e0 1.3, e1 0.9, e2 1.3, e4 1.1, e5 0.1 (recent): e1 goes.
    assert cache.step([[0.2, 0.2, 0.2, 1.2, 0.2], [0.0] * 5]) == [1]
    assert cache.ids == [0, 2, 4, 5]


def test_h2o_keeps_one_history_per_layer():
    policy = H2O(budget=4)
    first, second = Cache(policy, 1, layer=0), Cache(policy, 1, layer=1)
    for row, other in (([0.5, 0.5], [0.5, 0.5]), ([0.4, 0.1, 0.5], [0.1, 0.8, 0.1]),
                       ([0.1, 0.1, 0.6, 0.2], [0.1, 0.1, 0.1, 0.7])):
        first.step(row)
        second.step(other)
    # Layer 1's sums: e1 1.6, e2 0.4, e3 0.9 (e4 recent): e2 goes; layer 0 still drops e3.
    assert second.step([0.2] * 5) == [2]
    assert first.step([0.2, 0.1, 0.1, 0.1, 0.5]) == [3]


class SmallSnapKV(SnapKV):
    window = 2
    kernel = 3


def test_snapkv_scores_by_pooled_window_attention_and_keeps_the_window():
    # Prompt 1, budget 5: the newest 2 entries (the observation window) always stay.
    cache = Cache(SmallSnapKV(budget=5), prompt_len=1)
    for row in ([0.5, 0.5], [0.2, 0.3, 0.5], [0.1, 0.1, 0.1, 0.7], [0.1, 0.6, 0.1, 0.1, 0.1]):
        assert cache.step(row) == []
    # Window sum over the last 2 queries: [.2, .65, .15, .4, .3, .3]; max-pooled (3), the
    # candidates e1..e3 score .65, .65, .4: e3 goes. Unpooled it would be e2 (.15); the newest
    # query alone, pooled, e1.
    assert cache.step([0.1, 0.05, 0.05, 0.3, 0.2, 0.3]) == [3]
    # Cache e0 e1 e2 e4 e5 e6; window sum [.2, .15, .15, .3, .4, .5], pooled candidates
    # (e1, e2, e4) .2, .3, .4: e1 goes.
    assert cache.step([0.1, 0.1, 0.1, 0.1, 0.1, 0.5]) == [1]
    assert cache.ids == [0, 2, 4, 5, 6]


class SmallRKV(RKV):
    window = 1
    kernel = 1  # pooling is the identity, so importance is the newest query's row


def _rkv_cache(keys: torch.Tensor, last_row: list[float]) -> list[int]:
    """Prompt 1, budget 4: candidates e1..e3 once 5 entries are cached (e4 is the window)."""
    cache = Cache(SmallRKV(budget=4), prompt_len=1)
    for n in (2, 3, 4):
        assert cache.step([1.0 / n] * n, keys[:, :n]) == []
    return cache.step(last_row, keys)


def test_rkv_drops_the_older_of_two_redundant_keys():
    # e1 is orthogonal to the others; e2 and e3 point the same way (cosine 1, norms differ).
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]]])
    # Equal importance: redundancy decides, e2 and e3 tie (mean cosine 0.5 vs e1's 0): e2 goes.
    # Importance alone (SnapKV) would drop the oldest candidate, e1.
    assert _rkv_cache(keys, [0.2] * 5) == [2]


def test_rkv_falls_back_to_importance_among_distinct_keys():
    keys = torch.eye(5)[None, :, :]  # every key orthogonal to every other: no redundancy
    assert _rkv_cache(keys, [0.2, 0.3, 0.1, 0.4, 0.0]) == [2]  # the least attended


def test_random_eviction_is_seeded_uniform_and_spares_the_prompt():
    """Same seed, same draws; another seed, other draws; over many draws every generated entry
    goes about equally often (uniform) and no prompt entry ever goes."""
    def draws(seed: int, times: int) -> list[list[int]]:
        policy = RandomEviction(budget=12, seed=seed)
        return [policy.select(20, 6, None).tolist() for _ in range(times)]

    assert draws(0, 3) == draws(0, 3) != draws(1, 3)
    counts = torch.zeros(20)
    for evict in draws(7, 2000):
        assert len(evict) == 8 and evict == sorted(set(evict)) and min(evict) >= 6
        counts[evict] += 1
    generated = counts[6:] / 2000  # each of 14 generated entries goes with probability 8/14
    assert counts[:6].sum() == 0
    assert (generated - 8 / 14).abs().max() < 0.05


def test_every_policy_is_registered_by_name():
    assert set(POLICIES) == {"streaming", "streaming-sinks", "tova", "h2o", "snapkv", "rkv",
                             "random"}
    with pytest.raises(ValueError, match="unknown baseline"):
        make_policy("quest", 8)


@pytest.fixture(scope="module")
def engine(tiny_model):
    return ReferenceEngine(*tiny_model)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_each_policy_holds_its_budget_in_the_engine(engine, name):
    """Real attention and keys from the tiny model: the budget holds for 40 steps (peak is the
    budget plus the newest entry), and a policy that protects the prompt never goes below it."""
    prompt = [int(t) for t in torch.randint(10, 100, (8,),
                                            generator=torch.Generator().manual_seed(0))]
    res = engine.generate([GenerationRequest(prompt, max_tokens=40, ignore_eos=True,
                                             policy=make_policy(name, 12))])[0]
    assert len(res.token_ids) == 40
    assert res.peak_kv_entries == 13 and res.kv_trace[-10:] == [13] * 10
    res = engine.generate([GenerationRequest(prompt, max_tokens=10, ignore_eos=True,
                                             policy=make_policy(name, 3))])[0]
    # Below the protected prefix the budget keeps it: the prompt (8), or the 4 sinks.
    kept = 4 if name == "streaming-sinks" else 8
    assert res.kv_trace == [8, 9] + [kept + 1] * 8
