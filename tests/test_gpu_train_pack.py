"""The GPU training run, simulated on this CPU: pack, carry, unpack, train, export, assemble.

``loadtests/gpu/train_pack.py`` packs what a GPU machine without vLLM or network needs to train
the SmolLM2 two-sums pair (the base in parts, three wheels, the recipe's commands), and
``loadtests/gpu_train.sh`` runs it there. Here the script runs for real on the CPU, with the
recipe's commands cut to one step each, and with the packages the GPU machine lacks made
unimportable from this environment (``sitecustomize`` below): vLLM, gguf (which must then come
from the pack's wheel), math-verify and the gateway's FastAPI. What this proves: the pack is
complete, the parts join to the pinned file, the recorded commands run in order outside the tree,
and what comes back is an adapter artifact that assembles here. Not proved: anything about CUDA
(the trainer's device handling was checked on a lent H200 with the bundled models).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from breadcrumbs_vllm.adapters import assemble, read_artifact

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests" / "gpu"))
import travel  # loadtests/gpu is a folder of scripts, not a package

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "loadtests" / "gpu_train.sh"
PACKER = ROOT / "loadtests" / "gpu" / "train_pack.py"
ONE_STEP = "--max-tokens 40 --eval-n 1 --save-every 1"

# Loaded at start-up by every Python the script runs: the GPU machine's missing packages fail to
# import unless a folder outside this environment's site-packages (the pack's) provides them.
BLOCKER = '''
import importlib.machinery, sys

class Missing:
    NAMES = {"vllm", "gguf", "math_verify", "fastapi"}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in self.NAMES:
            return None
        outside = [p for p in sys.path if "site-packages" not in p]
        spec = importlib.machinery.PathFinder.find_spec(name, path if "." in name else outside)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")
        return spec

sys.meta_path.insert(0, Missing())
'''


def run_script(pack: Path, out: Path, work: Path, blocker: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BREADCRUMBS_GPU_TRAIN_PACK": str(pack), "OUT": str(out),
           "WORK": str(work), "PYTHONPATH": str(blocker),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def build_pack(folder: Path, *extra: str) -> str:
    """Build a pack into ``folder`` whose commands train one step each; what the build printed."""
    done = subprocess.run([sys.executable, str(PACKER), "build",
                           "--teacher-extra", f"--sft-steps 1 --sft-batch 1 {ONE_STEP}",
                           "--student-extra", f"--trace-steps 1 --trace-batch 1 {ONE_STEP}",
                           *extra],
                          env={**os.environ, "BREADCRUMBS_GPU_TRAIN_PACK": str(folder)},
                          check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def gpu_run(pack: Path, blocker: Path, folder: Path) -> Path:
    """Run the script on ``pack`` as the GPU machine would; ``folder/out`` is what comes back.
    The work folder (the converted base, the runs: GiBs) is deleted once the run is done."""
    out, work = folder / "out", folder / "work"
    done = run_script(pack, out, work, blocker)
    shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # What comes back fits the device's limits: 8 files at most, 2 folders down.
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.parts) <= 3 for p in files), files
    return out


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    for name in ("vllm", "gguf"):  # the simulation holds only if these are really gone
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                              env={**os.environ, "PYTHONPATH": str(folder)}, check=False)
        assert "not on the GPU machine" in done.stderr.decode(), done.stderr
    return folder


@pytest.fixture(scope="module")
def built(smollm2_base, tmp_path_factory) -> tuple[Path, str]:
    """A pack whose commands train one step each, and what its build printed (``smollm2_base``
    has the GGUF file in the download cache)."""
    folder = tmp_path_factory.mktemp("gpu-train")
    return folder, build_pack(folder)


@pytest.fixture(scope="module")
def pack(built) -> Path:
    return built[0]


def test_pack_is_cut_to_travel_beside_the_tree(built, smollm2_base):
    """As few parts as fit a call beside this working tree, and the printed calls carry them
    all, the last one running the script."""
    pack, printed = built
    room = travel.room()
    parts = sorted(pack.glob("base.gguf.*"))
    assert len(parts) == -(-sum(p.stat().st_size for p in parts) // room)
    assert all(p.stat().st_size <= room for p in parts)
    calls = [line for line in printed.splitlines() if line.startswith("call ")]
    carried = " ".join(calls)
    for item in travel.pack_items(pack):
        assert item.name in carried
    assert calls[-1].endswith("command: OUT=$OUT bash <the pack's script>")  # a test's folder
    assert all(line.endswith("command: true") for line in calls[:-1])


def test_pack_records_the_recipes_commands(pack):
    n = len(list(pack.glob("base.gguf.*")))
    assert sorted(p.name for p in pack.glob("base.gguf.*")) == sorted(
        f"base.gguf.{k}-of-{n}" for k in range(1, n + 1))
    assert sorted(p.name.split("-")[0] for p in (pack / "wheels").glob("*.whl")) == [
        "accelerate", "gguf", "peft"]
    commands = (pack / "commands.sh").read_text()
    for step in ("cli fetch smollm2-135m-instruct", "recipes/two_sums.py", "cli train teacher",
                 "cli train student"):
        assert step in commands
    assert ".venv" not in commands  # the GPU machine has no venv
    assert commands.rstrip().endswith(f"--trace-steps 1 --trace-batch 1 {ONE_STEP}")


@pytest.fixture(scope="module")
def first_run(pack, blocker, tmp_path_factory) -> Path:
    return gpu_run(pack, blocker, tmp_path_factory.mktemp("first-run"))


def test_gpu_run_trains_and_exports_an_artifact(first_run, smollm2_base, tmp_path):
    artifact = first_run / "two-sums-student"
    assert read_artifact(artifact)["layers"] == ["two-sums-teacher", "two-sums-student"]
    for log, steps in (("teacher-log.jsonl", 1), ("student-log.jsonl", 1)):
        rows = [json.loads(line) for line in (first_run / log).read_text().splitlines()]
        assert [row["step"] for row in rows if "step" in row][-1] == steps
    assert "train student" in (first_run / "train.log").read_text()
    assembled = assemble(artifact, smollm2_base, tmp_path / "assembled")
    assert (assembled / "config.json").is_file()


def test_a_second_gpu_run_continues_the_first_runs_student(first_run, blocker, smollm2_base,
                                                           tmp_path):
    """A pack built from the first run's artifact trains one more layer on its student: what a
    later lent machine does with what an earlier one returned."""
    pack = tmp_path / "pack"
    build_pack(pack, "--continue-from", str(first_run / "two-sums-student"))
    assert "--init runs/two-sums-from-student" in (pack / "commands.sh").read_text()
    out = gpu_run(pack, blocker, tmp_path)
    returned = out / "two-sums-student"
    assert read_artifact(returned)["layers"] == [
        "two-sums-teacher", "two-sums-student", "two-sums-student-3"]
    # Only the new layer comes back (8 files at most); the rest is in what was packed.
    assert sorted(p.name for p in returned.iterdir() if p.is_dir()) == ["two-sums-student-3"]
    assert not (out / "teacher-log.jsonl").exists()  # the teacher came assembled
    with pytest.raises(ValueError, match="lacks layer.*two-sums-teacher, two-sums-student:"):
        assemble(returned, smollm2_base, tmp_path / "assembled")
    whole = tmp_path / "whole"  # docs/training.md: the new layer copied over the old artifact
    shutil.copytree(first_run / "two-sums-student", whole)
    shutil.copytree(returned, whole, dirs_exist_ok=True)
    assembled = assemble(whole, smollm2_base, tmp_path / "assembled")
    assert (assembled / "config.json").is_file()


def test_a_continuation_needs_a_two_sums_artifact(tmp_path):
    done = subprocess.run([sys.executable, str(PACKER), "build", "--continue-from",
                           str(tmp_path)], env={**os.environ,
                                                "BREADCRUMBS_GPU_TRAIN_PACK": str(tmp_path / "p")},
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("gpu-train-pack: ")
    assert "is not an adapter artifact" in done.stderr


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_gpu_run_refuses_an_incomplete_base(pack, blocker, tmp_path, damage):
    partial = tmp_path / "pack"
    shutil.copytree(pack, partial)
    [second] = partial.glob("base.gguf.2-of-*")
    n = second.name.rsplit("-", 1)[1]
    if damage == "missing":
        second.unlink()
    else:
        second.write_bytes(b"\0" * second.stat().st_size)
    done = run_script(partial, tmp_path / "out", tmp_path / "work", blocker)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    expected = (f"base part(s) 2 of {n} missing" if damage == "missing"
                else "do not have smollm2-135m-instruct's pinned SHA-256")
    assert expected in message, done.stderr
    assert not (tmp_path / "work" / "runs").exists()  # nothing ran
