"""The training recipes are the ones the committed checkpoints recorded, and the records name no
machine.

Each target in ``recipes/*.mk`` says in its comment which committed record it reproduces: a served
checkpoint in ``models/`` (``student:  # models/countdown-student: ...``) or a training stage's
record in ``docs/results/stages/`` (its training config, log and evaluation; the weights are
rebuilt by the target into ``runs/stages/``). The recipe's flags, parsed by the real CLI, must
build the ``training_config.json`` that record holds, and its ``--init`` and ``--teacher`` must
name the stages its lineage links name; otherwise the documented command would train something
other than what is served, or the held-out replay would follow another lineage than the one the
command starts from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
from breadcrumbs_vllm.cli import build_parser
from breadcrumbs_vllm.cli.init_model import parse_ratio_list
from breadcrumbs_vllm.cli.train import config_from_args
from breadcrumbs_vllm.training.config import LINKS, TrainConfig
from breadcrumbs_vllm.training.trainer import CONFIG_FILE

ROOT = Path(__file__).resolve().parents[1]
RECIPE = re.compile(r"^([\w-]+):\s+# ((?:models|docs/results/stages)/[\w-]+):", re.MULTILINE)
# Where a recipe builds a stage whose record is committed in STAGE_RECORDS.
STAGE_RECORDS, STAGE_BUILDS = ROOT / "docs/results/stages", ROOT / "runs/stages"
# The run's own choices, not the recipe's: where it wrote, and the precision the machine allowed.
NOT_COMPARED = {"init", "teacher", "mixed_precision"}
# Absolute paths of a machine (a home, a scratch or work disk) as they would appear in a record.
MACHINE_PATH = re.compile(r'"(/(?:work|root|tmp|home|mnt|Users|var)/[^"]*)"')


def recipes() -> list[tuple[str, str, Path]]:
    return [(str(mk.relative_to(ROOT)), target, ROOT / record)
            for mk in sorted((ROOT / "recipes").glob("*.mk"))
            for target, record in RECIPE.findall(mk.read_text())]


def recipe_argv(makefile: str, target: str) -> list[str]:
    """The arguments the target passes to ``breadcrumbs``, as ``make -n`` expands them."""
    dry = subprocess.run(["make", "-n", "-s", "-f", makefile, target], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    command = shlex.split(dry.replace("\\\n", " "))
    return command[command.index(".venv/bin/breadcrumbs") + 1:]


def built_at(linked: Path) -> Path:
    """Where the recipes build the checkpoint a record links to: a stage in ``runs/stages/``."""
    return STAGE_BUILDS / linked.name if linked.parent == STAGE_RECORDS else linked


def record_of(given: str) -> str:
    """The committed record standing in for a stage the recipe reads from ``runs/stages/``."""
    path = (ROOT / given).resolve()
    return str(STAGE_RECORDS / path.name) if path.parent == STAGE_BUILDS else given


def tracked(*folders: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", *folders], cwd=ROOT, capture_output=True,
                            check=False,
                            text=True)
    if listed.returncode:  # not a git checkout (an exported tree): every file is the tree's
        return [p for folder in folders for p in (ROOT / folder).rglob("*") if p.is_file()]
    return [ROOT / name for name in listed.stdout.split("\0") if name]


RECIPES = recipes()


def test_every_committed_training_record_has_a_recipe() -> None:
    records = {record for *_, record in RECIPES}
    committed = {p.parent for p in (ROOT / "models").glob(f"*/{CONFIG_FILE}")}
    committed |= {p.parent for p in STAGE_RECORDS.glob(f"*/{CONFIG_FILE}")}
    assert committed and committed <= records, sorted(map(str, committed - records))


@pytest.mark.parametrize("makefile,target,record", RECIPES,
                         ids=[f"{Path(mk).stem}-{t}" for mk, t, _ in RECIPES])
def test_recipe_rebuilds_the_recorded_config(makefile: str, target: str, record: Path) -> None:
    args = build_parser().parse_args(recipe_argv(makefile, target))
    # The CLI reads the task and shape of --init and --teacher; the records hold both.
    parsed = argparse.Namespace(**vars(args))
    for flag in LINKS:
        if getattr(args, flag, None):
            setattr(parsed, flag, record_of(getattr(args, flag)))
    rebuilt = dataclasses.asdict(config_from_args(parsed, parse_ratio_list))
    recorded = dataclasses.asdict(TrainConfig.from_json((record / CONFIG_FILE).read_text()))
    differing = {k for k in recorded if k not in NOT_COMPARED and rebuilt[k] != recorded[k]}
    assert not differing, {k: (rebuilt[k], recorded[k]) for k in differing}

    linked_teacher = read_breadcrumbs_config(record).teacher
    for flag, linked in (("init", recorded["init"]), ("teacher", linked_teacher)):
        expected = built_at((record / linked).resolve()) if linked else None
        given = getattr(args, flag, None)
        assert (Path(ROOT / given).resolve() if given else None) == expected, flag


def test_records_link_to_committed_checkpoints_relative_to_themselves() -> None:
    """Every lineage link resolves inside the tree, so ``--held-out-from`` replays it anywhere."""
    records = [p.parent for p in ROOT.glob(f"models/*/{CONFIG_FILE}")]
    records += [p.parent for p in ROOT.glob(f"docs/results/*/*/{CONFIG_FILE}")]
    for record in records:
        cfg = TrainConfig.from_json((record / CONFIG_FILE).read_text())
        links = [getattr(cfg, k) for k in LINKS] + [read_breadcrumbs_config(record).teacher]
        for link in filter(None, links):
            assert not Path(link).is_absolute(), (record, link)
            assert (record / link / CONFIG_FILE).is_file(), (record, link)


def test_no_committed_config_names_a_machine_path() -> None:
    found = {str(path.relative_to(ROOT)): MACHINE_PATH.findall(path.read_text())
             for path in tracked("models", "docs") if path.suffix in (".json", ".jsonl")}
    assert not {name: paths for name, paths in found.items() if paths}


def test_a_run_records_its_links_relative_to_its_checkpoint(tmp_path: Path) -> None:
    run = TrainConfig(stage="student", teacher=str(tmp_path / "teacher"),
                      init=str(tmp_path / "stages/student-1"))
    recorded = json.loads(run.relative_to(tmp_path / "stages/student-2").to_json())
    assert (recorded["teacher"], recorded["init"]) == ("../../teacher", "../student-1")
    again = TrainConfig(**recorded).resolved_from(tmp_path / "stages/student-2")
    assert again == run
