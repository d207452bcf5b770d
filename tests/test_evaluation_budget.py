"""The fixed-budget evaluation: the engine's budget stop, AUAC, and ``breadcrumbs eval --budgets``
on a tiny random model (seconds: nothing here trains or needs a trained model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_run import breadcrumbs

from breadcrumbs_vllm.evaluation.auac import auac
from breadcrumbs_vllm.evaluation.report import against_teacher, auac_by_method
from breadcrumbs_vllm.evaluation.runner import EvalRow, Evaluator
from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.tasks import get_task


def test_auac_is_the_mean_accuracy_over_the_budget_range():
    # Trapezoids: 100 * (0.2 + 0.6) / 2 + 200 * 0.6 = 160 over a range of 300.
    assert auac([(400, 0.6), (100, 0.2), (200, 0.6)]) == pytest.approx(160 / 300)
    assert auac([(128, 0.7), (512, 0.7)]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="two or more"):
        auac([(128, 0.5)])
    with pytest.raises(ValueError, match="one budget"):
        auac([(128, 0.5), (128, 0.6), (256, 0.7)])


def _row(setting: str, budget: int, accuracy: float) -> EvalRow:
    return EvalRow(setting, None, None, accuracy, 0.0, 0.0, 0.0, 0, 10, kv_budget=budget)


def test_report_compares_each_ratio_with_the_teacher_at_equal_budget():
    rows = [_row("teacher", 100, 0.2), _row("c=8", 100, 0.5), _row("h2o", 100, 0.1),
            _row("teacher", 200, 0.4), _row("c=8", 200, 0.4), _row("h2o", 200, 0.3),
            _row("teacher", 300, 0.8), _row("c=8", 300, 0.6), _row("h2o", 300, 0.3)]
    assert auac_by_method(rows) == pytest.approx({"teacher": 0.45, "c=8": 0.475, "h2o": 0.25})
    assert against_teacher(rows) == [
        ("c=8 against its teacher at equal B: beats it at B=100; ties it at B=200; "
         "trails it at B=300")]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return ReferenceEngine(*tiny_model)


def _prompt(n: int) -> list[int]:
    return [int(t) for t in torch.randint(10, 100, (n,),
                                          generator=torch.Generator().manual_seed(n))]


@pytest.mark.parametrize("ratio", [None, 2, 4])
def test_budget_stop_truncates_the_unbounded_run_where_the_cache_would_overflow(engine, ratio):
    budget, prompt = 20, _prompt(6)
    free = engine.generate([GenerationRequest(prompt, ratio=ratio, max_tokens=120,
                                              ignore_eos=True)])[0]
    res = engine.generate([GenerationRequest(prompt, ratio=ratio, max_tokens=120, ignore_eos=True,
                                             kv_budget=budget)])[0]
    assert res.finish_reason == "budget"
    assert res.token_ids == free.token_ids[:len(res.token_ids)]
    assert res.kv_trace == free.kv_trace[:len(res.kv_trace)]
    assert res.peak_kv_entries <= budget < free.kv_trace[len(res.kv_trace)]  # the next forward
    if ratio is None:  # one entry per fed token; the last token sampled is never fed
        assert res.peak_kv_entries == budget and len(res.token_ids) == budget - len(prompt) + 1
    else:  # compressed, the same memory holds a longer generation
        assert len(res.token_ids) > budget - len(prompt) + 1


def test_a_prompt_over_the_budget_is_refused(engine):
    with pytest.raises(ValueError, match="does not fit the KV budget"):
        engine.generate([GenerationRequest(_prompt(6), kv_budget=5)])


def test_fixed_budget_mode_gives_every_method_the_same_budget(tiny_checkpoint):
    student = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    teacher = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    task = get_task("countdown")
    problems = task.problems(2, 0)
    evaluator = Evaluator(student, task, max_tokens=60, progress=False, baseline_engine=teacher)
    longest = max(len(teacher.tokenizer.apply_chat_template(
        [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=True,
        return_dict=False)) for p in problems)
    budgets = [longest + 8, longest + 16]
    rows = evaluator.run_fixed_budget(problems, budgets, [4], ["h2o", "streaming-sinks"])
    assert [(r.setting, r.kv_budget) for r in rows] == [
        (name, b) for b in budgets for name in ("teacher", "c=4", "h2o", "streaming-sinks")]
    for r in rows:
        assert r.max_peak_kv_entries <= r.kv_budget
        if r.setting == "teacher":  # a random model never stops early: full at B
            assert r.finish_reasons == {"budget": 2} and r.max_peak_kv_entries == r.kv_budget
        elif r.setting in ("h2o", "streaming-sinks"):  # cache size B: never stopped, 60 tokens
            assert r.finish_reasons == {"length": 2} and r.max_peak_kv_entries == r.kv_budget
            assert r.budget == r.kv_budget
    by = {(r.setting, r.kv_budget): r for r in rows}
    for b in budgets:
        assert by[("c=4", b)].mean_generated_tokens > by[("teacher", b)].mean_generated_tokens
    with pytest.raises(ValueError, match="longest prompt"):
        evaluator.run_fixed_budget(problems, [longest], [4], [])


def test_eval_budgets_writes_table_json_and_plot(tiny_checkpoint, tmp_path: Path):
    out = tmp_path / "budget.json"
    proc = breadcrumbs("eval", "--model", str(tiny_checkpoint), "--task", "countdown", "--n", "2",
                       "--max-tokens", "30", "--ratios", "none,4", "--baselines", "tova,snapkv",
                       "--budgets", "110,100", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["budgets"] == [100, 110]
    assert set(doc["auac"]) == {"teacher", "c=4", "tova", "snapkv"}  # 'none' is ignored
    for name, area in doc["auac"].items():
        accuracies = [r["accuracy"] for r in doc["rows"] if r["setting"] == name]
        assert area == pytest.approx(sum(accuracies) / 2)  # two budgets: the mean of the two
    assert len(doc["rows"]) == 8 and all(r["kv_budget"] in (100, 110) for r in doc["rows"])
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "AUAC" in proc.stdout and "c=4 against its teacher" in proc.stdout

    # A sweep split into one command per budget joins back into the same document.
    for budget in (100, 110):
        part = dict(doc, rows=[r for r in doc["rows"] if r["kv_budget"] == budget])
        (tmp_path / f"part-{budget}.json").write_text(json.dumps(part))
    joined = tmp_path / "joined.json"
    proc = breadcrumbs("eval", "--combine",
                       f"{tmp_path / 'part-110.json'},{tmp_path / 'part-100.json'}",
                       "--out", str(joined))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(joined.read_text()) == doc
    proc = breadcrumbs("eval", "--combine", f"{out},{tmp_path / 'part-100.json'}", "--out",
                       str(tmp_path / "twice.json"))
    assert proc.returncode == 2 and "one method at one budget twice" in proc.stderr


@pytest.mark.parametrize("budgets, message", [("abc", "whole numbers"), ("0,100", "positive"),
                                              ("20", "longest prompt")])
def test_bad_budgets_get_one_line_errors(tiny_checkpoint, budgets, message):
    proc = breadcrumbs("eval", "--model", str(tiny_checkpoint), "--task", "countdown", "--n", "1",
                       "--budgets", budgets, "--baselines", "")
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
