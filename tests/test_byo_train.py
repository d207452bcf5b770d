"""The bring-your-own-model path end to end, as the issue's smoke run: convert a tiny Llama and a
tiny Qwen3, train their students 3 steps on a small JSONL with vLLM rollouts, check that the
loss falls and the checkpoint round-trips, then ``breadcrumbs generate --engine vllm`` on the
result equals the reference engine token for token at ratios none/4/8 (divergence allowed only
where the reference's top-2 margin < 1e-3). Plus: ``--joint``, ``--keep-correct``, a custom
entry-point verifier and LoRA on one architecture, and the rollout engine's weight sync."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch
from byo_models import converted

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from breadcrumbs_vllm.checkpoint import load_checkpoint, read_breadcrumbs_config
from breadcrumbs_vllm.cli import main
from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.training.config import TrainConfig

pytestmark = pytest.mark.vllm

COMMON = ["--ratios", "2,4,8", "--max-tokens", "64", "--distill-lr", "1e-2", "--warmup", "0",
          "--eval-n", "2", "--rollout-kv-gib", "0.25", "--threads", "2"]
#: Greedy rollouts of all six rows every step: the batch is the same each step (bar the ratios
#: drawn), so a falling KL is the student learning, not the batch changing.
SMOKE = ["--verifier", "exact", "--steps", "3", "--rl-problems", "6", "--group", "1",
         "--temperature", "0", *COMMON]


class EvenLength:
    """A custom verifier (``test_byo_train:EvenLength``): completions of even length are right,
    so rewards are mixed within groups and ``--keep-correct`` keeps some, drops others."""

    def verify(self, problem, completion: str) -> float:
        return float(len(completion) % 2 == 0)


def log_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "training_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    rows = [{"prompt": f"what is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in [(3, 4), (12, 30), (7, 8), (21, 5), (9, 9), (40, 2)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def student(request, tmp_path_factory, data_file) -> tuple[Path, Path]:
    _, teacher = converted(request.param, tmp_path_factory.mktemp(request.param))
    out = teacher.parent / "student"
    assert main(["train", "student", "--teacher", str(teacher), "--data", str(data_file),
                 "--out", str(out), *SMOKE]) == 0
    gc.collect()
    return teacher, out


def test_students_loss_falls_and_checkpoint_round_trips(student) -> None:
    teacher, out = student
    log = log_of(out)
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(0.0 <= row["reward"] <= 1.0 for row in log)
    assert log[-1]["kl"] < log[0]["kl"], [row["kl"] for row in log]
    config = TrainConfig.from_json((out / "training_config.json").read_text())
    assert (config.rollout_engine == "vllm" and config.sequential
            and config.data["verifier"] == "exact")
    bc = read_breadcrumbs_config(out)
    assert (bc.ratios == [2, 4, 8]
            and bc.beacon_token_id == read_breadcrumbs_config(teacher).beacon_token_id)
    model, tokenizer, _ = load_checkpoint(out)
    original, _, _ = load_checkpoint(teacher)
    assert type(model) is type(original)
    assert tokenizer.get_vocab() == load_checkpoint(teacher)[1].get_vocab()
    assert not torch.equal(model.get_input_embeddings().weight,
                           original.get_input_embeddings().weight)
    assert (out / "chat_template.jinja").read_text() == (
        teacher / "chat_template.jinja").read_text()
    assert main(["train", "student", "--out", str(out), "--resume"]) == 0  # finished: no step
    assert len(log_of(out)) == 3


@pytest.mark.parametrize("ratio", ["none", "4", "8"])
def test_generate_engine_vllm_equals_the_reference(student, ratio, capsys) -> None:
    _, out = student
    prompt = "what is 12 + 30?"
    assert main(["generate", "--model", str(out), "--ratio", ratio, "--max-tokens", "48",
                 "--greedy", "--json", "--chat", prompt, "--engine", "vllm"]) == 0
    got = json.loads(capsys.readouterr().out)
    gc.collect()
    engine = ReferenceEngine.from_checkpoint(out)
    prompt_ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
        return_dict=False)
    ref = engine.generate([GenerationRequest(prompt_ids,
                                             ratio=None if ratio == "none" else int(ratio),
                                             max_tokens=48)])[0]
    first = next((i for i, (a, b) in enumerate(zip(got["token_ids"], ref.token_ids)) if a != b),
                 None)
    if first is None:
        assert got["token_ids"] == ref.token_ids
        assert got["peak_kv_entries"] == ref.peak_kv_entries
    else:
        assert ref.top2_margins[first] < 1e-3, f"token {first} differs"


def test_joint_keep_correct_lora_and_entry_point_verifier(tmp_path, data_file) -> None:
    _, teacher = converted("llama", tmp_path)
    out = tmp_path / "lora-student"
    assert main(["train", "student", "--teacher", str(teacher), "--data", str(data_file),
                 "--out", str(out), *COMMON, "--verifier", "test_byo_train:EvenLength",
                 "--steps", "2", "--rl-problems", "2", "--group", "2", "--joint",
                 "--keep-correct", "--lora-rank", "2",
                 "--teacher-out", str(tmp_path / "co-teacher")]) == 0
    gc.collect()
    log = log_of(out)
    assert all(row["kept"] == round(row["reward"] * 4) for row in log)
    assert any("rl_loss" in row for row in log)  # mixed rewards: the teacher took GRPO steps
    before, _, bc = load_checkpoint(teacher)
    after, _, _ = load_checkpoint(out)  # LoRA is merged: a plain Llama folder
    co_teacher, _, _ = load_checkpoint(tmp_path / "co-teacher")
    emb, old = after.get_input_embeddings().weight, before.get_input_embeddings().weight
    changed = torch.nonzero((emb - old).abs().sum(1)).flatten().tolist()
    assert changed == [bc.beacon_token_id]  # of the embedding, only the beacon row trains
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(after.state_dict()[q], before.state_dict()[q])  # adapters merged
    assert not torch.equal(co_teacher.state_dict()[q], before.state_dict()[q])
    assert main(["train", "student", "--teacher", str(teacher), "--data", str(data_file),
                 "--out", str(tmp_path / "x"), "--joint", "--sequential"]) == 2


def test_rollout_engine_samples_the_weights_it_is_given(tmp_path) -> None:
    """After ``load_weights``, vLLM's greedy rollouts are the updated model's (the joint teacher
    and the on-policy student move every step)."""
    from breadcrumbs_vllm.training.rollouts import VllmSampler

    _, path = converted("qwen3", tmp_path)
    model, tokenizer, bc = load_checkpoint(path)
    sampler = VllmSampler(path, 256, 0.25, seed=0)
    prompt = tokenizer("what is the sum of 3 and 4?").input_ids
    before = sampler.sample([prompt], [None], 24, 0.0, 0)[0]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    sampler.load_weights(model)
    after = sampler.sample([prompt, prompt], [None, 4], 24, 0.0, 0)
    sampler.close()
    engine = ReferenceEngine(model, tokenizer, bc)
    ref = engine.generate([GenerationRequest(prompt, ratio=r, max_tokens=24, ignore_eos=False)
                           for r in (None, 4)])
    assert after[0] != before
    for got, res in zip(after, ref):
        first = next((i for i, (a, b) in enumerate(zip(got, res.token_ids)) if a != b), None)
        assert first is None or res.top2_margins[first] < 1e-3
        assert first is not None or got == res.token_ids
