"""The command line as a user runs it: real subprocesses, one-line errors, no tracebacks."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from cli_run import breadcrumbs

from breadcrumbs_vllm.evaluation.report import kl_json_path


def test_the_library_never_imports_the_gateway() -> None:
    """``server`` builds on ``breadcrumbs_vllm``, never the reverse: the gateway's subcommands reach
    the ``breadcrumbs`` command through the ``breadcrumbs.commands`` entry points instead."""
    library = Path(__file__).resolve().parents[1] / "breadcrumbs_vllm"
    upward = []
    for path in sorted(library.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            upward += [f"{path.name}:{node.lineno}" for m in modules if m.split(".")[0] == "server"]
    assert not upward


@pytest.mark.parametrize("command", ["serve", "router"])
def test_the_gateway_adds_its_subcommands(command: str) -> None:
    proc = breadcrumbs(command, "--help")
    assert proc.returncode == 0, "entry point missing: reinstall with `make setup`\n" + proc.stderr
    assert f"usage: breadcrumbs {command}" in proc.stdout


def test_a_command_that_cannot_import_is_refused_in_one_line(monkeypatch, capsys) -> None:
    """Where the gateway's dependencies are missing (a machine that only trains), the other
    commands still parse and the gateway's says why it cannot run."""
    from breadcrumbs_vllm import cli

    class Broken:
        name = "serve"

        def load(self):
            raise ModuleNotFoundError("No module named 'fastapi'")

    monkeypatch.setattr(cli, "entry_points", lambda group: [Broken()])
    assert cli.main(["serve", "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "breadcrumbs serve: error: this command cannot run here: No module named " \
                  "'fastapi'\n"


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "countdown-random"
    proc = breadcrumbs("init-model", "--task", "countdown", "--layers", "2", "--hidden", "64",
                       "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_init_model_writes_a_loadable_checkpoint(random_model):
    config = json.loads((random_model / "config.json").read_text())
    assert config["breadcrumbs"]["ratios"] == [2, 4, 8, 16]
    assert config["breadcrumbs"]["task"] == "countdown"
    assert (random_model / "model.safetensors").is_file()
    assert (random_model / "tokenizer.json").is_file()


def test_generate_json_reports_kv_figures(random_model):
    proc = breadcrumbs("generate", "--model", str(random_model), "--ratio", "4", "--max-tokens",
                       "40", "--greedy", "--json", "12+3=")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["token_ids"]) <= 40
    assert set(out) >= {"token_ids", "text", "peak_kv_entries", "mean_kv_entries"}
    assert out["peak_kv_entries"] <= out["prompt_tokens"] + len(out["token_ids"]) // 4 + 4 + 1


def test_eval_end_to_end_writes_table_json_and_plot(random_model, tmp_path):
    out = tmp_path / "results.json"
    proc = breadcrumbs("eval", "--model", str(random_model), "--task", "countdown", "--n", "4",
                       "--max-tokens", "24", "--ratios", "none,4,8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    settings = [r["setting"] for r in rows]
    assert settings == ["none", "c=4", "c=8", "streaming", "streaming", "tova", "tova"]
    for row in rows:
        assert {"setting", "ratio", "budget", "accuracy", "mean_generated_tokens",
                "mean_kv_entries", "peak_kv_entries", "failures"} <= set(row)
        # Every failed problem is diagnosed once (a random model's text is no trace).
        assert sum(row["failures"].values()) == round(row["n"] * (1 - row["accuracy"]))
        # The first three failures are kept as written, with their problem and diagnosis.
        examples = row["failed_examples"]
        assert len(examples) == min(3, sum(row["failures"].values()))
        assert [e["problem"] for e in examples] == sorted({e["problem"] for e in examples})
        for example in examples:
            assert row["failures"][example["diagnosis"]] >= 1 and example["text"]
    # Baselines run at the peak budget of the ratio they match.
    by = {(r["setting"], r["ratio"]): r for r in rows}
    assert by[("streaming", 8)]["budget"] == pytest.approx(by[("c=8", 8)]["peak_kv_entries"])
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "accuracy" in proc.stdout


def test_eval_kl_writes_the_kl_beside_the_results(random_model, tmp_path):
    """``--kl`` writes ``NAME-kl.json`` where ``kl_json_path`` says: what recipes read back."""
    out = tmp_path / "results.json"
    proc = breadcrumbs("eval", "--model", str(random_model), "--task", "countdown", "--n", "2",
                       "--max-tokens", "16", "--ratios", "none,4", "--baselines", "", "--kl",
                       "--baseline-model", str(random_model), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    kl = json.loads(kl_json_path(out).read_text())
    assert kl_json_path(out).name == "results-kl.json" and kl["n"] == 2
    # Against itself, uncompressed, the model's KL is zero; compressed it is not.
    assert kl["kl_per_token"]["none"] == pytest.approx(0.0, abs=1e-6)
    assert kl["kl_per_token"]["4"] > 0


def test_eval_switch_writes_a_row_along_the_rising_path(random_model, tmp_path):
    out = tmp_path / "results.json"
    proc = breadcrumbs("eval", "--model", str(random_model), "--task", "countdown", "--n", "2",
                       "--max-tokens", "20", "--ratios", "4,16", "--baselines", "",
                       "--switch", "4:16@mid", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    # The first boundary of 4 at or after 20 // 2 = 10 generated tokens is 12.
    assert [r["setting"] for r in rows] == ["c=4", "c=16", "c=4→16@12"]
    switch = rows[-1]
    assert switch["ratio"] == 4 and switch["switches"] == [[12, 16]] and switch["n"] == 2
    assert rows[0]["switches"] == []
    assert "c=4→16@12" in proc.stdout
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "{model}", "--task", "sudoku"], "unknown task"),
    (["generate", "--model", "{model}", "--ratio", "0", "x"], "ratio 0"),
    (["generate", "--model", "{model}", "--ratio", "-3", "x"], "ratio"),
    (["generate", "--model", "{model}", "--ratio", "2.5", "x"], "ratio"),
    (["generate", "--model", "{model}", "--ratio", "32", "x"], "not supported"),
    (["generate", "--model", "/nonexistent/model", "x"], "does not exist"),
    (["generate", "--model", "{plain}", "x"], "no 'breadcrumbs' block"),
    (["eval", "--model", "{model}", "--baselines", "quest"], "unknown baseline"),
    (["eval", "--model", "{model}", "--task-option", "high"], "expected KEY=VALUE"),
    (["eval", "--model", "{model}", "--task-option", "size=3"], "unexpected keyword argument"),
    (["train", "teacher", "--out", "{plain}/run", "--task-option", "low=0"], "countdown needs"),
    (["train", "student", "--out", "{plain}/run"], "needs --teacher"),
    (["eval", "--model", "{model}", "--held-out-from", "{model}"], "has no training_config.json"),
    (["eval", "--model", "{model}", "--switch", "4:32@mid"], "not supported"),
    (["eval", "--model", "{model}", "--switch", "16:4@mid"], "ratios only rise"),
    (["eval", "--model", "{model}", "--switch", "4to16"], "--switch takes C0:C1@mid"),
    (["train", "student", "--out", "{plain}/run", "--teacher", "{model}", "--trace-steps", "1",
      "--switch-share", "2"], "--switch-share must be in [0, 1]"),
])
def test_bad_input_gets_one_line_error(random_model, tmp_path, args, message):
    plain = tmp_path / "plain"
    plain.mkdir()
    config = json.loads((random_model / "config.json").read_text())
    del config["breadcrumbs"]
    (plain / "config.json").write_text(json.dumps(config))
    proc = breadcrumbs(*[a.format(model=random_model, plain=plain) for a in args])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.vllm
def test_generate_engine_vllm_matches_the_reference_engine(tiny_checkpoint):
    """A user compares the two engines from the command line: same tokens, same KV figures."""
    args = ["generate", "--model", str(tiny_checkpoint), "--ratio", "4", "--max-tokens", "40",
            "--greedy", "--json", "12+3="]
    reference = breadcrumbs(*args)
    served = breadcrumbs(*args, "--engine", "vllm")
    assert reference.returncode == 0 and served.returncode == 0, served.stderr[-2000:]
    ref, got = json.loads(reference.stdout), json.loads(served.stdout)
    assert got["token_ids"] == ref["token_ids"] and ref["token_ids"]
    assert got["peak_kv_entries"] == ref["peak_kv_entries"]
    assert got["mean_kv_entries"] == pytest.approx(ref["mean_kv_entries"])


def test_baselines_compress_the_baseline_model(tiny_checkpoint, tmp_path):
    """Ratios decode on the student, StreamingLLM / TOVA on the model they are compared against."""
    from breadcrumbs_vllm.cli.eval import default_baseline_model
    from breadcrumbs_vllm.evaluation.runner import Evaluator
    from breadcrumbs_vllm.reference import ReferenceEngine
    from breadcrumbs_vllm.tasks import get_task

    student, teacher = (ReferenceEngine.from_checkpoint(tiny_checkpoint) for _ in range(2))
    seen: dict[str, list] = {"student": [], "teacher": []}
    for name, engine in (("student", student), ("teacher", teacher)):
        def spy(requests, name=name, generate=engine.generate):
            seen[name] += [(r.ratio, r.policy) for r in requests]
            return generate(requests)
        engine.generate = spy
    task = get_task("countdown")
    Evaluator(student, task, 8, progress=False, baseline_engine=teacher).run(
        task.problems(2, 0), [4], ["streaming"])
    assert seen["student"] == [(4, None)] * 2
    assert len(seen["teacher"]) == 2 and all(r is None and p is not None
                                             for r, p in seen["teacher"])
    # breadcrumbs eval's default: a student's baselines run on the teacher its config names.
    (tmp_path / "teacher").mkdir()
    (tmp_path / "student").mkdir()
    with pytest.raises(ValueError, match="holds no weights"):  # a stage's record, not a model
        default_baseline_model(tmp_path / "student", "../teacher")
    (tmp_path / "teacher" / "model.safetensors").touch()
    assert default_baseline_model(tmp_path / "student", "../teacher") == str(
        tmp_path / "student" / "../teacher")
    assert default_baseline_model(tmp_path / "student", "../missing") == str(tmp_path / "student")
    assert default_baseline_model(tmp_path / "student", None) == str(tmp_path / "student")
