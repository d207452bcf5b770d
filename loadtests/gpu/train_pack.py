"""Build ``.gpu-train/``, what a GPU machine needs to train the SmolLM2 two-sums pair, and unpack it.

The GPU machine (Python 3.12, a CUDA torch, transformers, peft, accelerate; no network) receives
the working tree plus a few ignored paths, 64 MiB a call. Training there needs three things it
lacks:

* the base model: ``breadcrumbs fetch``'s GGUF file (98 MB), more than one call carries, so it is
  cut into ``base.gguf.K-of-N`` parts, each carried by its own call to one warm machine (ignored
  files a call leaves there stay while the machine is held); ``unpack`` joins them and checks the
  pinned SHA-256 (``breadcrumbs_vllm.bases``);
* ``wheels/``: ``gguf`` (GGUF reading), ``peft`` and ``accelerate`` at this venv's versions, pure
  Python, so the GPU run trains with the code the CPU runs were measured with;
* ``commands.sh``: the recipe's own commands (``recipes/smollm2.mk``'s ``two-sums-student`` and
  what it depends on), printed by ``make -n`` with ``PY=python3``, the CLI run as a module, and the
  GPU's flags appended (``TWO_TEACHER_EXTRA``, ``TWO_STUDENT_EXTRA``): one recipe, two machines.

``build`` writes every file under a temporary name and renames it; ``unpack`` needs only the
standard library and this repository (it runs on the GPU machine before anything is installed).

    python loadtests/gpu/train_pack.py build --parts 2 --student-extra "--trace-batch 32"
    python loadtests/gpu/train_pack.py unpack DEST    # prints PYTHONPATH; the base goes to DEST/cache
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pack import ROOT, download, extract_wheel, venv_version, write_atomically

sys.path.insert(0, str(ROOT))
from breadcrumbs_vllm.bases import BASES, sha256

BASE = BASES["smollm2-135m-instruct"]
PACK = Path(os.environ.get("BREADCRUMBS_GPU_TRAIN_PACK", ROOT / ".gpu-train"))
#: Pure-Python distributions the training run imports that the GPU machine lacks (gguf) or may
#: hold at another version (peft, accelerate).
CARRIED = ("gguf", "peft", "accelerate")
RECIPE = "recipes/smollm2.mk"
TARGET = "two-sums-student"
PART = re.compile(r"base\.gguf\.(\d+)-of-(\d+)$")


def progress(message: str) -> None:
    print(f"gpu-train-pack: {message}", flush=True)


def recipe_commands(teacher_extra: str, student_extra: str) -> str:
    """The recipe's commands as make would run them on the GPU machine (``make -n``)."""
    overrides = {"PY": "python3", "BC": "python3 -m breadcrumbs_vllm.cli",
                 "TWO_TEACHER_EXTRA": teacher_extra, "TWO_STUDENT_EXTRA": student_extra}
    done = subprocess.run(["make", "-n", "-s", "-f", RECIPE, TARGET,
                           *(f"{k}={v}" for k, v in overrides.items())],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gpu-train-pack: make -n {TARGET} failed: {done.stderr.strip()}")
    return "set -euxo pipefail\n" + done.stdout


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


def build(parts: int, teacher_extra: str, student_extra: str) -> None:
    from breadcrumbs_vllm.bases import download as download_base

    PACK.mkdir(parents=True, exist_ok=True)
    kept = set(split(download_base(BASE, progress), parts))
    wheels_dir = PACK / "wheels"
    wheels_dir.mkdir(exist_ok=True)
    for wheel in download([(name, venv_version(name)) for name in CARRIED]):
        kept.add(wheels_dir / wheel.name)
        if not (wheels_dir / wheel.name).exists():
            write_atomically(wheels_dir / wheel.name, lambda tmp, w=wheel: shutil.copy(w, tmp))
    commands = PACK / "commands.sh"
    text = recipe_commands(teacher_extra, student_extra)
    write_atomically(commands, lambda tmp: tmp.write_text(text))
    kept.add(commands)
    for path in [p for p in PACK.rglob("*") if p.is_file() and p not in kept]:
        progress(f"removing {path.name} (not part of this pack)")
        path.unlink()
    size = sum(p.stat().st_size for p in kept if not PART.search(p.name))
    progress(f"{PACK} holds {parts} part(s) of the base, {len(CARRIED)} wheels and the "
             f"commands ({size / 2**20:.1f} MiB beside the parts); carry one part a call")


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
    build_cmd.add_argument("--parts", type=int, default=2,
                           help="cut the base into this many parts, one per call")
    build_cmd.add_argument("--teacher-extra", default="",
                           help="flags appended to the teacher's training command")
    build_cmd.add_argument("--student-extra", default="",
                           help="flags appended to the student's training command")
    unpack_cmd = commands.add_parser("unpack", help="join the base, install the wheels")
    unpack_cmd.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        if args.parts < 1:
            parser.error("--parts must be >= 1")
        build(args.parts, args.teacher_extra, args.student_extra)
    else:
        print(os.pathsep.join(map(str, unpack(args.dest.resolve()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
