"""Build ``.gpu-train/``, what a GPU machine needs to train the SmolLM2 two-sums pair; unpack it.

The GPU machine (Python 3.12, a CUDA torch, transformers, peft, accelerate; no network) receives
the working tree plus a few ignored paths, 64 MiB a call (``travel.py``). Training there needs
three things it lacks:

* the base model: ``breadcrumbs fetch``'s GGUF file (98 MB), more than one call carries, so it is
  cut into ``base.gguf.K-of-N`` parts, as many as the room beside the working tree needs, each
  carried by its own call to one warm machine (ignored files a call leaves there stay while the
  machine is held); ``unpack`` joins them and checks the pinned SHA-256
  (``breadcrumbs_vllm.bases``);
* ``wheels/``: ``gguf`` (GGUF reading), ``peft`` and ``accelerate`` at this venv's versions, pure
  Python, so the GPU run trains with the code the CPU runs were measured with;
* ``commands.sh``: the recipe's own commands (``recipes/smollm2.mk``'s ``two-sums-student`` and
  what it depends on), printed by ``make -n`` with ``PY=python3``, the CLI run as a module, and the
  GPU's flags appended (``TWO_TEACHER_EXTRA``, ``TWO_STUDENT_EXTRA``): one recipe, two machines;
  ``run.env``, the run folder the script exports.

``--continue-from ARTIFACT`` packs an artifact an earlier GPU run returned (``from/``) and records
``two-sums-continue`` instead: the next run trains one more LoRA layer on that student, so
training adds up across lent machines that each hold it for minutes.

``build`` writes every file under a temporary name and renames it; ``unpack`` needs only the
standard library and this repository (it runs on the GPU machine before anything is installed).

    python loadtests/gpu/train_pack.py build --student-extra "--trace-batch 32"  # prints the calls
    python loadtests/gpu/train_pack.py unpack DEST  # prints PYTHONPATH; the base to DEST/cache
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import travel
from pack import ROOT, download, extract_wheel, venv_version, write_atomically

sys.path.insert(0, str(ROOT))
from breadcrumbs_vllm.bases import BASES, sha256

BASE = BASES["smollm2-135m-instruct"]
PACK = Path(os.environ.get("BREADCRUMBS_GPU_TRAIN_PACK", ROOT / ".gpu-train"))
#: Pure-Python distributions the training run imports that the GPU machine lacks (gguf) or may
#: hold at another version (peft, accelerate).
CARRIED = ("gguf", "peft", "accelerate")
RECIPE = "recipes/smollm2.mk"
TARGET, CONTINUE = "two-sums-student", "two-sums-continue"
TEACHER = "two-sums-teacher"
PART = re.compile(r"base\.gguf\.(\d+)-of-(\d+)$")


def progress(message: str) -> None:
    print(f"gpu-train-pack: {message}", flush=True)


def recipe_commands(target: str, overrides: dict[str, str]) -> str:
    """The recipe's commands as make would run them on the GPU machine (``make -n``)."""
    overrides = {"PY": "python3", "BC": "python3 -m breadcrumbs_vllm.cli", **overrides}
    done = subprocess.run(["make", "-n", "-s", "-f", RECIPE, target,
                           *(f"{k}={v}" for k, v in overrides.items())],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gpu-train-pack: make -n {target} failed: {done.stderr.strip()}")
    return "set -euxo pipefail\n" + done.stdout


def pack_continuation(artifact: Path) -> tuple[str, dict[str, str], str]:
    """Copy ``artifact`` into the pack as ``from/``; the target, its variables and the run it
    writes. The script links the pack into its work folder as ``pack``."""
    from breadcrumbs_vllm.adapters import read_artifact
    from breadcrumbs_vllm.checkpoint import atomic_write_dir

    try:
        layers = read_artifact(artifact)["layers"]
    except ValueError as err:
        raise SystemExit(f"gpu-train-pack: {err}") from None
    if TEACHER not in layers:
        raise SystemExit(f"gpu-train-pack: {artifact} has no layer {TEACHER!r}: it is not a "
                         f"two-sums artifact (its layers: {', '.join(layers)})")
    atomic_write_dir(PACK / "from", lambda tmp: shutil.copytree(artifact, tmp, dirs_exist_ok=True))
    layer = len(layers) + 1
    progress(f"packed {artifact} ({len(layers)} layers) as from/: the run adds layer {layer}")
    return (CONTINUE, {"TWO_FROM": "pack/from", "TWO_LAYER": str(layer)},
            f"runs/two-sums-student-{layer}")


def split(model: Path, parts: int) -> list[Path]:
    """``model`` cut into ``parts`` files of nearly equal size (the last may be smaller)."""
    size = model.stat().st_size
    chunk = -(-size // parts)
    names = [PACK / f"base.gguf.{k}-of-{parts}" for k in range(1, parts + 1)]
    if all(p.is_file() for p in names) and sum(p.stat().st_size for p in names) == size:
        progress(f"the {parts} parts of {model.name} are up to date")
        return names
    with model.open("rb") as src:
        for name in names:
            data = src.read(chunk)
            write_atomically(name, lambda tmp, data=data: tmp.write_bytes(data))
            progress(f"wrote {name.name} ({len(data) / 2**20:.1f} MiB)")
    return names


def build(parts: int | None, teacher_extra: str, student_extra: str,
          continue_from: Path | None = None) -> None:
    """Write the pack; ``parts=None`` cuts the base into as few parts as the calls' room allows."""
    from breadcrumbs_vllm.bases import download as download_base

    PACK.mkdir(parents=True, exist_ok=True)
    model = download_base(BASE, progress)
    if parts is None:
        parts = -(-model.stat().st_size // travel.room())
    kept = set(split(model, parts))
    wheels_dir = PACK / "wheels"
    wheels_dir.mkdir(exist_ok=True)
    for wheel in download([(name, venv_version(name)) for name in CARRIED]):
        kept.add(wheels_dir / wheel.name)
        if not (wheels_dir / wheel.name).exists():
            write_atomically(wheels_dir / wheel.name, lambda tmp, w=wheel: shutil.copy(w, tmp))
    target, overrides, run = TARGET, {}, f"runs/{TARGET}"
    if continue_from is not None:
        target, overrides, run = pack_continuation(continue_from)
        kept.update(p for p in (PACK / "from").rglob("*") if p.is_file())
    else:
        shutil.rmtree(PACK / "from", ignore_errors=True)
    overrides |= {"TWO_TEACHER_EXTRA": teacher_extra, "TWO_STUDENT_EXTRA": student_extra}
    for name, text in (("commands.sh", recipe_commands(target, overrides)),
                       ("run.env", f"STUDENT_RUN={run}\n")):
        write_atomically(PACK / name, lambda tmp, text=text: tmp.write_text(text))
        kept.add(PACK / name)
    for path in [p for p in PACK.rglob("*") if p.is_file() and p not in kept]:
        progress(f"removing {path.name} (not part of this pack)")
        path.unlink()
    size = sum(p.stat().st_size for p in kept if not PART.search(p.name))
    progress(f"{PACK} holds {parts} part(s) of the base, {len(CARRIED)} wheels and the "
             f"commands ({size / 2**20:.1f} MiB beside the parts)")
    travel.report(PACK, "gpu-train-pack")


def join(dest: Path) -> Path:
    """The parts joined into the download cache under ``dest`` (where ``fetch`` looks first)."""
    found = {int(m[1]): (p, int(m[2])) for p in PACK.glob("base.gguf.*")
             if (m := PART.search(p.name))}
    totals = {n for _, n in found.values()}
    if len(totals) != 1:
        raise SystemExit(f"gpu-train-pack: no single set of base parts in {PACK}: "
                         f"{sorted(p.name for p, _ in found.values()) or 'none'}")
    total = totals.pop()
    missing = [k for k in range(1, total + 1) if k not in found]
    if missing:
        raise SystemExit(f"gpu-train-pack: base part(s) {', '.join(map(str, missing))} of "
                         f"{total} missing: carry .gpu-train/base.gguf.K-of-{total} in a call "
                         "to this machine first")
    model = dest / "cache" / "breadcrumbs" / "bases" / BASE.name / Path(BASE.member).name
    model.parent.mkdir(parents=True, exist_ok=True)
    with model.open("wb") as out:
        for k in range(1, total + 1):
            with found[k][0].open("rb") as part:
                shutil.copyfileobj(part, out, length=1 << 20)
    if sha256(model) != BASE.sha256:
        raise SystemExit(f"gpu-train-pack: the joined parts do not have {BASE.name}'s pinned "
                         "SHA-256: rebuild the pack and carry its parts again")
    return model


def unpack(dest: Path) -> list[Path]:
    """Join the base into ``dest/cache`` and install the wheels into ``dest/site``; returns
    the ``PYTHONPATH`` entries, the repository root last."""
    join(dest)
    site = dest / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for wheel in sorted((PACK / "wheels").glob("*.whl")):
        extract_wheel(wheel, site)
    return [site, ROOT]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build .gpu-train/ (downloads once)")
    build_cmd.add_argument("--parts", type=int, default=None,
                           help="cut the base into this many parts (default: as few as fit "
                                "a call beside the working tree)")
    build_cmd.add_argument("--teacher-extra", default="",
                           help="flags appended to the teacher's training command")
    build_cmd.add_argument("--student-extra", default="",
                           help="flags appended to the student's training command")
    build_cmd.add_argument("--continue-from", type=Path, default=None, metavar="ARTIFACT",
                           help="continue the student of this artifact (a GPU run's "
                                "two-sums-student) instead of training a pair")
    unpack_cmd = commands.add_parser("unpack", help="join the base, install the wheels")
    unpack_cmd.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        if args.parts is not None and args.parts < 1:
            parser.error("--parts must be >= 1")
        build(args.parts, args.teacher_extra, args.student_extra, args.continue_from)
    else:
        print(os.pathsep.join(map(str, unpack(args.dest.resolve()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
