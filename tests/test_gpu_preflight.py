"""CPU pre-flight of the GPU run: the GPU pack's vLLM on a faked H100, before GPU time is spent.

The pack (``make gpu-pack``, which ``make test`` runs first) holds the CUDA wheel's Python; this
test unpacks it with the shim (``loadtests/gpu/pack.py``) and runs ``loadtests/gpu/preflight.py``
in a subprocess with that tree first on the path and NVML, ``torch.cuda`` and Triton's NVIDIA
driver answering as one H100. The pack's wheels are for CPython 3.12 and may not import here, so
the subprocess takes the dependencies from this environment; they are checked in the GPU run's
first stage instead. What this proves: vLLM resolves the CUDA platform from the carried metadata,
the V1 GPU runner, the Triton and Flex backends, the sampler and the CUDA-graph modules import
with the shim's ops alone, the plugin engages, and the engine config of each GPU mode keeps the
CUDA-graph mode the GPU run expects.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtests" / "gpu"))
import pack  # loadtests/gpu is a folder of scripts, not a package

pytestmark = pytest.mark.vllm


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Path:
    if not list(pack.PACK.glob("vllm-*-py.tar.xz")):
        pytest.fail("no GPU pack in .gpu/: build it with `make gpu-pack` (`make test` does)")
    dest = tmp_path_factory.mktemp("gpu-pack")
    pack.unpack(dest)
    return dest


@pytest.fixture(scope="module")
def report(unpacked, tiny_checkpoint) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(unpacked / "tree"), str(ROOT)])}
    done = subprocess.run([sys.executable, str(ROOT / "loadtests" / "gpu" / "preflight.py"),
                           str(tiny_checkpoint), "--fake-h100"], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_pack_vllm_takes_the_cuda_path(report, unpacked):
    assert report["vllm_path"].startswith(str(unpacked / "tree"))
    assert (report["vllm"], report["platform"]) == ("0.32.0", "NvmlCudaPlatform")


def test_piecewise_needs_breakable_graphs_without_torch_compile(report):
    assert report["cudagraph_modes"] == {
        "eager": "NONE", "FULL": "FULL", "PIECEWISE": "PIECEWISE",
        "PIECEWISE, breakable graphs off": "NONE"}


def test_every_carried_wheel_is_one_vllm_loads(report):
    loaded = {normalised(name) for name in report["third_party"]}
    assert {normalised(name) for name in pack.CARRIED} - loaded == set()


def test_unpack_installs_the_wheels_and_the_plugin_entry_points(unpacked):
    site = unpacked / "site"
    found = {normalised(d.metadata["Name"]): d
             for d in importlib.metadata.distributions(path=[str(site)])}
    assert set(map(normalised, pack.CARRIED)) | {"breadcrumbs-vllm"} <= set(found)
    plugins = found["breadcrumbs-vllm"].entry_points.select(group="vllm.general_plugins")
    assert [p.value for p in plugins] == ["breadcrumbs_vllm.vllm_plugin:register"]
    assert (unpacked / "tree" / "vllm" / "_C_stable_libtorch.py").read_text() == (
        ROOT / "loadtests" / "gpu" / "shim.py").read_text()
