"""A user's data and verifiers: JSONL and datasets-loaded rows, ``exact`` / ``math`` / task /
entry-point verifiers, and ``breadcrumbs eval --data`` on a converted tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from byo_models import converted

from breadcrumbs_vllm.cli import main
from breadcrumbs_vllm.data import DataSpec, DataTask
from breadcrumbs_vllm.tasks import get_task
from breadcrumbs_vllm.tasks.base import Problem
from breadcrumbs_vllm.verifiers import ExactMatch, MathEquivalence, final_answer_text, get_verifier


def problem(answer: str, **data) -> Problem:
    return Problem(task="data", prompt="q", data={"answer": answer, **data})


def test_final_answer_markers() -> None:
    assert final_answer_text("3 + 4 = 7\n#### 7") == "7"
    assert final_answer_text("so\nAnswer: 1,000.\nthanks") == "1,000"
    assert final_answer_text(r"thus \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert final_answer_text(" 42 ") == "42"


def test_exact_compares_final_answers_and_numbers() -> None:
    exact = ExactMatch()
    gold = problem("Natalia sold 48 + 24 = 72 clips.\n#### 72")
    assert exact.verify(gold, "48 + 24 = 72\nAnswer: 72") == 1.0
    assert exact.verify(gold, r"the total is \boxed{72.0}") == 1.0
    assert exact.verify(gold, "Answer: 73") == 0.0
    assert exact.verify(gold, "") == 0.0
    assert exact.verify(problem("1000"), "#### 1,000") == 1.0


def test_math_uses_math_verify_equivalence() -> None:
    math = MathEquivalence()
    assert math.verify(problem("#### 0.5"), r"so \boxed{\frac{1}{2}}") == 1.0
    assert math.verify(problem("#### 0.5"), r"\boxed{\frac{1}{3}}") == 0.0
    assert math.verify(problem("x^2 - 1"), r"Answer: (x-1)(x+1)") == 1.0
    assert math.verify(problem("#### 3"), "no answer here {{{") == 0.0  # never raises


def test_task_and_entry_point_verifiers() -> None:
    countdown = get_verifier("countdown")
    task = get_task("countdown")
    p = task.problems(1, 0)[0]
    assert countdown.verify(p, task.solve(p)) == 1.0
    custom = get_verifier("test_byo_data:Always")
    assert custom.verify(problem("x"), "anything") == 1.0
    with pytest.raises(ValueError, match="unknown verifier"):
        get_verifier("nonsense")
    with pytest.raises(ValueError, match="cannot be loaded"):
        get_verifier("no_such_module:Thing")
    with pytest.raises(ValueError, match="no verify"):
        get_verifier("json:dumps")


class Always:
    def verify(self, problem, completion: str) -> float:
        return 1.0


def test_rows_from_jsonl_and_from_datasets(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"question": "1+1?", "answer": "#### 2", "level": 1}\n\n'
                     '{"question": "2+2?", "answer": "#### 4", "level": 2}\n')
    task = DataTask(DataSpec(str(jsonl), prompt_column="question"))
    assert [r["prompt"] for r in task.rows] == ["1+1?", "2+2?"]
    assert task.problems(3, seed=0)[0].data["level"] in (1, 2)  # extra fields reach the verifier
    assert len({p.prompt for p in task.problems(2, seed=5)}) == 2  # without replacement
    first = next(p for p in task.problems(2, 0) if p.prompt == "1+1?")
    assert task.verify(first, "1 + 1 = 2\nAnswer: 2") == 1.0  # exact, the default verifier
    assert task.verify(first, "Answer: 3") == 0.0
    csv = tmp_path / "rows.csv"
    csv.write_text("q,a\n3+3?,6\n")
    rows = DataTask(DataSpec(str(csv), prompt_column="q", answer_column="a")).rows
    assert rows == [{"prompt": "3+3?", "answer": 6}]
    with pytest.raises(ValueError, match="no 'answer' field"):
        DataTask(DataSpec(str(csv), prompt_column="q"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        DataTask(DataSpec(str(bad)))
    with pytest.raises(ValueError, match="cannot be loaded"):
        DataTask(DataSpec(str(tmp_path / "missing-dataset")))


def test_eval_data_reports_the_frontier(tmp_path: Path, capsys) -> None:
    _, model = converted("qwen3", tmp_path)
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {a} + 1?", "answer": f"#### {a + 1}"})
                            + "\n" for a in range(5)))
    out = tmp_path / "eval" / "results.json"
    assert main(["eval", "--model", str(model), "--data", str(data), "--verifier", "exact",
                 "--n", "50", "--ratios", "none,4", "--max-tokens", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sums.jsonl (exact)" in printed
    rows = json.loads(out.read_text())
    assert [r["setting"] for r in rows] == ["none", "c=4", "streaming", "tova"]
    assert all(r["n"] == 5 for r in rows)  # --n is capped at the rows there are
    assert out.with_suffix(".png").is_file()
    assert main(["eval", "--model", str(model), "--data", str(data), "--held-out-from",
                 str(model), "--out", str(out)]) == 2
