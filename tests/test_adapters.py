"""Adapter artifacts: export a LoRA lineage, assemble it over its base, refuse a wrong base.

The runs here are made by hand (a run folder's ``training_config.json`` and the ``lora`` state
the trainer saves) over a tiny converted Llama that stands in for a fetched base, so export and
assemble are checked against PEFT's own merge without training anything. The real artifact
(``models/smollm2-sums-student`` over SmolLM2 from PyPI) is assembled and served by
``tests/test_smollm2_serve.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from byo_models import converted
from peft import get_peft_model_state_dict

from breadcrumbs_vllm.adapters import assemble, export, read_artifact
from breadcrumbs_vllm.bases import BASE_FILE, BASES
from breadcrumbs_vllm.checkpoint import load_checkpoint, save_checkpoint
from breadcrumbs_vllm.cli import main
from breadcrumbs_vllm.training.trainer import merged_copy, with_lora

RECORD = BASES["smollm2-135m-instruct"].record()


def lora_run(parent: Path, out: Path, stage: str, seed: int, teacher: Path | None = None):
    """A finished LoRA run of ``stage`` on the model in ``parent``: random adapters (B non-zero,
    so merging changes the weights, and a moved beacon row) saved as the trainer saves them. A
    student given a ``teacher`` continued ``parent`` (``--init``) as the trainer records it."""
    model, tokenizer, bc = load_checkpoint(parent)
    peft_model = with_lora(model, 2, bc.beacon_token_id)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    merged = merged_copy(peft_model)
    config = {"stage": stage, "lora_rank": 2,
              "teacher" if stage == "student" else "init": str(parent)}
    if teacher is not None:
        config |= {"teacher": str(teacher), "init": str(parent)}
    save_checkpoint(merged, tokenizer, bc, out,
                    extra_files={"training_config.json": json.dumps(config)})
    torch.save({"lora": get_peft_model_state_dict(peft_model)}, out / "trainer_state.pt")
    return merged


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """A fake fetched base, a LoRA teacher on it and a LoRA student on the teacher."""
    root = tmp_path_factory.mktemp("lineage")
    _, base = converted("llama", root)
    (base / BASE_FILE).write_text(json.dumps(RECORD))
    lora_run(base, root / "teacher", "teacher", seed=1)
    student = lora_run(root / "teacher", root / "student", "student", seed=2)
    return root, base, student


def test_export_then_assemble_rebuilds_the_student(lineage, tmp_path) -> None:
    root, base, student = lineage
    artifact = export(root / "student", tmp_path / "artifact")
    record = json.loads((artifact / "artifact.json").read_text())
    assert record["layers"] == ["teacher", "student"] and record["base"] == RECORD
    rebuilt, _, bc = load_checkpoint(assemble(artifact, base, tmp_path / "out"))
    assert bc.ratios == [2, 4, 8, 16] and bc.teacher is None
    want = student.state_dict()
    for name, tensor in rebuilt.state_dict().items():  # adapters are stored in bf16
        torch.testing.assert_close(tensor, want[name], atol=2e-2, rtol=2e-2, msg=name)
    untouched, _, base_bc = load_checkpoint(base)  # the adapters did change the weights
    assert not torch.allclose(rebuilt.model.layers[0].self_attn.q_proj.weight,
                              untouched.model.layers[0].self_attn.q_proj.weight)
    beacon = base_bc.beacon_token_id
    assert not torch.allclose(rebuilt.model.embed_tokens.weight[beacon],
                              untouched.model.embed_tokens.weight[beacon])


def assert_rebuilt(artifact: Path, base: Path, want, out: Path) -> None:
    rebuilt, _, _ = load_checkpoint(assemble(artifact, base, out))
    expected = want.state_dict()
    for name, tensor in rebuilt.state_dict().items():  # adapters are stored in bf16
        torch.testing.assert_close(tensor, expected[name], atol=3e-2, rtol=3e-2, msg=name)


def test_a_continued_student_exports_the_student_it_started_from(lineage, tmp_path) -> None:
    """``--init`` a student: the new LoRA trained on that student, so it is the layer below (not
    the teacher, which only supplied the targets)."""
    root, base, _ = lineage
    more = lora_run(root / "student", tmp_path / "more", "student", seed=3,
                    teacher=root / "teacher")
    artifact = export(tmp_path / "more", tmp_path / "artifact")
    assert read_artifact(artifact)["layers"] == ["teacher", "student", "more"]
    assert_rebuilt(artifact, base, more, tmp_path / "out")


def test_a_student_continued_from_an_assembled_artifact_exports_every_layer(lineage,
                                                                             tmp_path) -> None:
    """Another machine gets only the artifact: it assembles the student and the teacher, goes
    on training from them, and exports the artifact's layers plus its own."""
    root, base, _ = lineage
    artifact = export(root / "student", tmp_path / "artifact")
    student = assemble(artifact, base, tmp_path / "assembled-student")
    teacher = assemble(artifact, base, tmp_path / "assembled-teacher", upto="teacher")
    more = lora_run(student, tmp_path / "more", "student", seed=4, teacher=teacher)
    again = export(tmp_path / "more", tmp_path / "again")
    record = read_artifact(again)
    assert record["layers"] == ["teacher", "student", "more"] and record["base"] == RECORD
    assert_rebuilt(again, base, more, tmp_path / "out")


def test_a_layer_name_twice_in_a_lineage_is_refused(lineage, tmp_path, capsys) -> None:
    root, base, _ = lineage
    artifact = export(root / "student", tmp_path / "artifact")
    student = assemble(artifact, base, tmp_path / "assembled")
    lora_run(student, tmp_path / "student", "student", seed=5, teacher=root / "teacher")
    code = main(["adapter", "export", "--run", str(tmp_path / "student"),
                 "--out", str(tmp_path / "again")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "two layers" in err and "'student'" in err and "\n" not in err
    assert not (tmp_path / "again").exists()


def test_a_base_of_another_model_is_refused_in_one_line(lineage, tmp_path, capsys) -> None:
    root, base, _ = lineage
    artifact = export(root / "student", tmp_path / "artifact")
    other = json.loads(json.dumps(RECORD)) | {"sha256": "0" * 64}
    (tmp_path / "wrong").mkdir()
    for item in base.iterdir():
        (tmp_path / "wrong" / item.name).symlink_to(item)
    (tmp_path / "wrong" / BASE_FILE).unlink()
    (tmp_path / "wrong" / BASE_FILE).write_text(json.dumps(other))
    code = main(["adapter", "assemble", str(artifact), "--base", str(tmp_path / "wrong"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not hold the base" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_an_artifact_on_another_architecture_is_refused(lineage, tmp_path, capsys) -> None:
    root, _, _ = lineage
    artifact = export(root / "student", tmp_path / "artifact")
    _, qwen = converted("qwen3", tmp_path)  # another shape, recorded as the same base
    (qwen / BASE_FILE).write_text(json.dumps(RECORD))
    code = main(["adapter", "assemble", str(artifact), "--base", str(qwen),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not fit the base" in err and "\n" not in err


def test_a_run_without_lora_or_base_cannot_be_exported(lineage, tmp_path, capsys) -> None:
    _, base, _ = lineage
    code = main(["adapter", "export", "--run", str(base.parent / "llama"),
                 "--out", str(tmp_path / "a")])
    assert code == 2 and "neither a training run, a fetched base" in capsys.readouterr().err


def test_a_missing_base_folder_is_refused_in_one_line(lineage, tmp_path, capsys) -> None:
    root, _, _ = lineage
    artifact = export(root / "student", tmp_path / "artifact")
    code = main(["adapter", "assemble", str(artifact), "--base", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not hold the base" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
