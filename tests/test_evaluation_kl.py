"""The held-out KL: zero for a model against itself uncompressed, positive once beacons evict."""

from __future__ import annotations

from breadcrumbs_vllm.evaluation.kl import held_out_kl
from breadcrumbs_vllm.reference import ReferenceEngine
from breadcrumbs_vllm.tasks import get_task


def test_kl_is_zero_against_itself_and_grows_under_compression(tiny_model) -> None:
    engine = ReferenceEngine(*tiny_model)
    problems = get_task("countdown").problems(4, seed=0)
    kl = held_out_kl(engine, engine, problems, [None, 2], max_tokens=24, batch_size=3)
    assert abs(kl["none"]) < 1e-5
    assert kl[2] > 1e-3  # the random tiny model has never seen a beacon
