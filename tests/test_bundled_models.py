"""The Makefile's training recipes are the ones the committed checkpoints recorded.

Each ``make`` target that reproduces a bundled checkpoint says which in its comment
(``student-3: setup  # models/stages/countdown-student-3: ...``). The recipe's flags, parsed by the
real CLI, must build the ``training_config.json`` that checkpoint holds, and its ``--init`` and
``--teacher`` must name the checkpoints its lineage links name; otherwise the documented command
would train something other than what is served, or the held-out replay would follow another
lineage than the one the command starts from.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
from breadcrumbs_vllm.cli import build_parser
from breadcrumbs_vllm.cli.init_model import parse_ratio_list
from breadcrumbs_vllm.cli.train import config_from_args
from breadcrumbs_vllm.training.config import TrainConfig
from breadcrumbs_vllm.training.trainer import CONFIG_FILE

ROOT = Path(__file__).resolve().parents[1]
RECIPE = re.compile(r"^([\w-]+): setup\s+# (models/[\w/-]+):", re.MULTILINE)
# The run's own choices, not the recipe's: where it wrote, and the precision the machine allowed.
NOT_COMPARED = {"init", "teacher", "mixed_precision"}


def recipes() -> list[tuple[str, Path]]:
    return [(target, ROOT / folder) for target, folder in RECIPE.findall((ROOT / "Makefile").read_text())]


def recipe_argv(target: str) -> list[str]:
    """The arguments the target passes to ``breadcrumbs``, as ``make -n`` expands them."""
    dry = subprocess.run(["make", "-n", "-s", "-o", "setup", target], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    command = shlex.split(dry.replace("\\\n", " "))
    return command[command.index(".venv/bin/breadcrumbs") + 1:]


RECIPES = recipes()


def test_every_bundled_checkpoint_has_a_recipe() -> None:
    folders = {folder for _, folder in RECIPES}
    committed = {p.parent for p in (ROOT / "models").glob(f"*/{CONFIG_FILE}")}
    committed |= {p.parent for p in (ROOT / "models/stages").glob(f"*/{CONFIG_FILE}")}
    assert committed and committed <= folders, sorted(map(str, committed - folders))


@pytest.mark.parametrize("target,folder", RECIPES, ids=[t for t, _ in RECIPES])
def test_recipe_rebuilds_the_recorded_config(target: str, folder: Path) -> None:
    args = build_parser().parse_args(recipe_argv(target))
    rebuilt = dataclasses.asdict(config_from_args(args, parse_ratio_list))
    recorded = dataclasses.asdict(TrainConfig.from_json((folder / CONFIG_FILE).read_text()))
    differing = {k for k in recorded if k not in NOT_COMPARED and rebuilt[k] != recorded[k]}
    assert not differing, {k: (rebuilt[k], recorded[k]) for k in differing}

    linked_teacher = read_breadcrumbs_config(folder).teacher
    for flag, linked in (("init", recorded["init"]), ("teacher", linked_teacher)):
        expected = (folder / linked).resolve() if linked else None
        given = getattr(args, flag, None)
        assert (Path(ROOT / given).resolve() if given else None) == expected, flag
